"""Latent shards, their manifest, and the cache built from them.

Layout of one fingerprint directory ``{data.output}/fp-<hash>/``::

    manifest.json                   fingerprint, counts, shards (rows, bytes, sha256), runs
    shards/part-<run>-<seq>.parquet one row per clip (schema below), zstd
    runs/<run>/outcomes.parquet     one record per input row: encoded | cached | failed
    runs/<run>/errors.parquet       the failed records: row, key, reason category, message
    runs/<run>/summary.json         the run's counts and status (ok | failed | interrupted)
    runs/<run>/parts/               outcome records while the run is going (merged at its end)

Shard schema (one row per clip): ``clip_id: string`` (16 hex digits, see
``pipelines.windows.clip_id``), ``video_id: string``, ``caption: string``,
``frame_indices: list<int32>``, ``fps: float32`` (source frame rate), ``source: string`` (video
URI), ``source_version: string`` (its content identity, ``pipelines.identity``), ``flipped:
bool``, ``latent_mean``/``latent_std``: Ray tensor ``float16 (4, frames, H/8,
W/8)`` (unscaled posterior; multiply samples by the fingerprint's ``scaling_factor``), and with
``data.cache_text_embeddings``: ``text_embedding: float16 (77, dim)``, ``input_ids: list<int32>``;
with a ``data.camera_motion``: ``camera_motion: string`` and ``camera_strength: float32`` (the
crop trajectory, ``pipelines.camera.crop_box``, also in the fingerprint); with curation
(``pipelines.curation``): ``motion_score: float32``, ``text_score: float32``, ``phash:
list<uint64>`` (3 perceptual hashes, ``pipelines.dedup``); with ``data.buckets``: ``height:
int32``, ``width: int32`` (the clip's bucket in pixels).

Near-duplicates (``data.dedup``) are decided by ``ShardWriter.finish`` once the run has seen
every clip (so the kept clip does not depend on the order the streaming pipeline delivered them
in; see ``pipelines.dedup``). The dropped ones were already committed: they are listed in
``deduplicated-<hash>.parquet`` (``shard``, ``clip_id``, ``kept_clip_id``, accumulated over runs,
named by the manifest's ``deduplicated`` entry); readers skip them like retired clips, and they
stay in the cache index so that no later run encodes them again.

Buckets: a shard holds clips of one bucket only, and its manifest entry names it (``"bucket":
[height, width]``). A Ray tensor column has one shape per file (a variable-shaped column would
reach training as object arrays that cannot be stacked into a batch, and every reader would pay
for it); with one bucket per shard each shard keeps the fixed-shape schema above, and training
builds one dataset per bucket from the manifest alone, without reading rows. A batch of mixed
buckets from the encoder is split by ``bucket_groups`` into one shard per bucket.

Commit protocol: a shard becomes visible all at once (temp file + rename locally, a single PUT on
object stores) and readers only read shards listed in ``manifest.json``, itself replaced
atomically. A run that is interrupted (an exception, Ctrl-C, SIGTERM) lists what it committed,
merges its outcome parts and records itself in ``runs`` with status ``interrupted`` before it
exits. A run killed outright (SIGKILL, a lost node) cannot: between its last manifest write and
the kill (at most ``data.manifest_flush_shards`` shards) its shards are complete but unlisted,
invisible to readers. The next run to open the directory adopts them (so their clips are neither
lost nor encoded twice), merges the killed run's outcome parts and records it as ``killed``.
One run at a time per output directory.

Replaced videos: clip ids include the source's content identity (``pipelines.identity``), so a
file replaced at the same path is encoded again. Its earlier clips stay in their (immutable)
shards but are *retired*: for each source, only clips whose ``source_version`` is the one its
most recent shard holds are live (and of equal clip ids, the latest). Retired clips are listed in
``retired-<hash>.parquet`` (columns ``shard``, ``clip_id``), named by the manifest's ``retired``
entry; readers (``pipelines.latents``) skip them and ``num_clips`` counts only live clips.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from animatediff.storage import Location, atomic_output, read_bytes, write_atomic
from animatediff.text import quote
from pipelines import curation, dedup, windows
from pipelines.decode import OUTCOME_SCHEMA
from pipelines.fingerprint import FingerprintMismatchError, fingerprint_differences
from pipelines.sources import DUPLICATE, STATUS_CACHED, STATUS_FAILED

MANIFEST = "manifest.json"
SHARDS = "shards"
RUNS = "runs"
SUMMARY = "summary.json"
DEDUP_SCHEMA = pa.schema(
    [("shard", pa.string()), ("clip_id", pa.string()), ("kept_clip_id", pa.string())]
)
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
    "source_version": _strings,
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


def _hash_lists(values: np.ndarray) -> pa.Array:
    """``(rows, hashes)`` uint64 -> a list<uint64> column."""
    values = np.asarray(values, np.uint64)
    length = values.shape[1] if values.ndim == 2 else 0
    offsets = np.arange(len(values) + 1, dtype=np.int32) * length
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


CURATION_COLUMNS = {
    "motion_score": lambda values: pa.array(np.asarray(values, np.float32)),
    "text_score": lambda values: pa.array(np.asarray(values, np.float32)),
    "phash": _hash_lists,
}
"""Each present when its curation stage is on (``pipelines.curation``)."""
BUCKET_COLUMNS = {
    "height": lambda values: pa.array(np.asarray(values, np.int32)),
    "width": lambda values: pa.array(np.asarray(values, np.int32)),
}
"""Present when ``data.buckets`` is set: the clip's size in pixels (one bucket per shard)."""
OPTIONAL_COLUMNS = {
    "text_embedding": TEXT_COLUMNS,
    "camera_motion": CAMERA_COLUMNS,
    "height": BUCKET_COLUMNS,
}
OPTIONAL_COLUMNS |= {name: {name: convert} for name, convert in CURATION_COLUMNS.items()}
"""Column groups a batch has or lacks as a whole, keyed by the column that marks the group."""


