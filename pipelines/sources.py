"""Input tables (WebVid CSV, CSV/JSONL/Parquet manifests) and the plan stage.

The plan stage turns each input row into one of: a row to decode (with the bit mask of the clips
still missing from the cache), a row already fully cached, or a row refused before any video is
touched (unsafe path, bad caption). Every row keeps flowing so that the decode stage can record
its outcome; nothing is dropped silently.

Batches are dicts of numpy arrays (Ray Data ``batch_format="numpy"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from animatediff.config import ConfigError, DataConfig
from animatediff.storage import Location
from pipelines import windows
from pipelines.paths import UnsafePathError, manifest_relative_path, webvid_relative_path

STATUS_TODO = "todo"
STATUS_CACHED = "cached"
STATUS_FAILED = "failed"

# Reason categories of the errors table.
UNSAFE_PATH = "unsafe_path"
BAD_CAPTION = "bad_caption"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Columns:
    """Input column names after applying the per-format defaults."""

    key: str
    caption: str
    path: str | None  # manifests
    page_dir: str | None  # WebVid, page_dir layout


def resolve_columns(cfg: DataConfig) -> Columns:
    if cfg.format == "webvid":
        page_dir = cfg.page_dir_column if cfg.layout == "page_dir" else None
        return Columns(cfg.id_column or "videoid", cfg.caption_column or "name", None, page_dir)
    return Columns(
        cfg.id_column or cfg.path_column, cfg.caption_column or "caption", cfg.path_column, None
    )


def _column_options(columns: Columns) -> dict[str, str]:
    options = {"data.id_column": columns.key, "data.caption_column": columns.caption}
    if columns.path:
        options["data.path_column"] = columns.path
    if columns.page_dir:
        options["data.page_dir_column"] = columns.page_dir
    return options


def input_column_names(location: Location, fmt: str) -> list[str]:
    """Column names of the input table, read from its first record only."""
    if fmt == "parquet":
        return pq.read_schema(location.path, filesystem=location.fs).names
    with location.fs.open_input_stream(location.path) as stream:
        head = stream.read(1 << 20)
    first_line = head.split(b"\n", 1)[0]
    if fmt == "jsonl":
        return list(json.loads(first_line))
    reader = pacsv.open_csv(pa.py_buffer(first_line + b"\n"))
    return reader.schema.names


def check_input_columns(cfg: DataConfig, location: Location) -> Columns:
    """The mapped columns, after checking that the table has them (a config error otherwise)."""
    columns = resolve_columns(cfg)
    present = set(input_column_names(location, cfg.format))
    for option, name in _column_options(columns).items():
        if name not in present:
            raise ConfigError(
                f"{option}: column {name!r} not in {location.uri} (has: {', '.join(sorted(present))})"
            )
    return columns


def read_input(cfg: DataConfig, location: Location, columns: Columns):
    """The input table as a streaming Ray Dataset with only the mapped columns.

    CSV text columns are read as binary so that one undecodable caption becomes an error row
    instead of failing the whole file."""
    import ray.data

    names = sorted({c for c in (columns.key, columns.caption, columns.path, columns.page_dir) if c})
    if cfg.format == "parquet":
        return ray.data.read_parquet(location.path, filesystem=location.fs, columns=names)
    if cfg.format == "jsonl":
        # pyarrow's JSON reader reads newline-delimited JSON (one object per line).
        ds = ray.data.read_json(location.path, filesystem=location.fs)
        return ds.select_columns(names)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in names}, include_columns=names
    )
    return ray.data.read_csv(location.path, filesystem=location.fs, convert_options=convert)


@dataclass(frozen=True)
class PlanSpec:
    """Everything the plan stage needs; pickled once into the Ray tasks."""

    fmt: str
    layout: str
    video_ext: str
    columns: Columns
    root: Location
    fingerprint_hash: str
    seed: int
    clips_per_video: int
    flip: bool


def _text(value) -> str | None:
    """A cell as text; None when missing or not valid UTF-8."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


def _display(value) -> str:
    text = _text(value)
    if text is not None:
        return text
    return repr(value) if value is not None else ""


