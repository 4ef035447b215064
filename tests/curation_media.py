"""Test footage for curation: scenes with hard cuts, static, flashing and noisy clips (numpy),
and a writer of any frame array to an MPEG-4 file (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 64
PALETTES = [(200, 40, 40), (40, 200, 60), (50, 60, 210), (220, 200, 40)]


def scene(palette: int, frames: int, start: int = 0) -> np.ndarray:
    """uint8 ``(frames, SIDE, SIDE, 3)``: vertical stripes in one palette moving 1 pixel a frame
    (motion inside the shot, the whole picture changes at a cut)."""
    colour = np.array(PALETTES[palette % len(PALETTES)], np.int16)
    x = np.arange(SIDE)
    out = np.empty((frames, SIDE, SIDE, 3), np.uint8)
    for i in range(frames):
        stripes = ((x + start + i) // 4) % 2  # period 8 pixels
        row = colour[None, :] + (stripes[:, None] * 50 - 25)
        out[i] = np.clip(row, 0, 255).astype(np.uint8)[None, :, :]
    return out


def static(frames: int) -> np.ndarray:
    """One still picture repeated."""
    return np.repeat(scene(0, 1), frames, axis=0)


def noise(frames: int, seed: int = 0) -> np.ndarray:
    """Independent random pictures: the largest motion there is."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, SIDE, SIDE, 3), dtype=np.uint8)


def write_frames(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """uint8 ``(frames, H, W, 3)`` -> an MPEG-4 file at a high bit rate (little coding noise)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
