"""Which frames make a clip: AnimateDiff's window rule, as pure functions.

AnimateDiff's WebVid loader takes a window of ``(num_frames - 1) * stride + 1`` frames (the whole
video when it is shorter) at a uniformly random start and ``num_frames`` evenly spaced indices in
it (``np.linspace(start, start + window - 1, num_frames, dtype=int)``). Here the random starts
come from a generator seeded by ``(seed, source)``, so every worker draws the same windows, and
several clips per video use distinct starts drawn as a prefix of one permutation: asking for more
clips later keeps the earlier ones.
"""

from __future__ import annotations

import hashlib

import numpy as np


class TooFewFramesError(ValueError):
    """The video has fewer decodable frames than a clip needs."""


def window_length(num_video_frames: int, num_frames: int, stride: int) -> int:
    """Frames spanned by a clip: ``(num_frames - 1) * stride + 1``, capped by the video length."""
    return min(num_video_frames, (num_frames - 1) * stride + 1)


def window_indices(start: int, length: int, num_frames: int) -> np.ndarray:
    """``num_frames`` evenly spaced frame indices (int32) in ``[start, start + length)``."""
    return np.linspace(start, start + length - 1, num_frames, dtype=np.int64).astype(np.int32)


def source_rng(seed: int, source: str) -> np.random.Generator:
    """A generator that depends only on the seed and the source (not on the worker or order)."""
    digest = hashlib.blake2b(source.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def clip_windows(
    num_video_frames: int, num_frames: int, stride: int, clips: int, seed: int, source: str
) -> list[np.ndarray]:
    """Frame indices of up to ``clips`` distinct windows, ordinal 0 first.

    Raises ``TooFewFramesError`` when the video has fewer than ``num_frames`` frames."""
    if num_video_frames < num_frames:
        raise TooFewFramesError(f"{num_video_frames} decodable frames, a clip needs {num_frames}")
    length = window_length(num_video_frames, num_frames, stride)
    starts = source_rng(seed, source).permutation(num_video_frames - length + 1)[:clips]
    return [window_indices(int(start), length, num_frames) for start in starts]


class RangeError(ValueError):
    """A time range that holds no frame of the video, or reaches past its end."""


def segment_fragment(start: float, end: float) -> str:
    """``#t=start,end`` (a W3C media fragment, shortest exact decimals): appended to a ranges
    row's source, it makes each segment its own source for the window draw and the clip ids."""

    def text(value: float) -> str:
        return np.format_float_positional(value, trim="-")

    return f"#t={text(start)},{text(end)}"


def segment_frames(timestamps: np.ndarray, start: float, end: float) -> tuple[int, int]:
    """``(first frame, frame count)`` of the frames whose presentation time lies in
    ``[start, end)`` seconds; ``timestamps`` is ``(frames, 2)``: each frame's start and end time
    (decord's ``get_frame_timestamp``). Raises ``RangeError`` when the range starts at or past
    the video's end, ends more than one frame past it, or holds no frame."""
    duration = float(timestamps[-1, 1]) if len(timestamps) else 0.0
    frame = float(np.median(timestamps[:, 1] - timestamps[:, 0])) if len(timestamps) else 0.0
    if start >= duration:
        raise RangeError(f"range starts at {start:g} s, past the video's end at {duration:g} s")
    # One frame of slack: caption files round, and the last frame's end time is an estimate.
    if end > duration + frame + 1e-6:
        raise RangeError(f"range ends at {end:g} s, past the video's end at {duration:g} s")
    inside = np.flatnonzero((timestamps[:, 0] >= start) & (timestamps[:, 0] < end))
    if len(inside) == 0:
        raise RangeError(f"range {start:g}-{end:g} s holds no frame")
    return int(inside[0]), int(inside[-1] - inside[0] + 1)


def clip_id(
    fingerprint_hash: str, source: str, seed: int, ordinal: int, flipped: bool, version: str = ""
) -> str:
    """Stable 16-hex-digit clip id: the source and the identity of its content (``version``, see
    ``pipelines.identity``), its seeded window draw ``(seed, ordinal)``, the flip and the latent
    fingerprint.

    The window enters through the draw that defines it, not its frame indices, so the id is known
    before the video is opened and the cache can skip cached clips without downloading them. The
    seed is part of the identity: another ``data.seed`` draws other windows, which are other
    clips (added to the cache beside the first seed's)."""
    key = f"{fingerprint_hash}\x1f{source}\x1f{seed}\x1f{ordinal}\x1f{int(flipped)}"
    if version:  # the same key as before for callers that have no version
        key += f"\x1f{version}"
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def clip_id_to_int(ids: list[str] | np.ndarray) -> np.ndarray:
    """Clip ids as uint64 (a compact, sortable cache index)."""
    return np.array([int(i, 16) for i in ids], dtype=np.uint64)


def shot_windows(
    shots: list[tuple[int, int]],
    num_video_frames: int,
    num_frames: int,
    stride: int,
    clips: int,
    seed: int,
    source: str,
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """``clip_windows`` drawn inside shots: ``(windows, dropped shots)``.

    Every window spans ``window_length(num_video_frames, ...)`` frames inside one shot, so none
    crosses a cut; shots shorter than that are dropped. The draw is a prefix of one seeded
    permutation of every valid start in every kept shot, so a video that is one shot gets
    exactly ``clip_windows``'s windows. Raises ``TooFewFramesError`` like ``clip_windows``."""
    if num_video_frames < num_frames:
        raise TooFewFramesError(f"{num_video_frames} decodable frames, a clip needs {num_frames}")
    length = window_length(num_video_frames, num_frames, stride)
    kept = [(a, b) for a, b in shots if b - a >= length]
    dropped = [(a, b) for a, b in shots if b - a < length]
    starts = np.concatenate(
        [np.arange(a, b - length + 1) for a, b in kept] or [np.zeros((0,), np.int64)]
    )
    if not len(starts):
        return [], dropped
    order = source_rng(seed, source).permutation(len(starts))[:clips]
    return [window_indices(int(starts[i]), length, num_frames) for i in order], dropped
