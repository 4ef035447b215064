"""Inputs that are not a table: a folder of videos, and one long video cut by time ranges.

Each is turned into the record stream the table readers give (``pipelines.sources``), so the
plan, decode and cache stages are the same for every format. Records have the columns
``video`` (path relative to the video root), ``caption`` (binary: invalid UTF-8 becomes an error
row, as in CSV tables), ``input_reason``/``input_message`` (non-empty when the reader already
knows the row is bad: the plan records it as such) and, for ranges, ``start``/``end`` (seconds).

Folder (``data.format=folder``): every file under ``data.input`` whose extension is one of
``data.video_extensions``, sorted by relative path, so ``row`` (the position in that order) and
the clip ids are stable between runs. Its caption is, in this order:

1. the entry for it in a ``metadata.jsonl`` (Hugging Face's video-folder convention: one JSON
   object per line, ``file_name`` relative to that file's directory, the caption in
   ``data.caption_column`` or else ``text``, else ``caption``); a listed file that does not exist
   is still a row (``missing_file``), so the metadata loses nothing either;
2. else the same-named ``.txt`` beside it (``clip.mp4`` -> ``clip.txt``).

A video with neither, or with an empty caption, is a ``bad_caption`` row. On a local root the
walk follows the rules of ``pipelines.paths``: a link (file or directory) whose real path leaves
the root is never followed nor stat'ed; it is a row of its own whatever its name (a linked
directory is one row) that the plan refuses as ``unsafe_path`` (unless ``data.follow_symlinks``),
and a ``.txt`` caption that is such a link is not read (``unsafe_path`` too). A directory reached
twice (a link loop, or two links to one directory) is walked once.

Ranges (``data.format=ranges``): ``data.input`` is a CSV or JSON-lines file with ``start``,
``end`` (seconds, or ``HH:MM:SS.mmm``) and a caption column, or a SubRip ``.srt`` file; each
range is one row of the video ``data.long_video``. The plan checks the numbers (``bad_range``);
the decoder draws the clip windows inside the range only (``windows.segment_frames``).
"""

from __future__ import annotations

import heapq
import json
import os
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from animatediff.config import ConfigError
from animatediff.storage import Location
from animatediff.text import quote

VIDEO = "video"
CAPTION = "caption"
START = "start"
END = "end"
INPUT_REASON = "input_reason"
INPUT_MESSAGE = "input_message"
METADATA = "metadata.jsonl"
METADATA_CAPTION_FIELDS = ("text", "caption")

# Reason categories (the same strings as ``pipelines.sources``, which imports this module).
_BAD_CAPTION = "bad_caption"
_UNSAFE_PATH = "unsafe_path"
_BAD_RANGE = "bad_range"


@dataclass(frozen=True)
class FolderEntry:
    """One input row of a folder: a video path relative to the root and where its caption is."""

    video: str
    caption_file: str | None = None
    """The ``.txt`` beside the video (relative to the root), when it exists."""
    caption: str | None = None
    """The caption from ``metadata.jsonl``, which wins over the ``.txt``."""
    reason: str = ""
    message: str = ""
    """Set when the entry is already known to be bad (a ``metadata.jsonl`` entry without a
    caption, a caption file linking out of the root)."""


@dataclass(frozen=True)
class _Listing:
    files: list[str]
    """Relative paths of the plain files (and of the links refused without being followed)."""
    refused: set[str]
    """Relative paths of links whose real path leaves the root: not read, refused by the plan."""