def variants(flip: bool) -> tuple[bool, ...]:
    return (False, True) if flip else (False,)


def needed_mask(cached: np.ndarray, spec: PlanSpec, source: str) -> tuple[int, int]:
    """Bit ``2 * ordinal + flipped`` set for each clip not yet in ``cached`` (sorted uint64 ids);
    also the number of clips found cached."""
    mask, found = 0, 0
    for ordinal in range(spec.clips_per_video):
        for flipped in variants(spec.flip):
            cid = windows.clip_id(spec.fingerprint_hash, source, spec.seed, ordinal, flipped)
            value = np.uint64(int(cid, 16))
            position = np.searchsorted(cached, value)
            if position < len(cached) and cached[position] == value:
                found += 1
            else:
                mask |= 1 << (2 * ordinal + int(flipped))
    return mask, found


def _resolve_source(row: dict, spec: PlanSpec) -> tuple[str, str]:
    """``(video_id, source uri)``; raises ``UnsafePathError``."""
    columns = spec.columns
    if spec.fmt == "webvid":
        videoid = _text(row[columns.key])
        page_dir = _text(row[columns.page_dir]) if columns.page_dir else None
        if videoid is None:
            raise UnsafePathError("videoid is missing or not valid UTF-8")
        relative = webvid_relative_path(videoid, page_dir, spec.layout, spec.video_ext)
        return videoid, spec.root.join(relative).uri
    path = _text(row[columns.path])
    if path is None:
        raise UnsafePathError("path is missing or not valid UTF-8")
    relative = manifest_relative_path(path, spec.root)
    # Without an id column the id is the path relative to the root (the same for
    # ``part0/x.mp4`` and ``s3://bucket/root/part0/x.mp4``).
    video_id = relative if columns.key == columns.path else (_text(row[columns.key]) or relative)
    return video_id, spec.root.join(relative).uri


def plan_batch(batch: dict[str, np.ndarray], spec: PlanSpec, cached: np.ndarray) -> dict:
    """Input rows -> plan rows: ``key, video_id, caption, source, status, reason, message,
    need_mask, cached_clips``."""
    names = list(batch)
    size = len(batch[names[0]]) if names else 0
    out: dict[str, list] = {
        k: []
        for k in (
            "key",
            "video_id",
            "caption",
            "source",
            "status",
            "reason",
            "message",
            "need_mask",
            "cached_clips",
        )
    }
    seen: set[str] = set()
    for i in range(size):
        row = {name: batch[name][i] for name in names}
        key = (
            _display(row[spec.columns.key])
            or f"<{spec.columns.path}: {_display(row.get(spec.columns.path))}>"
        )
        status, reason, message = STATUS_TODO, "", ""
        video_id, source, caption, mask, found = "", "", "", 0, 0
        try:
            video_id, source = _resolve_source(row, spec)
        except UnsafePathError as error:
            status, reason, message = STATUS_FAILED, UNSAFE_PATH, str(error)
        if status == STATUS_TODO:
            text = _text(row[spec.columns.caption])
            if text is None:
                status, reason = STATUS_FAILED, BAD_CAPTION
                message = "caption is missing or not valid UTF-8"
            elif not text.strip():
                status, reason, message = STATUS_FAILED, BAD_CAPTION, "caption is empty"
            else:
                caption = text.strip()
        if status == STATUS_TODO and source in seen:
            status, reason = STATUS_FAILED, DUPLICATE
            message = f"{source} already appears in this run"
        if status == STATUS_TODO:
            seen.add(source)
            mask, found = needed_mask(cached, spec, source)
            if mask == 0:
                status = STATUS_CACHED
        for name, value in zip(
            out,
            (key, video_id, caption, source, status, reason, message, mask, found),
        ):
            out[name].append(value)
    result = {k: np.array(v, dtype=object) for k, v in out.items()}
    result["need_mask"] = np.array(out["need_mask"], dtype=np.int64)
    result["cached_clips"] = np.array(out["cached_clips"], dtype=np.int32)
    return result
