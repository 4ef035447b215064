"""Latent shards, their manifest, and the cache built from them.

Layout of one fingerprint directory ``{data.output}/fp-<hash>/``::

    manifest.json                   fingerprint, counts, shards (rows, bytes, sha256), runs
    shards/part-<run>-<seq>.parquet one row per clip (schema below), zstd
    runs/<run>/outcomes.parquet     one record per input row: encoded | cached | failed
    runs/<run>/errors.parquet       the failed records: key, reason category, message
    runs/<run>/summary.json         the run's counts

Shard schema (one row per clip): ``clip_id: string`` (16 hex digits, see
``pipelines.windows.clip_id``), ``video_id: string``, ``caption: string``,
``frame_indices: list<int32>``, ``fps: float32`` (source frame rate), ``source: string`` (video
URI), ``flipped: bool``, ``latent_mean``/``latent_std``: Ray tensor ``float16 (4, frames, H/8,
W/8)`` (unscaled posterior; multiply samples by the fingerprint's ``scaling_factor``), and with
``data.cache_text_embeddings``: ``text_embedding: float16 (77, dim)``, ``input_ids: list<int32>``;
with a ``data.camera_motion``: ``camera_motion: string`` and ``camera_strength: float32`` (the
crop trajectory, ``pipelines.camera.crop_box``, also in the fingerprint).

Commit protocol: a shard becomes visible all at once (temp file + rename locally, a single PUT on
object stores) and readers only read shards listed in ``manifest.json``, itself replaced
atomically. A run killed between a shard and the manifest leaves a complete but unlisted shard;
the next run adopts it (so its clips are neither lost nor encoded twice).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from animatediff.storage import Location, atomic_output, read_bytes, write_atomic
from pipelines import windows
from pipelines.decode import OUTCOME_SCHEMA
from pipelines.fingerprint import FingerprintMismatchError, fingerprint_differences
from pipelines.sources import DUPLICATE, STATUS_CACHED, STATUS_FAILED

MANIFEST = "manifest.json"
SHARDS = "shards"
RUNS = "runs"
STATUS_ENCODED = "encoded"


def _strings(values: np.ndarray) -> pa.Array:
    return pa.array([str(v) for v in values], pa.string())


def _int_lists(values: np.ndarray) -> pa.Array:
    """``(rows, length)`` ints -> a list<int32> column (frame indices, token ids)."""
    values = np.asarray(values, np.int32)
    length = values.shape[1] if values.ndim == 2 else 0
    offsets = np.arange(len(values) + 1, dtype=np.int32) * length
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _tensors(values: np.ndarray) -> pa.Array:
    """``(rows, ...)`` -> a Ray tensor column of float16 (latents and text embeddings)."""
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.asarray(values, np.float16))


SHARD_COLUMNS = {
    "clip_id": _strings,
    "video_id": _strings,
    "caption": _strings,
    "frame_indices": _int_lists,
    "fps": lambda values: pa.array(np.asarray(values, np.float32)),
    "source": _strings,
    "flipped": lambda values: pa.array(np.asarray(values, bool)),
    "latent_mean": _tensors,
    "latent_std": _tensors,
}
"""Every shard's columns and how a numpy batch column becomes an Arrow column."""
TEXT_COLUMNS = {"text_embedding": _tensors, "input_ids": _int_lists}
"""Present when ``data.cache_text_embeddings`` is on."""
CAMERA_COLUMNS = {
    "camera_motion": _strings,
    "camera_strength": lambda values: pa.array(np.asarray(values, np.float32)),
}
"""Present when ``data.camera_motion`` is not ``none`` (so shards without camera motion keep the
schema they always had)."""
OPTIONAL_COLUMNS = {"text_embedding": TEXT_COLUMNS, "camera_motion": CAMERA_COLUMNS}
"""Column groups a batch has or lacks as a whole, keyed by the column that marks the group."""


