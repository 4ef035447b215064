"""Input tables (WebVid CSV, CSV/JSONL/Parquet manifests) and the plan stage.

The input table is read by ``InputTable`` (a Ray Data datasource) which numbers the records:
``row`` is each record's position in the table (0 = the first record, as
``pandas.read_csv(...).iloc[row]``) and travels with it to its outcome record. A folder of videos
and a long video cut by time ranges (``pipelines.corpora``) are read into the same records; the
choice of reader by ``data.format`` is made here only (``resolve_columns``,
``check_input_columns``, ``input_table_datasource``).

The plan stage turns each input row into one of: a row to decode (with the bit mask of the clips
still missing from the cache), a row already fully cached, or a row refused before any video is
touched (unsafe path, a symbolic link out of the root, bad caption). Every row keeps flowing so
that the decode stage can record its outcome; nothing is dropped silently. The cache is keyed on
the source's content identity too (``pipelines.identity``): the plan stats each source (a HEAD
on object stores, in parallel) and a replaced file is encoded again.

Batches are dicts of numpy arrays (Ray Data ``batch_format="numpy"``).
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from animatediff.config import ConfigError, DataConfig, StorageConfig
from animatediff.preflight import check_input_file, check_root
from animatediff.storage import Location
from animatediff.text import is_blank, quote, visible
from pipelines import corpora, identity, windows
from pipelines.paths import (
    UnsafePathError,
    confine,
    locate_path,
    manifest_relative_path,
    webvid_relative_path,
)

STATUS_TODO = "todo"
STATUS_CACHED = "cached"
STATUS_FAILED = "failed"

# Reason categories of the errors table.
UNSAFE_PATH = "unsafe_path"
BAD_CAPTION = "bad_caption"
DUPLICATE = "duplicate"
BAD_RANGE = "bad_range"


@dataclass(frozen=True)
class Columns:
    """Input column names after applying the per-format defaults."""

    key: str
    caption: str
    path: str | None  # manifests
    page_dir: str | None  # WebVid, page_dir layout
    start: str | None = None  # ranges: the segment's start and end, in seconds
    end: str | None = None


def resolve_columns(cfg: DataConfig) -> Columns:
    if cfg.format == "folder":
        return Columns(corpora.VIDEO, corpora.CAPTION, corpora.VIDEO, None)
    if cfg.format == "ranges":
        video, caption = corpora.VIDEO, corpora.CAPTION
        return Columns(video, caption, video, None, corpora.START, corpora.END)
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
    if cfg.format == "folder":
        return columns  # no table: the records are made from the listing
    if cfg.format == "ranges":
        kind = corpora.ranges_format(location.uri)
        if kind != "srt":
            present = set(input_column_names(location, kind))
            wanted = {"data.caption_column": cfg.caption_column or corpora.CAPTION}
            for name in (corpora.START, corpora.END):
                wanted[f"data.format=ranges: column {name!r}"] = name
            for option, name in wanted.items():
                if name not in present:
                    has = ", ".join(sorted(present))
                    raise ConfigError(
                        f"{option}: column {name!r} not in {location.uri} (has: {has})"
                    )
        return columns
    present = set(input_column_names(location, cfg.format))
    for option, name in _column_options(columns).items():
        if name not in present:
            hint = ""
            if cfg.format == "webvid" and cfg.path_column in present:
                # The tiny preset and the defaults read WebVid; a manifest must say so.
                hint = (
                    f"; a table with a {cfg.path_column!r} path column is a manifest: set "
                    "data.format=csv (or jsonl, parquet)"
                )
            raise ConfigError(
                f"{option}: column {name!r} not in {location.uri} "
                f"(has: {', '.join(sorted(present))}){hint}"
            )
    return columns


def check_input(cfg: DataConfig, uri: str, storage: StorageConfig | None = None) -> None:
    """``data.input`` is what ``data.format`` reads: a directory for ``folder``, else a file."""
    if cfg.format == "folder":
        check_root(uri, "data.input", storage)
    else:
        check_input_file(uri, "data.input", storage)


def default_video_root(cfg: DataConfig, input_location: Location) -> str:
    """``data.video_root``, else the folder itself (``folder``), else the input's directory."""
    if cfg.video_root:
        return cfg.video_root
    if cfg.format == "folder":
        return input_location.uri
    return posixpath.dirname(input_location.uri)


