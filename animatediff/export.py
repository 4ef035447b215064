"""Encode generated frames ``(frames, height, width, 3)`` uint8 as GIF, MP4 or WebP.

    data = export_video(frames, "mp4", fps=8)       # bytes (serving responses)
    path = save_video(frames, "outputs/demo.gif")  # a file; the format comes from the suffix

GIF and WebP are animated images written by Pillow (loop forever); MP4 is H.264 ``yuv420p`` through
the ffmpeg binary that ``imageio-ffmpeg`` ships, which browsers play. ``yuv420p`` halves chroma
resolution, so odd sizes are padded by one replicated row/column rather than resized.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

VideoFormat = Literal["gif", "mp4", "webp"]
FORMATS: tuple[str, ...] = ("gif", "mp4", "webp")
MIME_TYPES = {"gif": "image/gif", "mp4": "video/mp4", "webp": "image/webp"}


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected (frames, height, width, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8, got {frames.dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames: empty video {frames.shape}")
    return np.ascontiguousarray(frames)


def _check_fps(fps: float) -> None:
    if not fps > 0:
        raise ValueError(f"fps: must be > 0, got {fps}")


def _animated_image(frames: np.ndarray, fmt: str, fps: float) -> bytes:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    options: dict = {"duration": round(1000 / fps), "loop": 0}
    if fmt == "webp":
        options.update(quality=90, method=4)
    buffer = io.BytesIO()
    # Pillow merges identical consecutive GIF frames into one longer frame: timing is unchanged.
    images[0].save(buffer, format=fmt.upper(), save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so height and width are even, as ``yuv420p`` requires."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def _mp4(frames: np.ndarray, fps: float) -> bytes:
    import imageio_ffmpeg

    frames = _pad_even(frames)
    height, width = frames.shape[1:3]
    # ffmpeg must seek back to write the moov atom (faststart), so it needs a real file.
    handle, name = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        writer = imageio_ffmpeg.write_frames(
            name,
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,  # never resize: sizes are already even
            ffmpeg_log_level="error",
            output_params=["-crf", "18", "-movflags", "+faststart"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def export_video(frames: np.ndarray, fmt: VideoFormat = "gif", fps: float = 8) -> bytes:
    """Encode ``frames`` ``(frames, height, width, 3)`` uint8 as ``gif``, ``mp4`` or ``webp`` bytes."""
    frames = _check_frames(frames)
    _check_fps(fps)
    fmt = fmt.lower().lstrip(".")  # type: ignore[assignment]
    if fmt == "mp4":
        return _mp4(frames, fps)
    if fmt in ("gif", "webp"):
        return _animated_image(frames, fmt, fps)
    raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")


def save_video(frames: np.ndarray, path: str | Path, fps: float = 8) -> Path:
    """Write ``frames`` to ``path``; the format is the suffix (``.gif``, ``.mp4``, ``.webp``)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"{path}: the suffix must be one of .gif, .mp4, .webp")
    data = export_video(frames, fmt, fps)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