def shard_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """Latent rows (numpy batch) -> the shard schema (``SHARD_COLUMNS`` [+ the optional groups])."""
    if "source_version" not in batch:  # written by other tools (synthetic shards): unknown
        batch = {**batch, "source_version": np.array([""] * len(batch["clip_id"]), dtype=object)}
    columns = {name: convert(batch[name]) for name, convert in SHARD_COLUMNS.items()}
    for marker, group in OPTIONAL_COLUMNS.items():
        if marker in batch:
            columns |= {name: convert(batch[name]) for name, convert in group.items()}
    return pa.table(columns)


def bucket_groups(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A latent batch -> one batch per bucket (``height``, ``width``), in order of first
    appearance, rows in their order; tensor columns that mix shapes (object arrays of per-row
    arrays) become regular ``(rows, ...)`` arrays. A batch without buckets is returned whole."""
    if "height" not in batch:
        return [batch]
    sizes = list(zip(np.asarray(batch["height"]).tolist(), np.asarray(batch["width"]).tolist()))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)

    def take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        part = values[rows]
        if part.dtype == object and len(part) and isinstance(part[0], np.ndarray):
            return np.stack(list(part))
        return part

    return [
        {name: take(values, np.array(rows)) for name, values in batch.items()}
        for rows in groups.values()
    ]


def shard_bucket(table: pa.Table) -> list[int] | None:
    """``[height, width]`` of a shard's clips (one bucket per shard), or None without buckets."""
    if "height" not in table.column_names or table.num_rows == 0:
        return None
    return [int(table["height"][0].as_py()), int(table["width"][0].as_py())]


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
        self._record_killed_runs()
        return self.refresh()

    def refresh(self) -> np.ndarray:
        """Recompute which clips are retired (see the module doc), write the manifest, and return
        the sorted uint64 ids of every live clip (the cache index)."""
        entries = self.manifest["shards"]
        tables = []
        for position, entry in enumerate(entries):
            location = self.directory.join(entry["path"])
            with location.fs.open_input_file(location.path) as source:
                names = pq.ParquetFile(source).schema_arrow.names
                wanted = [c for c in ("clip_id", "source", "source_version") if c in names]
                table = pq.read_table(source, columns=wanted)
            if "source_version" not in table.column_names:
                table = table.append_column("source_version", pa.nulls(table.num_rows, pa.string()))
            positions = pa.array(np.full(table.num_rows, position, np.int64))
            tables.append(table.append_column("shard", positions))
        if not tables:
            self.manifest.pop("retired", None)
            self.manifest["num_clips"] = 0
            self.write_manifest()
            return np.zeros((0,), np.uint64)
        frame = pa.concat_tables(tables).to_pandas()
        versions = frame["source_version"].fillna("")
        # The version in the most recent shard of each source (rows are in commit order).
        latest = versions.groupby(frame["source"]).transform("last")
        live = versions == latest
        # Of equal clip ids (content that came back after a replacement), the latest is live.
        duplicate = pd.Series(False, index=frame.index)
        duplicate[live] = frame.loc[live, "clip_id"].duplicated(keep="last")
        live &= ~duplicate
        retired = frame.loc[~live]
        self._write_retired(
            [entries[i]["path"] for i in retired["shard"]], retired["clip_id"].tolist()
        )
        # Near-duplicates stay in the cache index (decided, never encoded again) but not in
        # the count of clips readers see.
        dropped = set(self.deduplicated()["clip_id"].to_pylist())
        self.manifest["num_clips"] = int((live & ~frame["clip_id"].isin(dropped)).sum())
        self.write_manifest()
        return np.sort(windows.clip_id_to_int(frame.loc[live, "clip_id"].tolist()))

    def _write_retired(self, shards: list[str], clip_ids: list[str]) -> None:
        """The retired list as a content-named file (written before the manifest names it, so a
        reader never sees a manifest pointing at a missing or partial list)."""
        previous = self.manifest.pop("retired", None)
        if clip_ids:
            table = pa.table({"shard": shards, "clip_id": clip_ids})
            data = parquet_bytes(table)
            name = f"retired-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
            if previous is None or previous["path"] != name:
                write_atomic(self.directory.join(name), data)
            self.manifest["retired"] = {"path": name, "clips": len(clip_ids)}
        if previous is not None and previous["path"] != self.manifest.get("retired", {}).get(
            "path"
        ):
            self.directory.fs.delete_file(self.directory.join(previous["path"]).path)

    def deduplicated(self) -> pa.Table:
        """The near-duplicate list (``shard``, ``clip_id``, ``kept_clip_id``); empty if none."""
        entry = self.manifest.get("deduplicated")
        if not entry:
            return pa.table({"shard": [], "clip_id": [], "kept_clip_id": []}, DEDUP_SCHEMA)
        return pq.read_table(pa.BufferReader(read_bytes(self.directory.join(entry["path"]))))

    def add_deduplicated(self, shards: list[str], clip_ids: list[str], kept: list[str]) -> None:
        """Append near-duplicates to the list: a new content-named file, then the manifest entry
        (written by ``write_manifest``), then the old file goes."""
        if not clip_ids:
            return
        previous = self.manifest.get("deduplicated")
        new = pa.table({"shard": shards, "clip_id": clip_ids, "kept_clip_id": kept}, DEDUP_SCHEMA)
        data = parquet_bytes(pa.concat_tables([self.deduplicated(), new]))
        name = f"deduplicated-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        write_atomic(self.directory.join(name), data)
        self.manifest["deduplicated"] = {"path": name, "clips": len(clip_ids)}
        self.manifest["deduplicated"]["clips"] += previous["clips"] if previous else 0
        self.write_manifest()
        if previous is not None and previous["path"] != name:
            self.directory.fs.delete_file(self.directory.join(previous["path"]).path)

    def clip_hashes(self, exclude_prefix: str) -> list[tuple[str, np.ndarray]]:
        """``(clip id, phash uint64 (3,))`` of the live, not deduplicated clips of every listed
        shard that has hashes, in commit order, except shards whose path starts with
        ``exclude_prefix`` (this run's)."""
        gone = set(self.deduplicated()["clip_id"].to_pylist())
        gone |= {c for ids in load_retired(self.directory, self.manifest).values() for c in ids}
        found = []
        for entry in self.manifest["shards"]:
            if entry["path"].startswith(exclude_prefix):
                continue
            location = self.directory.join(entry["path"])
            with location.fs.open_input_file(location.path) as source:
                if "phash" not in pq.ParquetFile(source).schema_arrow.names:
                    continue
                table = pq.read_table(source, columns=["clip_id", "phash"])
            for clip_id, hashes in zip(table["clip_id"].to_pylist(), table["phash"].to_pylist()):
                if clip_id not in gone:
                    found.append((clip_id, np.array(hashes, np.uint64)))
        return found

    def _record_killed_runs(self) -> None:
        """Runs that left a directory but no summary (killed before they could write one):
        merge their outcome parts, count their shards, record them with status ``killed``."""
        recorded = {run["run_id"] for run in self.manifest["runs"]}
        selector = pafs.FileSelector(self.directory.join(RUNS).path, allow_not_found=True)
        for info in sorted(self.directory.fs.get_file_info(selector), key=lambda i: i.path):
            run_id = posixpath.basename(info.path)
            run_dir = self.directory.join(RUNS, run_id)
            if info.type != pafs.FileType.Directory or run_id in recorded:
                continue
            if self.directory.fs.get_file_info(run_dir.join(SUMMARY).path).type == (
                pafs.FileType.File
            ):
                continue
            prefix = posixpath.join(SHARDS, f"part-{run_id}-")
            mine = [e for e in self.manifest["shards"] if e["path"].startswith(prefix)]
            counts = merge_outcomes(run_dir)
            counts |= {"clips_encoded": sum(e["rows"] for e in mine), "shards_written": len(mine)}
            self.record_run(run_dir, {"run_id": run_id, "status": "killed", **counts})

    def record_run(self, run_dir: Location, summary: dict) -> None:
        """List a run in the manifest (written by ``write_manifest``) and write its summary."""
        self.manifest["runs"].append(summary)
        self.write_summary(run_dir, summary)

    @staticmethod
    def write_summary(run_dir: Location, summary: dict) -> None:
        """``runs/<run id>/summary.json``."""
        write_atomic(run_dir.join(SUMMARY), json.dumps(summary, indent=1, sort_keys=True).encode())

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
                file = pq.ParquetFile(pa.BufferReader(data))
                sizes = [c for c in ("height", "width") if c in file.schema_arrow.names]
                bucket = shard_bucket(file.read(columns=sizes)) if sizes else None
                self._record(relative, file.metadata.num_rows, data, adopted=True, bucket=bucket)

    def _record(
        self,
        relative: str,
        rows: int,
        data: bytes,
        adopted: bool = False,
        bucket: list[int] | None = None,
    ) -> None:
        entry = {"path": relative, "rows": rows, "bytes": len(data)}
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        if bucket is not None:
            entry["bucket"] = bucket
        if adopted:
            entry["adopted"] = True
        self.manifest["shards"].append(entry)
        self.manifest["num_clips"] += rows  # until ``refresh`` subtracts retired clips

    def commit(self, table: pa.Table, name: str) -> dict:
        """Write one shard atomically and list it (the manifest is written by ``write_manifest``)."""
        data = parquet_bytes(table)
        relative = posixpath.join(SHARDS, name)
        write_atomic(self.directory.join(relative), data)
        self._record(relative, table.num_rows, data, bucket=shard_bucket(table))
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
    curation: bool = False
    """Merge curation records at the end (``pipelines.curation``)."""
    dedup_distance: int = -1
    """Near-duplicate distance in bits (``data.dedup_distance``); -1: no deduplication."""
    shards_written: int = 0
    clips_written: int = 0
    _windows: dict[tuple[int, int], dict] = field(default_factory=dict)
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
                "row": int(batch["row"][i]),
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
                message = f"{quote(record['source'])} appears earlier in this run"
                record |= {"status": STATUS_FAILED, "reason": DUPLICATE, "message": message}
                record |= {"clips": 0, "cached_clips": 0}
            records.append(record)
        if keep.any():
            known = (
                SHARD_COLUMNS | TEXT_COLUMNS | CAMERA_COLUMNS | CURATION_COLUMNS | BUCKET_COLUMNS
            )
            kept = {k: v[keep] for k, v in batch.items()}
            for group in bucket_groups(kept):  # one shard per bucket (see the module doc)
                name = f"part-{self.run_id}-{self.shards_written:06d}.parquet"
                self.store.commit(shard_table({k: v for k, v in group.items() if k in known}), name)
                if self.dedup_distance >= 0:
                    self._note_windows(group, posixpath.join(SHARDS, name))
                self.shards_written += 1
                self._since_flush += 1
            self.clips_written += int(keep.sum())
        if records:
            table = pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA)
            name = f"part-writer-{self.shards_written:06d}-{len(records)}-{hashlib.sha256(parquet_bytes(table)).hexdigest()[:16]}.parquet"
            write_atomic(self.outcome_dir.join(name), parquet_bytes(table))
        if self._since_flush >= self.flush_every:
            self.store.write_manifest()
            self._since_flush = 0

    def _note_windows(self, batch: dict[str, np.ndarray], shard: str) -> None:
        """Remember each committed clip's window, hashes and shard for ``_deduplicate`` (about
        150 bytes a clip, like the clip id set)."""
        for i in range(len(batch["key"])):
            window = (int(batch["row"][i]), int(batch["ordinal"][i]))
            entry = self._windows.setdefault(
                window,
                {
                    "key": str(batch["key"][i]),
                    "video_id": str(batch["video_id"][i]),
                    "source": str(batch["source"][i]),
                    "span": (int(batch["frame_indices"][i][0]), int(batch["frame_indices"][i][-1])),
                    "hashes": np.asarray(batch["phash"][i], np.uint64),
                    "clips": [],
                },
            )
            entry["clips"].append((str(batch["clip_id"][i]), shard, bool(batch["flipped"][i])))

    def _deduplicate(self) -> dict[int, dict]:
        """Decide the near-duplicates of this run (see the module doc), list them, record every
        decision; returns the outcome changes of rows that lost clips."""
        seeds = self.store.clip_hashes(f"{SHARDS}/part-{self.run_id}-")
        order = sorted(self._windows)  # by input row, then ordinal: the keep priority
        # A window's name is its first clip (the plain one when both were encoded).
        names = {w: sorted(self._windows[w]["clips"], key=lambda c: c[2])[0][0] for w in order}
        items = [(names[w], self._windows[w]["hashes"]) for w in order]
        dropped = dedup.find_duplicates(items, self.dedup_distance, seeds)
        records, shards, clip_ids, kept = [], [], [], []
        lost: dict[int, list[tuple[int, str, int]]] = {}
        for window in order:
            entry = self._windows[window]
            found = dropped.get(names[window])
            record = {
                "row": window[0],
                "key": entry["key"],
                "video_id": entry["video_id"],
                "source": entry["source"],
                "stage": "dedup",
                "ordinal": window[1],
                "start": entry["span"][0],
                "end": entry["span"][1] + 1,
                "decision": curation.DROPPED if found else curation.KEPT,
                "reason": dedup.NEAR_DUPLICATE if found else "",
                "score": float(found[1]) if found else 0.0,
                "detail": f"duplicate of clip {found[0]}" if found else "",
                "thumbnail": None,
            }
            records.append(record)
            if found:
                for clip_id, shard, _ in entry["clips"]:
                    shards.append(shard)
                    clip_ids.append(clip_id)
                    kept.append(found[0])
                lost.setdefault(window[0], []).append((len(entry["clips"]), found[0], found[1]))
        curation.write_part(records, self.run_dir.join(curation.CURATION_PARTS), "dedup")
        self.store.add_deduplicated(shards, clip_ids, kept)
        self.clips_deduplicated = len(clip_ids)
        written: dict[int, int] = {}
        for window, entry in self._windows.items():
            written[window[0]] = written.get(window[0], 0) + len(entry["clips"])
        changes = {}
        for row, losses in lost.items():
            remaining = written[row] - sum(n for n, _, _ in losses)
            change: dict = {"clips": remaining}
            if remaining == 0:
                kept_id, distance = losses[0][1], losses[0][2]
                change |= {"status": curation.STATUS_FILTERED, "reason": dedup.NEAR_DUPLICATE}
                change["message"] = f"dedup: duplicate of clip {kept_id} ({distance} bits)"
            changes[row] = change
        return changes

    def finish(self) -> dict:
        """Decide near-duplicates (``data.dedup``), merge this run's outcome parts into
        ``outcomes.parquet`` and ``errors.parquet`` (and its curation parts, see
        ``pipelines.curation``) and return the counts."""
        self.clips_deduplicated = 0
        changes = self._deduplicate() if self.dedup_distance >= 0 else {}
        counts = merge_outcomes(self.run_dir, changes)
        if self.curation:
            counts |= curation.merge_curation(self.run_dir)
            counts["clips_deduplicated"] = self.clips_deduplicated
        return counts | {"clips_encoded": self.clips_written, "shards_written": self.shards_written}