def shard_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """Latent rows (numpy batch) -> the shard schema (``SHARD_COLUMNS`` [+ the optional groups])."""
    columns = {name: convert(batch[name]) for name, convert in SHARD_COLUMNS.items()}
    for marker, group in OPTIONAL_COLUMNS.items():
        if marker in batch:
            columns |= {name: convert(batch[name]) for name, convert in group.items()}
    return pa.table(columns)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def load_manifest(directory: Location) -> dict | None:
    location = directory.join(MANIFEST)
    if location.fs.get_file_info(location.path).type == pafs.FileType.NotFound:
        return None
    return json.loads(read_bytes(location))


@dataclass
class ShardStore:
    """One fingerprint directory: its manifest, its committed shards and the cache index."""

    directory: Location
    fingerprint: dict
    provenance: dict = field(default_factory=dict)
    manifest: dict = field(init=False)

    def open(self) -> np.ndarray:
        """Load (or start) the manifest, adopt complete shards it does not list yet, and return
        the sorted uint64 ids of every committed clip (the cache index)."""
        manifest = load_manifest(self.directory)
        if manifest is None:
            manifest = {
                "format": "animatediff-latent-shards",
                "format_version": 1,
                "fingerprint": self.fingerprint,
                "provenance": self.provenance,
                "num_clips": 0,
                "shards": [],
                "runs": [],
            }
        elif manifest["fingerprint"] != self.fingerprint:
            raise FingerprintMismatchError(
                f"{self.directory.uri}: manifest fingerprint differs: "
                + "; ".join(fingerprint_differences(self.fingerprint, manifest["fingerprint"]))
            )
        self.manifest = manifest
        self._adopt_unlisted()
        self.write_manifest()
        return self.cache_index()

    def _adopt_unlisted(self) -> None:
        listed = {entry["path"] for entry in self.manifest["shards"]}
        shard_dir = self.directory.join(SHARDS)
        selector = pafs.FileSelector(shard_dir.path, allow_not_found=True)
        for info in self.directory.fs.get_file_info(selector):
            name = posixpath.basename(info.path)
            relative = posixpath.join(SHARDS, name)
            if name.startswith(".tmp-"):  # an interrupted local write: never visible, never listed
                self.directory.fs.delete_file(info.path)
            elif name.endswith(".parquet") and relative not in listed:
                data = read_bytes(shard_dir.join(name))
                rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
                self._record(relative, rows, data, adopted=True)

    def _record(self, relative: str, rows: int, data: bytes, adopted: bool = False) -> None:
        entry = {"path": relative, "rows": rows, "bytes": len(data)}
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        if adopted:
            entry["adopted"] = True
        self.manifest["shards"].append(entry)
        self.manifest["num_clips"] += rows

    def cache_index(self) -> np.ndarray:
        paths = [self.directory.join(e["path"]).path for e in self.manifest["shards"]]
        if not paths:
            return np.zeros((0,), np.uint64)
        ids = pq.ParquetDataset(paths, filesystem=self.directory.fs).read(columns=["clip_id"])
        return np.sort(windows.clip_id_to_int(ids.column("clip_id").to_pylist()))

    def commit(self, table: pa.Table, name: str) -> dict:
        """Write one shard atomically and list it (the manifest is written by ``write_manifest``)."""
        data = parquet_bytes(table)
        relative = posixpath.join(SHARDS, name)
        write_atomic(self.directory.join(relative), data)
        self._record(relative, table.num_rows, data)
        return self.manifest["shards"][-1]

    def write_manifest(self) -> None:
        self.manifest["num_shards"] = len(self.manifest["shards"])
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        write_atomic(self.directory.join(MANIFEST), data)


