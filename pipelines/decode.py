"""Decode stage (CPU): plan rows -> clip rows of uint8 frames, and one outcome record per row
that produces no clip.

Per video: confine it to the video root (a symbolic link out of it is ``unsafe_path`` and is
never opened; the real path is what gets read), check the object (missing, empty, unreadable),
note its content identity (``pipelines.identity``), probe the container with PyAV (size,
video stream), then decord's ``VideoReader`` resizes while decoding (ffmpeg's scaler, cheaper
than resizing decoded full-size frames) and ``get_batch`` fetches each window; the frames are
centre-cropped to the ``data.resolution`` square, or with ``data.buckets`` to the video's bucket
(``pipelines.buckets``: nearest aspect ratio, resized to cover it). With shot detection on, one
PyAV pass (``shot_pass``) decodes every frame once for the thumbnails and the windows alike,
scaled by the same ffmpeg filter as decord's, so the clips are the pixels decord would give
(``pipelines.shots`` has the costs). Frames stay uint8 ``(frames, height, width, 3)`` until
the encoder: a quarter of the bytes of float32 in the object store. Every failure becomes an
outcome record with a reason category; nothing raises.

Outcome records (failed, cached) are written by this stage as small Parquet parts named by a
hash of their content, so a retried task rewrites the same file instead of adding one.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from animatediff.storage import Location, write_atomic
from animatediff.text import quote
from pipelines import curation, identity, shots, windows
from pipelines.buckets import center_crop_to, cover_shape, nearest_bucket
from pipelines.camera import apply_camera_motion
from pipelines.paths import UnsafePathError, confine, locate_path
from pipelines.sources import BAD_RANGE, STATUS_CACHED, STATUS_FAILED, STATUS_TODO, UNSAFE_PATH

# Reason categories of the errors table (see also pipelines.sources).
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"
NOT_A_VIDEO = "not_a_video"
TRUNCATED = "truncated"
NO_VIDEO_STREAM = "no_video_stream"
TOO_FEW_FRAMES = "too_few_frames"
DECODE_ERROR = "decode_error"

SHOT_PASS_BYTES = 512 * 2**20
"""Most bytes of decoded frames ``shot_pass`` holds for one video (or ranges segment): 132 frames
of 1280x720 take 182 MiB; a longer video takes the two-pass fallback."""


OUTCOME_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # position in the input table (0 = first record)
        ("key", pa.string()),
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("clips", pa.int32()),
        ("cached_clips", pa.int32()),
    ]
)


class DecodeFailure(Exception):
    """A video that yields no clip; ``reason`` is its category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeSpec:
    num_frames: int
    stride: int
    resolution: int
    seed: int
    clips_per_video: int
    threads: int
    root: Location
    outcomes: Location
    """Directory of this run's outcome parts."""
    follow_symlinks: bool = False
    content_hash: bool = False
    camera_motion: str = "none"
    """``data.camera_motion``, applied to every clip after the centre crop (``pipelines.camera``)."""
    camera_strength: float = 0.0
    curation: curation.CurationSpec = curation.CurationSpec()
    """Curation stages run on the decoded windows (``pipelines.curation``); all off by default."""
    curation_dir: Location | None = None
    """Directory of this run's curation record parts (needed when curation is active)."""
    buckets: tuple[tuple[int, int], ...] = ()
    """``data.buckets``: ``(height, width)`` sizes; empty: the square ``resolution`` crop."""
    shot_pass_bytes: int = SHOT_PASS_BYTES
    """Most bytes of decoded frames one shot pass may hold (``shot_pass``); past it, the
    thumbnails and the windows are decoded apart. The frames are the same either way."""

    def frame_size(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((resize width, resize height), (crop height, crop width))`` of a
        ``width x height`` video: the square crop, or its bucket's (``pipelines.buckets``)."""
        if not self.buckets:
            return resize_shape(width, height, self.resolution), (self.resolution,) * 2
        bucket = self.buckets[nearest_bucket(width, height, self.buckets)]
        return cover_shape(width, height, bucket), bucket


def resize_shape(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(width, height)`` with the short side at ``resolution``, aspect ratio kept."""
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """``(frames, H, W, 3)`` -> ``(frames, size, size, 3)`` around the centre."""
    height, width = frames.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return frames[:, top : top + size, left : left + size]


def mp4_boxes(data: bytes, limit: int = 64) -> list[tuple[str, int, int]]:
    """``(name, offset, declared size)`` of the top-level ISO-BMFF boxes (``ftyp``, ``moov``,
    ``mdat``...); used only to explain why an MP4/MOV failed to open or decode."""
    boxes: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 8 <= len(data) and len(boxes) < limit:
        size = int.from_bytes(data[offset : offset + 4], "big")
        name = data[offset + 4 : offset + 8].decode("latin-1")
        if size == 1 and offset + 16 <= len(data):
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:  # "extends to the end of the file"
            size = len(data) - offset
        if size < 8 or not name.isalnum():
            break
        boxes.append((name, offset, size))
        offset += size
    return boxes


def truncation(data: bytes) -> str | None:
    """Why an MP4 looks truncated (index missing, or a box cut short), or None."""
    boxes = mp4_boxes(data)
    names = [name for name, _, _ in boxes]
    if not names or names[0] != "ftyp":
        return None
    name, offset, size = boxes[-1]
    cut = offset + size > len(data)
    cut_text = (
        f"file ends at byte {len(data)} inside box {name!r} declared to end at {offset + size}"
    )
    if "moov" not in names:
        return f"MP4 index (moov) missing; boxes: {names}" + (f"; {cut_text}" if cut else "")
    return cut_text if cut else None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def _fetch(source: Location, spec: DecodeSpec) -> tuple[str | io.BytesIO, str]:
    """``(data, content identity)``: the real local path (links resolved and confined to the
    root), or the object's bytes for decoders that cannot read object stores."""
    try:
        source = confine(spec.root, source, spec.follow_symlinks)
    except UnsafePathError as error:
        raise DecodeFailure(UNSAFE_PATH, str(error)) from error
    try:
        info = source.fs.get_file_info(source.path)
    except OSError as error:
        raise DecodeFailure(UNREADABLE, _short(error)) from error
    if info.type == pafs.FileType.NotFound:
        raise DecodeFailure(MISSING_FILE, f"{quote(source.uri)} does not exist")
    if info.type != pafs.FileType.File:
        raise DecodeFailure(NOT_A_VIDEO, f"{quote(source.uri)} is not a file")
    if info.size == 0:
        raise DecodeFailure(EMPTY_FILE, f"{quote(source.uri)} has zero bytes")
    version = identity.stat_version(info)
    try:
        if isinstance(source.fs, pafs.LocalFileSystem):
            if spec.content_hash:
                version = identity.hash_file(source)
            return source.path, version
        with source.fs.open_input_stream(source.path) as stream:
            data = stream.read()
    except OSError as error:
        raise DecodeFailure(UNREADABLE, _short(error)) from error
    return io.BytesIO(data), identity.hash_version(data) if spec.content_hash else version


def _read_all(data: str | io.BytesIO) -> bytes:
    if isinstance(data, str):
        with open(data, "rb") as file:
            return file.read()
    return data.getvalue()


def _explain(data: str | io.BytesIO, reason: str, error: BaseException) -> DecodeFailure:
    """A failure as ``truncated`` when the container is visibly cut, else as ``reason``."""
    cut = truncation(_read_all(data))
    if cut:
        return DecodeFailure(TRUNCATED, f"{cut} ({_short(error)[:120]})")
    return DecodeFailure(reason, _short(error))


def open_video(data: str | io.BytesIO) -> tuple[Any, int, int]:
    """``(PyAV container, width, height)`` of the first video stream, or ``DecodeFailure``; the
    caller closes the container (the shot pass decodes from it: one probe, one open)."""
    import av

    try:
        container = av.open(data if isinstance(data, str) else io.BytesIO(data.getvalue()))
    except Exception as error:  # PyAV raises many ffmpeg error classes
        raise _explain(data, NOT_A_VIDEO, error) from error
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise DecodeFailure(NO_VIDEO_STREAM, f"no video stream (streams: {', '.join(kinds)})")
        context = container.streams.video[0].codec_context
        width, height = int(context.width), int(context.height)
        if width <= 0 or height <= 0:
            raise DecodeFailure(NOT_A_VIDEO, f"video stream has no frame size ({width}x{height})")
    except DecodeFailure:
        container.close()
        raise
    except Exception as error:
        container.close()
        raise _explain(data, NOT_A_VIDEO, error) from error
    return container, width, height


def thumbnails(
    data: str | io.BytesIO, width: int, height: int, count: int, first: int = 0
) -> np.ndarray:
    """Frames ``first`` to ``first + count`` of the video (a ranges segment; the whole video by
    default), uint8 ``(count, h, w, 3)`` at a ``shots.THUMBNAIL_SIDE`` short side (decord resizes
    while decoding; consecutive indices decode without seeking). The last resort of shot
    detection, when PyAV cannot decode the frames as decord indexes them (``shot_pass`` returns
    None): scaled directly, without ``shots.THUMBNAIL_SAMPLES``'s point-sampling, so on frames
    over 64 pixels its cut scores differ a little from the shot pass's (by up to 1.6 of 255 on
    the 1280x720 real clip)."""
    import decord

    small_width, small_height = resize_shape(width, height, shots.THUMBNAIL_SIDE)
    reader = decord.VideoReader(
        data if isinstance(data, str) else io.BytesIO(data.getvalue()),
        width=small_width,
        height=small_height,
        num_threads=1,
    )
    try:
        end = min(first + count, len(reader))
        chunks = [
            reader.get_batch(list(range(start, min(start + 256, end)))).asnumpy()
            for start in range(first, end, 256)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1, 1, 3), np.uint8)
    finally:
        reader.seek(0)
        del reader


def scaler(stream: Any, width: int, height: int, sample: int = 0) -> Callable[[Any], np.ndarray]:
    """A PyAV frame of ``stream`` -> uint8 ``(height, width, 3)``, scaled as decord scales (an
    ffmpeg ``scale=W:H:flags=bilinear,format=rgb24`` filter graph): the same pixels from either
    reader. ``sample``: a frame larger than ``sample`` times the output a side is first
    point-sampled to that size (``shots.THUMBNAIL_SAMPLES``)."""
    import av

    graph = av.filter.Graph()
    nodes = [graph.add_buffer(template=stream)]
    if sample and min(stream.width, stream.height) > sample * min(width, height):
        nodes.append(graph.add("scale", f"{sample * width}:{sample * height}:flags=neighbor"))
    nodes += [
        graph.add("scale", f"{width}:{height}:flags=bilinear"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in zip(nodes[:-1], nodes[1:]):
        a.link_to(b)
    graph.configure()

    def scale(frame: Any) -> np.ndarray:
        graph.push(frame)
        return graph.pull().to_ndarray()

    return scale


@dataclass
class ShotPass:
    """One decode of a video's frames for shot detection and clip windows together:
    ``thumbnails`` uint8 ``(count, h, w, 3)`` (short side ``shots.THUMBNAIL_SIDE``) and the
    decoded frames, held to convert the windows' frames once shots are known (None when they
    would not fit in the budget: decord then decodes the windows)."""

    thumbnails: np.ndarray
    first: int
    frames: list | None
    convert: Callable[[Any], np.ndarray]

    def window(self, indices: np.ndarray) -> np.ndarray:
        """Video frame indices ``(frames,)`` -> uint8 ``(frames, H, W, 3)`` at the decode size."""
        assert self.frames is not None
        return np.stack([self.convert(self.frames[int(i) - self.first]) for i in indices])


def shot_pass(
    container: Any,
    starts: np.ndarray,
    first: int,
    count: int,
    out_size: tuple[int, int],
    threads: int,
    budget: int = SHOT_PASS_BYTES,
) -> ShotPass | None:
    """Decode frames ``first`` to ``first + count`` of an open PyAV ``container`` once, each
    scaled to a thumbnail (short side ``shots.THUMBNAIL_SIDE``) and held as decoded for
    ``ShotPass.window`` unless they would take more than ``budget`` bytes.

    None when the pass cannot stand in for decord's frames exactly, and the caller takes
    decord's thumbnails (``thumbnails``): a frame's time is not in decord's index ``starts``
    (every frame's start time, seconds from the stream's start), a frame is missing or
    repeated, or PyAV fails.

    The codec decodes every frame either way: shot detection needs them all, where a window
    alone decodes from the keyframe before it to its last frame. Shared, the pass costs shot
    detection the frames after the window and the thumbnails' scaling, not a second decode of
    the whole video."""
    if first + count > len(starts):
        return None
    tolerance = 0.5 * float(np.median(np.diff(starts))) if len(starts) > 1 else 1e-3
    thumbs: list[np.ndarray] = []
    frames: list | None = []
    try:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        origin, base = stream.start_time or 0, stream.time_base
        if first > 0:  # lands on the keyframe at or before the segment's first frame
            container.seek(origin + int(starts[first] / base), stream=stream, backward=True)
        size = resize_shape(stream.width, stream.height, shots.THUMBNAIL_SIDE)
        small = scaler(stream, *size, sample=shots.THUMBNAIL_SAMPLES)
        convert = scaler(stream, *out_size)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            seconds = float((frame.pts - origin) * base)
            index = int(np.searchsorted(starts, seconds - tolerance))
            if index >= len(starts) or abs(starts[index] - seconds) > tolerance:
                return None
            if index < first:  # decoded on the way from the keyframe to the segment
                continue
            if index != first + len(thumbs):
                return None
            if not thumbs and count * sum(p.buffer_size for p in frame.planes) > budget:
                frames = None  # thumbnails only; decord decodes the windows
            if frames is not None:
                frames.append(frame)
            thumbs.append(small(frame))
            if len(thumbs) == count:
                break
    except Exception:  # PyAV raises many ffmpeg error classes; decord will name the failure
        return None
    if len(thumbs) != count:
        return None
    return ShotPass(np.stack(thumbs), first, frames, convert)


def decode_clips(
    source: str,
    spec: DecodeSpec,
    need_mask: int,
    segment: tuple[float, float] | None = None,
    curated: curation.VideoCuration | None = None,
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], float, str]:
    """``([(ordinal, frame_indices (frames,), frames uint8 (frames, R, R, 3))...], fps,
    content identity)`` for each window whose plain or flipped clip is still needed (and kept by
    the curation stages of ``spec.curation``, whose decisions go to ``curated``).

    ``segment``: ``(start, end)`` seconds of a ranges row, whose ``source`` ends with that
    segment's fragment (``windows.segment_fragment``): the windows (and shots) are drawn among
    the frames of the segment only, with the same rule as over a whole video; frame indices
    stay the video's own."""
    import decord

    path = source
    if segment is not None:
        path = source.removesuffix(windows.segment_fragment(*segment))
    data, version = _fetch(locate_path(spec.root, path), spec)
    container, width, height = open_video(data)
    curate = spec.curation.active and curated is not None
    if not (curate and spec.curation.shots):
        container.close()  # only the shot pass decodes with PyAV
    with container:
        (out_width, out_height), crop = spec.frame_size(width, height)
        try:
            reader = decord.VideoReader(
                data, width=out_width, height=out_height, num_threads=spec.threads
            )
        except Exception as error:  # the container opened, so its stream data is bad
            raise _explain(data, DECODE_ERROR, error) from error
        try:
            first, count = 0, len(reader)
            if segment is not None:
                try:
                    timestamps = reader.get_frame_timestamp(list(range(len(reader))))
                    first, count = windows.segment_frames(timestamps, *segment)
                except windows.RangeError as error:
                    raise DecodeFailure(BAD_RANGE, str(error)) from error
            shared: ShotPass | None = None
            try:
                if curate and spec.curation.shots:
                    starts = reader.get_frame_timestamp(list(range(len(reader))))[:, 0]
                    shared = shot_pass(
                        container, starts, first, count, (out_width, out_height), spec.threads,
                        spec.shot_pass_bytes,
                    )  # fmt: skip
                    if shared is not None:
                        small = shared.thumbnails
                    else:
                        small = thumbnails(data, width, height, count, first)
                    found = curation.detect_shots(small, spec.curation)  # segment-relative
                    frame_windows, short = windows.shot_windows(
                        found, count, spec.num_frames, spec.stride, spec.clips_per_video,
                        spec.seed, source,
                    )  # fmt: skip
                    length = windows.window_length(count, spec.num_frames, spec.stride)
                    in_video = [(a + first, b + first) for a, b in found]
                    dropped = [(a + first, b + first) for a, b in short]
                    curated.records += curation.shot_records(in_video, dropped, length)
                else:
                    frame_windows = windows.clip_windows(
                        count, spec.num_frames, spec.stride, spec.clips_per_video, spec.seed, source
                    )
            except windows.TooFewFramesError as error:
                where = f" in the range {segment[0]:g}-{segment[1]:g} s" if segment else ""
                raise DecodeFailure(TOO_FEW_FRAMES, f"{error}{where}") from error
            frame_windows = [indices + first for indices in frame_windows]
            fps = float(reader.get_avg_fps())
            clips = []
            for ordinal, indices in enumerate(frame_windows):
                if not (need_mask >> (2 * ordinal)) & 3:
                    continue
                try:
                    if shared is not None and shared.frames is not None:  # the shot pass's
                        frames = shared.window(indices)
                    else:
                        frames = reader.get_batch(indices.tolist()).asnumpy()
                except Exception as error:  # decord raises DECORDError for cut or corrupt streams
                    raise _explain(data, DECODE_ERROR, error) from error
                if frames.shape[0] != spec.num_frames:
                    raise DecodeFailure(
                        DECODE_ERROR, f"decoded {frames.shape[0]} of {spec.num_frames} frames"
                    )
                frames = center_crop_to(frames, crop)
                if curate:  # on the source's own motion, before any synthetic camera motion
                    span = (int(indices[0]), int(indices[-1]) + 1)
                    records, columns = curation.curate_window(
                        frames, ordinal, span, source, spec.curation
                    )
                    curated.records += records
                    if columns is None:
                        continue
                    curated.columns[ordinal] = columns
                frames = apply_camera_motion(frames, spec.camera_motion, spec.camera_strength)
                clips.append((ordinal, indices, np.ascontiguousarray(frames)))
            return clips, fps, version
        finally:
            # decord keeps decoder state and buffers alive with the reader (known leaks upstream).
            reader.seek(0)
            del reader


def stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-row arrays -> one ``(rows, ...)`` array when they share a shape, else a 1-D object
    array holding them (rows of different buckets cannot share a fixed-shape column)."""
    if len({a.shape for a in arrays}) <= 1:
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):  # one by one: numpy would try to broadcast a list
        column[i] = array
    return column


def _result(reason: str, message: str, clips: int, cached: int) -> dict:
    return {"reason": reason, "message": message, "clips": clips, "cached_clips": cached}


def _write_outcomes(records: list[dict], directory: Location) -> None:
    table = pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    name = hashlib.sha256(data).hexdigest()[:32]
    write_atomic(directory.join(f"part-decode-{name}.parquet"), data)


def decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data step: ``decode_rows``, yielding nothing when no row produced a clip (an empty
    batch would give Ray untyped columns that clash with the real schema downstream)."""
    clips = decode_rows(batch, spec)
    if len(clips["key"]):
        yield clips


def decode_rows(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """Plan rows -> clip rows ``row, key, video_id, caption, source, source_version, ordinal,
    frame_indices (frames,), fps, pixels uint8 (frames, R, R, 3), need_mask, row_first`` (and
    ``camera_motion``, ``camera_strength`` when the spec moves the camera).

    With ``data.buckets`` each clip has its bucket's ``(frames, H, W, 3)`` and the columns
    ``height``, ``width`` say which; ``pixels`` is then an object array of per-clip arrays when
    the batch mixes buckets (``stack_rows``), as Ray Data hands variable-shaped tensors over."""
    records: list[dict] = []
    curation_records: list[dict] = []
    curated_columns: dict[str, list] = {}
    rows: dict[str, list] = {
        k: []
        for k in ("row", "key", "video_id", "caption", "source", "source_version", "ordinal")
        + ("frame_indices", "fps", "pixels", "need_mask", "row_first", "row_clips", "row_cached")
    }
    for i in range(len(batch["key"])):
        key, video_id, source = (
            str(batch["key"][i]),
            str(batch["video_id"][i]),
            str(batch["source"][i]),
        )
        number = int(batch["row"][i])
        status, mask = str(batch["status"][i]), int(batch["need_mask"][i])
        cached = int(batch["cached_clips"][i])
        record = {"row": number, "key": key, "video_id": video_id, "source": source}
        record["status"] = status
        if status != STATUS_TODO:
            reason, message = str(batch["reason"][i]), str(batch["message"][i])
            records.append(record | _result(reason, message, 0, cached))
            continue
        segment = None
        if "start_s" in batch:  # a ranges row (pipelines.corpora)
            segment = (float(batch["start_s"][i]), float(batch["end_s"][i]))
        curated = curation.VideoCuration() if spec.curation.active else None
        try:
            clips, fps, version = decode_clips(source, spec, mask, segment, curated)
        except DecodeFailure as failure:
            failed = _result(failure.reason, str(failure), 0, cached)
            records.append(record | failed | {"status": STATUS_FAILED})
            continue
        except Exception as error:  # never let one video end the run
            failed = _result(DECODE_ERROR, _short(error), 0, cached)
            records.append(record | failed | {"status": STATUS_FAILED})
            continue
        if curated is not None:
            identity_columns = {k: record[k] for k in ("row", "key", "video_id", "source")}
            curation_records += [identity_columns | r for r in curated.records]
        drop = curated.first_drop() if curated is not None else None
        if not clips and drop is not None:  # curation dropped every window still needed
            message = f"{drop['stage']}: {drop['reason']} (score {drop['score']:.3g})"
            if drop["detail"]:
                message += f"; {drop['detail']}"
            filtered = _result(drop["reason"], message, 0, cached)
            records.append(record | filtered | {"status": curation.STATUS_FILTERED})
            continue
        if not clips:  # the video has fewer distinct windows than asked; those it has are cached
            records.append(record | _result("", "", 0, cached) | {"status": STATUS_CACHED})
            continue
        new_clips = sum(bin((mask >> (2 * ordinal)) & 3).count("1") for ordinal, _, _ in clips)
        for j, (ordinal, indices, frames) in enumerate(clips):
            for name, value in (
                ("row", number),
                ("key", key),
                ("video_id", video_id),
                ("caption", str(batch["caption"][i])),
                ("source", source),
                ("source_version", version),
                ("ordinal", ordinal),
                ("frame_indices", indices),
                ("fps", fps),
                ("pixels", frames),
                ("need_mask", (mask >> (2 * ordinal)) & 3),
                ("row_first", j == 0),
                ("row_clips", new_clips),
                ("row_cached", cached),
            ):
                rows[name].append(value)
            for name, value in (curated.columns[ordinal] if curated is not None else {}).items():
                curated_columns.setdefault(name, []).append(value)
    if records:
        _write_outcomes(records, spec.outcomes)
    if curation_records and spec.curation_dir is not None:
        curation.write_part(curation_records, spec.curation_dir, "decode")
    size = (spec.num_frames, spec.resolution, spec.resolution, 3)
    count = len(rows["key"])
    extra = {}
    if spec.buckets:
        extra = {
            "height": np.array([p.shape[1] for p in rows["pixels"]], dtype=np.int32),
            "width": np.array([p.shape[2] for p in rows["pixels"]], dtype=np.int32),
        }
    if spec.camera_motion != "none":
        extra |= {
            "camera_motion": np.array([spec.camera_motion] * count, dtype=object),
            "camera_strength": np.full(count, spec.camera_strength, np.float32),
        }
    added = {}
    if spec.curation.motion_score:
        added["motion_score"] = np.array(curated_columns.get("motion_score", []), np.float32)
    if spec.curation.text_score:
        added["text_score"] = np.array(curated_columns.get("text_score", []), np.float32)
    if spec.curation.dedup:
        hashes = curated_columns.get("phash", [])
        added["phash"] = np.array(hashes, np.uint64).reshape(-1, 3)
    return (
        extra
        | added
        | {
            "row": np.array(rows["row"], dtype=np.int64),
            "key": np.array(rows["key"], dtype=object),
            "video_id": np.array(rows["video_id"], dtype=object),
            "caption": np.array(rows["caption"], dtype=object),
            "source": np.array(rows["source"], dtype=object),
            "source_version": np.array(rows["source_version"], dtype=object),
            "ordinal": np.array(rows["ordinal"], dtype=np.int32),
            "frame_indices": np.array(rows["frame_indices"], dtype=np.int32).reshape(
                -1, spec.num_frames
            ),
            "fps": np.array(rows["fps"], dtype=np.float32),
            "pixels": stack_rows(rows["pixels"])
            if rows["pixels"]
            else np.zeros((0, *size), np.uint8),
            "need_mask": np.array(rows["need_mask"], dtype=np.int64),
            "row_first": np.array(rows["row_first"], dtype=bool),
            "row_clips": np.array(rows["row_clips"], dtype=np.int32),
            "row_cached": np.array(rows["row_cached"], dtype=np.int32),
        }
    )
