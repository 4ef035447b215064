"""A latent shard set as an MLflow dataset: what a run read (or, for preprocessing, wrote).

    shards = ShardSet.of(location.uri, manifest, columns)
    log_shard_set(tracking_uri, run_id, shards, context="training")

MLflow's UI shows it in the runs table's Dataset column and on the run page: the name
(``<data.output folder>/fp-<hash>``), a digest of the shards' contents (a preprocess run that adds
clips to the same fingerprint directory changes it), the absolute URI as the source, the columns
as the schema, and a profile with the counts, the fingerprint and the MLflow runs of the
preprocessing that wrote it (from the manifest's ``runs`` list).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

CONTEXT_TAG = "mlflow.data.context"
"""MLflow's input tag naming the role of a dataset in a run (``training``, ``evaluation``...)."""


@dataclass(frozen=True)
class ShardSet:
    """What identifies a committed shard set (one ``fp-<hash>`` directory)."""

    uri: str
    """The fingerprint directory, absolute (a local path or ``s3://...``)."""
    fingerprint: str
    """``fp-<hash>``: the directory name, the hash of what the latents mean."""
    digest: str
    """16 hex digits over the listed shards' paths and sha256 sums."""
    clips: int
    shards: int
    bytes: int
    preprocess_runs: tuple[str, ...]
    """MLflow run ids of the preprocess runs that wrote it (those that logged to MLflow)."""
    manifest_fingerprint: dict[str, Any]
    """The fingerprint itself (VAE weights hash, frames, stride, resolution...)."""
    columns: dict[str, str]
    """Column name -> type, when known."""

    @classmethod
    def of(cls, uri: str, manifest: dict, columns: dict[str, str] | None = None) -> ShardSet:
        """The shard set at ``uri`` (a fingerprint directory) as its ``manifest.json`` lists it."""
        uri = uri.rstrip("/")
        entries = sorted(manifest.get("shards", []), key=lambda entry: entry["path"])
        content = "\n".join(f"{entry['path']} {entry.get('sha256', '')}" for entry in entries)
        runs = [run.get("mlflow_run_id") for run in manifest.get("runs", [])]
        return cls(
            uri=uri,
            fingerprint=posixpath.basename(uri),
            digest=hashlib.sha256(content.encode()).hexdigest()[:16],
            clips=int(manifest.get("num_clips", sum(entry["rows"] for entry in entries))),
            shards=len(entries),
            bytes=sum(int(entry.get("bytes", 0)) for entry in entries),
            preprocess_runs=tuple(run for run in runs if run),
            manifest_fingerprint=dict(manifest.get("fingerprint") or {}),
            columns=dict(columns or {}),
        )

    @property
    def name(self) -> str:
        """``<parent folder>/fp-<hash>``: the same encoding of two collections differs by folder."""
        parent = posixpath.basename(posixpath.dirname(self.uri))
        return f"{parent}/{self.fingerprint}" if parent else self.fingerprint

    def profile(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "shards": self.shards,
            "bytes": self.bytes,
            "fingerprint": self.fingerprint,
            "preprocess_runs": list(self.preprocess_runs),
            "encoding": self.manifest_fingerprint,
        }

    def entity(self) -> Any:
        """The ``mlflow.entities.Dataset``."""
        from mlflow.entities import Dataset

        schema = None
        if self.columns:
            specs = [{"name": name, "type": kind} for name, kind in self.columns.items()]
            schema = json.dumps({"mlflow_colspec": specs})
        return Dataset(
            name=self.name,
            digest=self.digest,
            source_type="s3" if self.uri.startswith("s3://") else "local",
            source=json.dumps({"uri": self.uri}),
            schema=schema,
            profile=json.dumps(self.profile()),
        )

    def summary(self, run_link: Any = None) -> str:
        """One markdown line for descriptions: fingerprint, counts, URI, preprocess runs
        (``run_link(run_id) -> markdown`` renders each)."""
        line = (
            f"`{self.name}`: {self.clips} clips in {self.shards} shards at `{self.uri}` "
            f"(digest `{self.digest}`)"
        )
        if self.preprocess_runs:
            links = [run_link(run) if run_link else f"`{run}`" for run in self.preprocess_runs]
            line += "; written by preprocess run " + ", ".join(links)
        return line


def log_shard_set(tracking_uri: str, run_id: str, shards: ShardSet, context: str) -> None:
    """Log ``shards`` as a dataset input of ``run_id`` with ``mlflow.data.context=context``
    (logging the same digest again is a no-op).

    MLflow finds or creates the experiment's dataset row in one transaction that two runs can
    enter at once (trainings side by side on one held-out set): the slower one's insert breaks
    the table's uniqueness and rolls back. Its second try finds the row and only links it."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    from tracking.runs import client

    dataset_input = DatasetInput(shards.entity(), tags=[InputTag(CONTEXT_TAG, context)])
    try:
        client(tracking_uri).log_inputs(run_id, datasets=[dataset_input])
    except MlflowException:
        client(tracking_uri).log_inputs(run_id, datasets=[dataset_input])


def columns_of(schema: Any) -> dict[str, str]:
    """``{name: type}`` of a pyarrow or Ray Data schema."""
    return {str(name): str(kind) for name, kind in zip(schema.names, schema.types)}