ROW = "row"
"""Column added to the input records: their position in the input table."""


def _csv_options(names: list[str]) -> pacsv.ConvertOptions:
    # Text columns are read as binary so that one undecodable caption becomes an error row
    # instead of failing the whole file.
    return pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in names}, include_columns=names
    )


def _numbered(batches: Iterator[pa.RecordBatch], first_row: int) -> Iterator[pa.Table]:
    row = first_row
    for batch in batches:
        table = pa.Table.from_batches([batch])
        numbers = pa.array(np.arange(row, row + table.num_rows, dtype=np.int64))
        yield table.append_column(ROW, numbers)
        row += table.num_rows


def _read_text_table(location: Location, fmt: str, names: list[str]) -> Iterator[pa.Table]:
    """A CSV or JSON-lines file read in order, numbered (one task: a text table cannot be split
    without reading it). CSV streams; JSON lines are parsed whole, as Ray's own reader does, so
    that a key first seen late in the file is still read."""
    with location.fs.open_input_stream(location.path) as stream:
        if fmt == "jsonl":
            table = pajson.read_json(stream)
            for name in names:
                if name not in table.column_names:  # a key absent from every record
                    table = table.append_column(name, pa.nulls(table.num_rows))
            yield from _numbered(iter(table.select(names).to_batches(max_chunksize=1 << 16)), 0)
        else:
            reader = pacsv.open_csv(stream, convert_options=_csv_options(names))
            yield from _numbered(iter(reader), 0)


def _read_row_groups(
    location: Location, groups: list[int], first_row: int, names: list[str]
) -> Iterator[pa.Table]:
    with location.fs.open_input_file(location.path) as source:
        parquet = pq.ParquetFile(source)
        batches = parquet.iter_batches(row_groups=groups, columns=names)
        yield from _numbered(batches, first_row)


FOLDER_ROWS_PER_TASK = 1024
"""Folder entries per read task: captions are read in the tasks, in parallel on object stores."""


def _reader_tasks(cfg: DataConfig, location: Location) -> list[tuple[Any, int | None]] | None:
    """``[(read function, rows)]`` for the formats of ``pipelines.corpora``; None for tables.
    A folder is listed here (on the driver), so ``row`` follows the sorted listing."""
    if cfg.format == "folder":
        entries = corpora.list_folder(
            location, cfg.video_extensions, cfg.follow_symlinks, cfg.caption_column
        )
        step = FOLDER_ROWS_PER_TASK

        def read(chunk: list[corpora.FolderEntry], first: int) -> Iterator[pa.Table]:
            yield corpora.folder_table(location, chunk, first)

        # Each task holds its own slice only (a task is pickled on its own).
        return [
            (functools.partial(read, entries[s : s + step], s), None)
            for s in range(0, len(entries), step)
        ] or [(lambda: iter(()), 0)]
    if cfg.format == "ranges":
        kind = corpora.ranges_format(location.uri)
        if kind == "srt":
            return [(lambda: iter([corpora.srt_table(location, cfg.long_video)]), None)]
        caption = cfg.caption_column or corpora.CAPTION
        names = sorted({caption, corpora.START, corpora.END})

        def read() -> Iterator[pa.Table]:
            for table in _read_text_table(location, kind, names):
                yield corpora.ranges_records(table, caption, cfg.long_video)

        return [(read, None)]
    return None