@dataclass
class ShardWriter:
    """Driver side of a run: latent batches -> committed shards and outcome records."""

    store: ShardStore
    run_id: str
    flush_every: int
    shards_written: int = 0
    clips_written: int = 0
    _seen: set[int] = field(default_factory=set)
    _since_flush: int = 0

    @property
    def run_dir(self) -> Location:
        return self.store.directory.join(RUNS, self.run_id)

    @property
    def outcome_dir(self) -> Location:
        return self.run_dir.join("parts")

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Commit one shard of new clips; clips already written in this run (the same video
        listed twice in the input) are dropped and their row recorded as a duplicate."""
        ids = windows.clip_id_to_int(batch["clip_id"])
        keep = np.zeros(len(ids), bool)
        for i, value in enumerate(ids.tolist()):
            keep[i] = value not in self._seen
            self._seen.add(value)
        records = []
        for i in np.flatnonzero(batch["row_first"]):
            record = {
                "key": str(batch["key"][i]),
                "video_id": str(batch["video_id"][i]),
                "source": str(batch["source"][i]),
            }
            if keep[i]:
                record |= {"status": STATUS_ENCODED, "reason": "", "message": ""}
                record |= {
                    "clips": int(batch["row_clips"][i]),
                    "cached_clips": int(batch["row_cached"][i]),
                }
            else:
                message = f"{record['source']} appears earlier in this run"
                record |= {"status": STATUS_FAILED, "reason": DUPLICATE, "message": message}
                record |= {"clips": 0, "cached_clips": 0}
            records.append(record)
        if keep.any():
            known = SHARD_COLUMNS | TEXT_COLUMNS | CAMERA_COLUMNS
            rows = {k: v[keep] for k, v in batch.items() if k in known}
            self.store.commit(
                shard_table(rows), f"part-{self.run_id}-{self.shards_written:06d}.parquet"
            )
            self.shards_written += 1
            self.clips_written += int(keep.sum())
            self._since_flush += 1
        if records:
            table = pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA)
            name = f"part-writer-{self.shards_written:06d}-{len(records)}-{hashlib.sha256(parquet_bytes(table)).hexdigest()[:16]}.parquet"
            write_atomic(self.outcome_dir.join(name), parquet_bytes(table))
        if self._since_flush >= self.flush_every:
            self.store.write_manifest()
            self._since_flush = 0

    def finish(self) -> dict:
        """Merge this run's outcome parts into ``outcomes.parquet`` and ``errors.parquet``
        (streaming, one part at a time) and return the counts."""
        fs = self.store.directory.fs
        parts = sorted(
            info.path
            for info in fs.get_file_info(
                pafs.FileSelector(self.outcome_dir.path, allow_not_found=True)
            )
            if info.path.endswith(".parquet")
        )
        counts = {"rows_read": 0, "rows_encoded": 0, "rows_cached": 0, "rows_failed": 0}
        counts |= {
            "clips_encoded": self.clips_written,
            "clips_cached": 0,
            "shards_written": self.shards_written,
        }
        failed_by_reason: dict[str, int] = {}
        with (
            atomic_output(self.run_dir.join("outcomes.parquet")) as all_out,
            atomic_output(self.run_dir.join("errors.parquet")) as error_out,
            pq.ParquetWriter(all_out, OUTCOME_SCHEMA, compression="zstd") as all_writer,
            pq.ParquetWriter(error_out, OUTCOME_SCHEMA, compression="zstd") as error_writer,
        ):
            for path in parts:
                with fs.open_input_file(path) as source:
                    table = pq.read_table(source, schema=OUTCOME_SCHEMA)
                all_writer.write_table(table)
                failed = table.filter(pc.equal(table["status"], STATUS_FAILED))
                error_writer.write_table(failed)
                status = table["status"].to_pylist()
                counts["rows_read"] += table.num_rows
                counts["rows_encoded"] += status.count(STATUS_ENCODED)
                counts["rows_cached"] += status.count(STATUS_CACHED)
                counts["rows_failed"] += status.count(STATUS_FAILED)
                counts["clips_cached"] += int(pc.sum(table["cached_clips"]).as_py() or 0)
                for reason in failed["reason"].to_pylist():
                    failed_by_reason[reason] = failed_by_reason.get(reason, 0) + 1
        if parts:  # (deleting files one by one would leave a directory marker on S3)
            fs.delete_dir(self.outcome_dir.path)
        counts["failed_by_reason"] = dict(sorted(failed_by_reason.items()))
        return counts