def _walk_local(root: str, follow_symlinks: bool) -> _Listing:
    """Relative paths of the files under ``root``, links resolved by the ``pipelines.paths``
    rules; directories are walked once each (by real path), so a link loop ends."""
    real_root = os.path.realpath(root)
    files: list[str] = []
    refused: set[str] = set()
    visited: set[str] = set()
    # Real directories before linked ones, each in name order: a directory reached both ways
    # is listed under its real name, and the listing does not depend on ``scandir``'s order.
    pending = [(False, "", root)]
    while pending:
        _, relative, directory = heapq.heappop(pending)
        real = os.path.realpath(directory)
        if real in visited:
            continue
        visited.add(real)
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
            for entry in entries:
                name = posixpath.join(relative, entry.name) if relative else entry.name
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    inside = target == real_root or target.startswith(
                        real_root.rstrip(os.sep) + os.sep
                    )
                    if not inside and not follow_symlinks:
                        files.append(name)  # refused by the plan, never stat'ed here
                        refused.add(name)
                        continue
                    if os.path.isdir(target):
                        heapq.heappush(pending, (True, name, entry.path))
                    elif os.path.isfile(target):
                        files.append(name)
                elif entry.is_dir(follow_symlinks=False):
                    heapq.heappush(pending, (False, name, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files.append(name)
    return _Listing(files, refused)


def _walk(root: Location, follow_symlinks: bool) -> _Listing:
    if isinstance(root.fs, pafs.LocalFileSystem):
        return _walk_local(root.path, follow_symlinks)
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    prefix = root.path.rstrip("/") + "/"
    files = [i.path[len(prefix) :] for i in infos if i.type == pafs.FileType.File]
    return _Listing(files, set())


def _metadata_entries(
    root: Location, metadata: str, caption_column: str
) -> Iterator[tuple[str, str | None, str]]:
    """``(video path relative to the root, caption or None, why it is None)`` per line of one
    ``metadata.jsonl``; a line that is not a JSON object with ``file_name`` is a config error
    (the file is the dataset's declaration: half-reading it would lose rows silently)."""
    with root.fs.open_input_stream(root.join(metadata).path) as stream:
        lines = stream.read().decode("utf-8", errors="replace").splitlines()
    directory = posixpath.dirname(metadata)
    fields = (caption_column,) if caption_column else METADATA_CAPTION_FIELDS
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{root.join(metadata).uri} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"data.input: {where} is not JSON ({error})") from error
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
            raise ConfigError(f"data.input: {where} has no 'file_name' string")
        video = posixpath.join(directory, record["file_name"]) if directory else record["file_name"]
        if ".." not in video.split("/"):  # a '..' stays as written: the plan refuses it
            video = posixpath.normpath(video)
        field = next((f for f in fields if f in record), None)
        if field is None:
            yield video, None, f"{where} has no caption field ({' or '.join(fields)})"
        elif not isinstance(record[field], str):
            yield video, None, f"{where}: {field!r} is {type(record[field]).__name__}, not text"
        else:
            yield video, record[field], ""


def list_folder(
    root: Location,
    extensions: tuple[str, ...],
    follow_symlinks: bool = False,
    caption_column: str = "",
) -> list[FolderEntry]:
    """The rows of a video folder, sorted by relative path (see the module doc)."""
    listing = _walk(root, follow_symlinks)
    suffixes = tuple(e.lower() for e in extensions)
    present = set(listing.files)
    captions = {f for f in listing.files if f.endswith(".txt") or posixpath.basename(f) == METADATA}
    videos = {f for f in listing.files if f.lower().endswith(suffixes)}
    videos |= listing.refused - captions  # a link out of the root is a row, whatever its name
    entries: list[FolderEntry] = []
    listed: set[str] = set()
    for name in sorted(f for f in listing.files if posixpath.basename(f) == METADATA):
        if name in listing.refused:
            continue  # a link out of the root: its target is not read
        for video, caption, why in _metadata_entries(root, name, caption_column):
            listed.add(video)  # duplicates stay rows: the plan records them as ``duplicate``
            entries.append(FolderEntry(video, caption=caption))
            if why:
                entries[-1] = FolderEntry(video, reason=_BAD_CAPTION, message=why)
    for video in videos - listed:
        text = posixpath.splitext(video)[0] + ".txt"
        if text in listing.refused:
            why = f"caption {quote(text)} is a symbolic link out of the video root"
            entries.append(FolderEntry(video, reason=_UNSAFE_PATH, message=why))
        else:
            entries.append(FolderEntry(video, caption_file=text if text in present else None))
    return sorted(entries, key=lambda e: e.video)  # stable: duplicates keep their file order


def _read_caption(root: Location, entry: FolderEntry) -> tuple[bytes | None, str]:
    """``(caption bytes or None, why None)`` for one entry."""
    if entry.reason:
        return None, entry.message
    if entry.caption is not None:
        return entry.caption.encode("utf-8", errors="surrogatepass"), ""
    beside = posixpath.splitext(entry.video)[0] + ".txt"
    if entry.caption_file is None:
        return None, f"no caption: neither {quote(beside)} beside it nor a {METADATA} entry"
    try:
        with root.fs.open_input_stream(root.join(entry.caption_file).path) as stream:
            return stream.read(), ""
    except OSError as error:
        return None, f"caption {quote(entry.caption_file)} unreadable: {error}"


def folder_table(root: Location, entries: list[FolderEntry], first_row: int) -> pa.Table:
    """Records ``video, caption, input_reason, input_message, row`` of ``entries`` (numbered
    from ``first_row``); the captions are read here (in parallel on object stores)."""

    def one(entry: FolderEntry) -> tuple[bytes | None, str]:
        return _read_caption(root, entry)

    if isinstance(root.fs, pafs.LocalFileSystem) or len(entries) < 2:
        captions = [one(e) for e in entries]
    else:
        with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
            captions = list(pool.map(one, entries))
    reasons = [
        "" if text is not None else (e.reason or _BAD_CAPTION)
        for e, (text, _) in zip(entries, captions)
    ]
    return pa.table(
        {
            VIDEO: pa.array([e.video for e in entries], pa.string()),
            CAPTION: pa.array([text for text, _ in captions], pa.binary()),
            INPUT_REASON: pa.array(reasons, pa.string()),
            INPUT_MESSAGE: pa.array([why for _, why in captions], pa.string()),
            "row": pa.array(np.arange(first_row, first_row + len(entries), dtype=np.int64)),
        }
    )


# --- time ranges -------------------------------------------------------------------------------

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:[.,]\d+)?)$")
_SRT_TIME = r"(\d+:\d+:\d+[,.]\d+)"
_SRT_ARROW = re.compile(rf"^\s*{_SRT_TIME}\s*-->\s*{_SRT_TIME}")