def merge_outcomes(run_dir: Location, changes: dict[int, dict] | None = None) -> dict:
    """Merge a run's outcome parts (``runs/<run>/parts/``) into ``outcomes.parquet`` and
    ``errors.parquet`` (streaming, one part at a time, each sorted by input row), delete the parts and
    return the row counts. ``changes``: updates of the ``encoded`` records of some rows (input
    row -> fields), e.g. rows whose clips turned out to be near-duplicates."""
    fs = run_dir.fs
    parts_dir = run_dir.join("parts")
    parts = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(parts_dir.path, allow_not_found=True))
        if info.path.endswith(".parquet") and not posixpath.basename(info.path).startswith(".")
    )
    counts = {"rows_read": 0, "rows_encoded": 0, "rows_cached": 0, "rows_failed": 0}
    counts["rows_filtered"] = 0
    counts["clips_cached"] = 0
    failed_by_reason: dict[str, int] = {}
    with (
        atomic_output(run_dir.join("outcomes.parquet")) as all_out,
        atomic_output(run_dir.join("errors.parquet")) as error_out,
        pq.ParquetWriter(all_out, OUTCOME_SCHEMA, compression="zstd") as all_writer,
        pq.ParquetWriter(error_out, OUTCOME_SCHEMA, compression="zstd") as error_writer,
    ):
        for path in parts:
            with fs.open_input_file(path) as source:
                table = pq.read_table(source, schema=OUTCOME_SCHEMA).sort_by("row")
            if changes:
                records = table.to_pylist()
                for record in records:
                    if record["status"] == STATUS_ENCODED and record["row"] in changes:
                        record |= changes[record["row"]]
                table = pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA)
            all_writer.write_table(table)
            failed = table.filter(pc.equal(table["status"], STATUS_FAILED))
            error_writer.write_table(failed)
            status = table["status"].to_pylist()
            counts["rows_read"] += table.num_rows
            counts["rows_encoded"] += status.count(STATUS_ENCODED)
            counts["rows_cached"] += status.count(STATUS_CACHED)
            counts["rows_failed"] += status.count(STATUS_FAILED)
            counts["rows_filtered"] += status.count(curation.STATUS_FILTERED)
            counts["clips_cached"] += int(pc.sum(table["cached_clips"]).as_py() or 0)
            for reason in failed["reason"].to_pylist():
                failed_by_reason[reason] = failed_by_reason.get(reason, 0) + 1
    if fs.get_file_info(parts_dir.path).type != pafs.FileType.NotFound:
        # one call (deleting files one by one would leave a directory marker on S3)
        fs.delete_dir(parts_dir.path)
    counts["failed_by_reason"] = dict(sorted(failed_by_reason.items()))
    return counts


def load_retired(directory: Location, manifest: dict) -> dict[str, set[str]]:
    """The retired clip ids of a shard set, by shard path (relative, as the manifest lists it),
    near-duplicates (``data.dedup``) included: readers skip both."""
    retired: dict[str, set[str]] = {}
    for name in ("retired", "deduplicated"):
        entry = manifest.get(name)
        if not entry:
            continue
        table = pq.read_table(pa.BufferReader(read_bytes(directory.join(entry["path"]))))
        for shard, clip_id in zip(table["shard"].to_pylist(), table["clip_id"].to_pylist()):
            retired.setdefault(shard, set()).add(clip_id)
    return retired