def input_table_datasource(cfg: DataConfig, location: Location, columns: Columns) -> Any:
    """A Ray Data datasource over the input table that adds ``row`` (see the module doc)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    names = sorted({c for c in (columns.key, columns.caption, columns.path, columns.page_dir) if c})
    size = location.fs.get_file_info(location.path).size or 0
    corpus_tasks = _reader_tasks(cfg, location)

    class InputTable(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return size

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            def task(read, rows: int | None) -> ReadTask:
                metadata = BlockMetadata(
                    num_rows=rows, size_bytes=None, exec_stats=None, input_files=(location.uri,)
                )
                return ReadTask(read, metadata)

            if corpus_tasks is not None:
                return [task(read, rows) for read, rows in corpus_tasks]
            if cfg.format != "parquet":
                return [task(lambda: _read_text_table(location, cfg.format, names), None)]
            with location.fs.open_input_file(location.path) as source:
                meta = pq.ParquetFile(source).metadata
            counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            per_task = max(1, -(-len(counts) // max(1, parallelism)))
            tasks = []
            for start in range(0, len(counts), per_task):
                groups = list(range(start, min(start + per_task, len(counts))))
                first = sum(counts[:start])
                tasks.append(
                    task(
                        lambda g=groups, f=first: _read_row_groups(location, g, f, names),
                        sum(counts[i] for i in groups),
                    )
                )
            return tasks or [task(lambda: iter(()), 0)]

    return InputTable()


def read_input(cfg: DataConfig, location: Location, columns: Columns):
    """The input table as a streaming Ray Dataset: the mapped columns and ``row``."""
    import ray.data

    return ray.data.read_datasource(input_table_datasource(cfg, location, columns))


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
    follow_symlinks: bool = False
    content_hash: bool = False


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


def needed_mask(
    cached: np.ndarray, spec: PlanSpec, source: str, version: str = ""
) -> tuple[int, int]:
    """Bit ``2 * ordinal + flipped`` set for each clip not yet in ``cached`` (sorted uint64 ids);
    also the number of clips found cached."""
    mask, found = 0, 0
    for ordinal in range(spec.clips_per_video):
        for flipped in variants(spec.flip):
            cid = windows.clip_id(
                spec.fingerprint_hash, source, spec.seed, ordinal, flipped, version
            )
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
        if not videoid:
            raise UnsafePathError("videoid is empty, missing or not valid UTF-8")
        relative = webvid_relative_path(videoid, page_dir, spec.layout, spec.video_ext)
        return videoid, spec.root.join(relative).uri
    path = _text(row[columns.path])
    if not path:
        raise UnsafePathError("path is empty, missing or not valid UTF-8")
    relative = manifest_relative_path(path, spec.root)
    # Without an id column the id is the path relative to the root (the same for
    # ``part0/x.mp4`` and ``s3://bucket/root/part0/x.mp4``).
    video_id = relative if columns.key == columns.path else (_text(row[columns.key]) or relative)
    return video_id, spec.root.join(relative).uri


def _versions(sources: list[str], spec: PlanSpec) -> list[str | UnsafePathError]:
    """The content identity of each source (``""``: missing), or the ``UnsafePathError`` of a
    symbolic link out of the root. Object-store HEADs run in parallel."""

    def one(uri: str) -> str | UnsafePathError:
        try:
            location = confine(spec.root, locate_path(spec.root, uri), spec.follow_symlinks)
        except UnsafePathError as error:
            return error
        try:
            return identity.source_version(location, spec.content_hash)
        except OSError:  # unreadable now: the decode stage records why
            return identity.MISSING

    if isinstance(spec.root.fs, pafs.LocalFileSystem) or len(sources) < 2:
        return [one(uri) for uri in sources]
    with ThreadPoolExecutor(max_workers=min(16, len(sources))) as pool:
        return list(pool.map(one, sources))


PLAN_COLUMNS = (
    "row",
    "key",
    "video_id",
    "caption",
    "source",
    "source_version",
    "status",
    "reason",
    "message",
    "need_mask",
    "cached_clips",
)


def _segment(row: dict, columns: Columns) -> tuple[float, float, str, str]:
    """A ranges row's ``(start, end, fragment, problem)``: ``fragment`` (``#t=start,end``) is
    appended to its key, video id and source, so each range is its own source to the cache and
    the window draw; ``problem`` is why the range is unusable (empty when it is fine)."""
    raw_start, raw_end = row[columns.start], row[columns.end]
    start, end = corpora.seconds(raw_start), corpora.seconds(raw_end)
    if start is None or end is None:
        fragment = f"#t={_display(raw_start)},{_display(raw_end)}"
        return np.nan, np.nan, fragment, "start or end is missing or not a time in seconds"
    fragment = windows.segment_fragment(start, end)
    if start < 0:
        return start, end, fragment, f"range starts before the video ({start:g} s)"
    if end <= start:
        return start, end, fragment, f"range is empty (end {end:g} s <= start {start:g} s)"
    return start, end, fragment, ""


def plan_batch(batch: dict[str, np.ndarray], spec: PlanSpec, cached: np.ndarray) -> dict:
    """Input rows -> plan rows: ``row, key, video_id, caption, source, source_version, status,
    reason, message, need_mask, cached_clips`` (and ``start_s, end_s`` for time ranges: the
    segment of the video, in seconds, that the row's clips are drawn from)."""
    names = list(batch)
    size = len(batch[names[0]]) if names else 0
    out: dict[str, list] = {k: [] for k in PLAN_COLUMNS}
    resolved: list[tuple[str, str] | UnsafePathError] = []
    for i in range(size):
        row = {name: batch[name][i] for name in names}
        try:
            resolved.append(_resolve_source(row, spec))
        except UnsafePathError as error:
            resolved.append(error)
    todo = [r[1] for r in resolved if isinstance(r, tuple)]
    versions = iter(_versions(todo, spec))
    seen: set[str] = set()
    segments: list[tuple[float, float]] = []
    for i in range(size):
        row = {name: batch[name][i] for name in names}
        number = int(row[ROW]) if ROW in row else i
        key = _display(row[spec.columns.key]) or f"<row {number}: empty {spec.columns.key}>"
        status, reason, message = STATUS_TODO, "", ""
        video_id, source, caption, version, mask, found = "", "", "", "", 0, 0
        if isinstance(resolved[i], UnsafePathError):
            status, reason, message = STATUS_FAILED, UNSAFE_PATH, str(resolved[i])
        else:
            video_id, source = resolved[i]
            checked = next(versions)
            if isinstance(checked, UnsafePathError):
                status, reason, message = STATUS_FAILED, UNSAFE_PATH, str(checked)
            else:
                version = checked
        if status == STATUS_TODO and _text(row.get(corpora.INPUT_REASON)):
            # The reader already knows why (no caption file, a caption linking out, bad SRT).
            status, reason = STATUS_FAILED, str(row[corpora.INPUT_REASON])
            message = str(row[corpora.INPUT_MESSAGE])
        if spec.columns.start:
            start, end, fragment, problem = _segment(row, spec.columns)
            key, video_id = key + fragment, video_id + fragment if video_id else ""
            source = source + fragment if source else ""
            segments.append((start, end))
            if status == STATUS_TODO and problem:
                status, reason, message = STATUS_FAILED, BAD_RANGE, problem
        if status == STATUS_TODO:
            text = _text(row[spec.columns.caption])
            if text is None:
                status, reason = STATUS_FAILED, BAD_CAPTION
                message = "caption is missing or not valid UTF-8"
            elif is_blank(text):  # also zero-width spaces, joiners, BOMs: nothing to read
                status, reason = STATUS_FAILED, BAD_CAPTION
                message = f"caption {quote(text, 40)} is empty or shows nothing"
            else:
                caption = visible(text)
        if status == STATUS_TODO and source in seen:
            status, reason = STATUS_FAILED, DUPLICATE
            message = f"{quote(source)} already appears in this run"
        if status == STATUS_TODO:
            seen.add(source)
            mask, found = needed_mask(cached, spec, source, version)
            if mask == 0:
                status = STATUS_CACHED
        values = (number, key, video_id, caption, source, version, status, reason, message)
        for name, value in zip(out, (*values, mask, found)):
            out[name].append(value)
    result = {k: np.array(v, dtype=object) for k, v in out.items()}
    result["row"] = np.array(out["row"], dtype=np.int64)
    result["need_mask"] = np.array(out["need_mask"], dtype=np.int64)
    result["cached_clips"] = np.array(out["cached_clips"], dtype=np.int32)
    if spec.columns.start:
        result["start_s"] = np.array([s for s, _ in segments], dtype=np.float64)
        result["end_s"] = np.array([e for _, e in segments], dtype=np.float64)
    return result