def seconds(value) -> float | None:
    """A time as seconds: a number, a numeric string, or ``[HH:]MM:SS[.mmm]`` (SRT's comma
    too); None when it is none of these (or not finite)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        text = value.strip()
        clock = _CLOCK.match(text)
        if clock:
            hours, minutes, secs = clock.groups()
            result = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs.replace(",", "."))
        else:
            try:
                result = float(text)
            except ValueError:
                return None
    elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        result = float(value)
    else:
        return None
    return result if np.isfinite(result) else None


def parse_srt(text: str) -> list[dict]:
    """SubRip cues -> ``[{"start": s, "end": s, "caption": text, "message": why bad}, ...]`` in
    file order. A block without a valid time line is kept, with its ``message`` (never dropped)."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").lstrip("\ufeff").strip()):
        lines = block.split("\n")
        if not block.strip():
            continue
        # The numeric counter line is optional in practice; the time line is what counts.
        timing = next((i for i, line in enumerate(lines[:2]) if "-->" in line), None)
        match = _SRT_ARROW.match(lines[timing]) if timing is not None else None
        if match is None:
            cues.append(
                {
                    "start": None,
                    "end": None,
                    "caption": "\n".join(lines),
                    "message": f"SRT block {quote(lines[0], 40)} has no 'HH:MM:SS,mmm --> "
                    "HH:MM:SS,mmm' time line",
                }
            )
            continue
        start, end = (seconds(t) for t in match.groups())
        caption = " ".join(line.strip() for line in lines[timing + 1 :] if line.strip())
        cues.append({"start": start, "end": end, "caption": caption, "message": ""})
    return cues


def ranges_format(uri: str) -> str:
    """``srt``, ``jsonl`` or ``csv``: the ranges file's kind, from its extension."""
    lower = uri.lower()
    if lower.endswith(".srt"):
        return "srt"
    if lower.endswith((".jsonl", ".json")):
        return "jsonl"
    return "csv"


def srt_table(location: Location, long_video: str) -> pa.Table:
    """Records ``video, caption, start, end, input_reason, input_message, row`` of an SRT file."""
    with location.fs.open_input_stream(location.path) as stream:
        cues = parse_srt(stream.read().decode("utf-8", errors="replace"))
    return pa.table(
        {
            VIDEO: pa.array([long_video] * len(cues), pa.string()),
            CAPTION: pa.array([c["caption"].encode() for c in cues], pa.binary()),
            START: pa.array([c["start"] for c in cues], pa.float64()),
            END: pa.array([c["end"] for c in cues], pa.float64()),
            INPUT_REASON: pa.array([_BAD_RANGE if c["message"] else "" for c in cues], pa.string()),
            INPUT_MESSAGE: pa.array([c["message"] for c in cues], pa.string()),
            "row": pa.array(np.arange(len(cues), dtype=np.int64)),
        }
    )


def ranges_records(table: pa.Table, caption_column: str, long_video: str) -> pa.Table:
    """A CSV/JSONL ranges table (``caption_column, start, end, row``) as records with the
    canonical names and the long video on every row."""
    names = {caption_column: CAPTION, START: START, END: END, "row": "row"}
    table = table.select(list(names)).rename_columns(list(names.values()))
    return table.append_column(VIDEO, pa.array([long_video] * table.num_rows, pa.string()))
