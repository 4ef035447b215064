"""Optional MLflow logging of a preprocessing run: a thin wrapper, off unless ``data.log_mlflow``."""

from __future__ import annotations

import dataclasses
import posixpath
import time
from pathlib import Path
from typing import Any

from animatediff.config import Config
from animatediff.storage import Location

PARAM_SECTIONS = ("data", "model.base")
"""What preprocessing reads: the data options and the base whose VAE encodes."""
ERROR_TABLE_ROWS = 1000
"""Rows of the errors table logged to MLflow (the whole table stays in the shard directory)."""


def _columns(output: Location, manifest: dict) -> dict[str, str]:
    """The shards' columns, from the last shard's Parquet footer."""
    import pyarrow.parquet as pq

    from tracking.datasets import columns_of

    if not manifest.get("shards"):
        return {}
    path = output.join(manifest["shards"][-1]["path"])
    with path.fs.open_input_file(path.path) as file:
        return columns_of(pq.read_schema(file))


def _log_file(cfg: Config, mlflow_client: Any, run_id: str, uri: str, folder: str) -> None:
    """Log a file of the run's directory (local or object store) as an artifact."""
    import tempfile

    from animatediff.storage import locate, read_bytes

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / posixpath.basename(uri)
        path.write_bytes(read_bytes(locate(uri, cfg.storage)))
        mlflow_client.log_artifact(run_id, str(path), folder)


def _errors_table(errors: Location) -> Any:
    """The run's errors as a DataFrame (first ``ERROR_TABLE_ROWS``), or None without a file."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if errors.fs.get_file_info(errors.path).type == pafs.FileType.NotFound:
        return None
    with errors.fs.open_input_file(errors.path) as file:
        return pq.read_table(file).slice(0, ERROR_TABLE_ROWS).to_pandas()


def _description(cfg: Config, summary: dict, output_line: str, errors: Location | None) -> str:
    failed = ", ".join(f"{reason} {n}" for reason, n in summary["failed_by_reason"].items())
    lines = [
        f"Preprocessing of `{cfg.data.input}` ({cfg.data.format}) with the VAE of "
        f"`{cfg.model.base.pretrained}`: {cfg.data.num_frames} frames at stride "
        f"{cfg.data.stride}, {cfg.data.resolution} px.",
        "",
        f"- Output: {output_line}",
        f"- Rows: {summary['rows_read']} read, {summary['rows_encoded']} encoded, "
        f"{summary['rows_cached']} cached, {summary['rows_failed']} failed"
        + (f" ({failed})" if failed else ""),
        f"- Clips: {summary['clips_encoded']} encoded, {summary['clips_cached']} cached",
    ]
    if errors is not None:
        lines.append(
            f"- Errors: the table `errors.json` (first {ERROR_TABLE_ROWS} rows), all of them in "
            f"`{errors.uri}`"
        )
    return "\n".join(lines)


def log_preprocess_run(
    cfg: Config,
    summary: dict,
    fingerprint: dict,
    output: Location | None = None,
    manifest: dict | None = None,
    errors: Location | None = None,
) -> str:
    """One MLflow run in experiment ``{mlflow.experiment}-preprocess`` with the ``data.*`` and
    ``model.base.*`` params, provenance tags, a description, the counts and throughput as
    metrics, the fingerprint and summary as artifacts, the shard set it wrote (``output``, as
    ``manifest`` lists it) as a dataset with context ``output``, and its errors as a table;
    returns the run id. MLflow's process-wide settings are left alone."""
    from mlflow.entities import Metric

    from tracking.datasets import ShardSet, log_shard_set
    from tracking.provenance import NOTE_TAG, run_tags
    from tracking.runs import (
        client,
        experiment_id,
        log_params,
        resolve_tracking_uri,
        section_params,
    )

    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    experiment = dataclasses.replace(cfg.mlflow, experiment=f"{cfg.mlflow.experiment}-preprocess")
    description = (
        "Preprocessing runs of `python -m jobs.preprocess`: videos -> VAE latents in shard sets "
        "`<data.output>/fp-<hash>`. Each run's Datasets hold the shard set it wrote (context "
        "`output`), its artifacts the errors table and the fingerprint."
    )
    shards = ShardSet.of(output.uri, manifest, _columns(output, manifest)) if output else None
    output_line = shards.summary() if shards else f"`{summary.get('output', '?')}`"
    tags = run_tags(cfg, "preprocess", f"fp-{summary['fingerprint_hash']}")
    tags |= {
        "fingerprint_hash": summary["fingerprint_hash"],
        NOTE_TAG: _description(cfg, summary, output_line, errors),
    }
    if errors is not None:
        tags["errors_uri"] = errors.uri
    mlflow_client = client(tracking_uri)
    run = mlflow_client.create_run(
        experiment_id(experiment, tracking_uri, description),
        run_name=f"preprocess-{summary['run_id']}",
        tags=tags,
    )
    run_id = run.info.run_id
    log_params(run_id, section_params(cfg, PARAM_SECTIONS), tracking_uri)
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics |= {f"failed.{k}": float(v) for k, v in summary["failed_by_reason"].items()}
    # Curation (``pipelines.curation``): drops by reason, windows and shots.
    metrics |= {f"filtered.{k}": float(v) for k, v in summary.get("filtered_by_reason", {}).items()}
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    mlflow_client.log_dict(run_id, fingerprint, "fingerprint.json")
    mlflow_client.log_dict(run_id, summary, "summary.json")
    if shards is not None:
        log_shard_set(tracking_uri, run_id, shards, "output")
    table = _errors_table(errors) if errors is not None else None
    if table is not None and len(table):
        mlflow_client.log_table(run_id, table, "errors.json")
    for uri in summary.get("curation_reports", {}).values():
        _log_file(cfg, mlflow_client, run_id, uri, "curation")
    mlflow_client.set_terminated(run_id)
    return run_id
