"""Moving Digits data: real handwritten digits, moved in straight lines, written as videos.

Frames are ``(frames, canvas, canvas, 3)`` uint8; positions are the digit's top-left corner in
pixels, x to the right and y downwards (so ``up`` is -y, as in ``animatediff.metrics``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animatediff.config import ReproduceConfig

VELOCITY = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}
"""Unit steps per frame, (dx, dy) with y downwards."""


@dataclass(frozen=True)
class Digits:
    """Upscaled digit images ``(n, size, size)`` float32 in [0, 1] and their labels ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray


def digit_split(cfg: ReproduceConfig) -> tuple[Digits, Digits]:
    """``(training, held-out)`` digits: the UCI digits (scikit-learn's copy, no download) split
    by image, upscaled bilinearly from 8x8 to ``digit_size``."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    size = cfg.digit_size
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images[:, 0].clamp(0, 1).numpy()
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    held = int(round(len(images) * cfg.heldout_fraction))
    pick = lambda idx: Digits(images[idx], data.target[idx].astype(np.int64))  # noqa: E731
    return pick(np.sort(order[held:])), pick(np.sort(order[:held]))


def caption(label: int, direction: str | None) -> str:
    """``the digit 3`` or ``the digit 3 moving left``: as a person would write it."""
    return f"the digit {label}" if direction is None else f"the digit {label} moving {direction}"


def paint(alpha: np.ndarray, background: tuple, foreground: tuple) -> np.ndarray:
    """Coverage ``(..., h, w)`` in [0, 1] -> RGB ``(..., h, w, 3)`` uint8 in a two-colour style."""
    bg, fg = np.asarray(background, np.float32), np.asarray(foreground, np.float32)
    rgb = bg + (fg - bg) * alpha[..., None]
    return np.round(rgb * 255).astype(np.uint8)


def trajectory_start(direction: str | None, rng: np.random.Generator, cfg: ReproduceConfig):
    """A uniformly drawn top-left corner from which the whole clip stays on the canvas."""
    room = cfg.canvas - cfg.digit_size
    travel = cfg.speed * (cfg.frames - 1)
    dx, dy = VELOCITY[direction] if direction else (0, 0)

    def axis(step: int) -> int:
        low, high = (travel, room) if step < 0 else (0, room - travel) if step > 0 else (0, room)
        return int(rng.integers(low, high + 1))

    return axis(dx), axis(dy)


def render(
    image: np.ndarray,
    start: tuple[int, int],
    direction: str | None,
    frames: int,
    cfg: ReproduceConfig,
) -> np.ndarray:
    """Coverage ``(frames, canvas, canvas)`` of ``image`` moving ``cfg.speed`` px per frame."""
    dx, dy = VELOCITY[direction] if direction else (0, 0)
    size, clip = cfg.digit_size, np.zeros((frames, cfg.canvas, cfg.canvas), np.float32)
    for t in range(frames):
        x, y = start[0] + dx * cfg.speed * t, start[1] + dy * cfg.speed * t
        clip[t, y : y + size, x : x + size] = image
    return clip


@dataclass
class Item:
    """One video to write: its frames and caption, and what it shows (for the record)."""

    frames: np.ndarray
    caption: str
    label: int
    direction: str | None


def clips(
    digits: Digits,
    count: int,
    rng: np.random.Generator,
    cfg: ReproduceConfig,
    style: tuple[tuple, tuple],
) -> list[Item]:
    """``count`` clips of random digits, directions and starts, in one style."""
    items = []
    for _ in range(count):
        index = int(rng.integers(len(digits.labels)))
        direction = cfg.directions[int(rng.integers(len(cfg.directions)))]
        start = trajectory_start(direction, rng, cfg)
        alpha = render(digits.images[index], start, direction, cfg.frames, cfg)
        label = int(digits.labels[index])
        items.append(Item(paint(alpha, *style), caption(label, direction), label, direction))
    return items


def stills(
    digits: Digits,
    count: int,
    rng: np.random.Generator,
    cfg: ReproduceConfig,
    style: tuple[tuple, tuple],
    captions: str = "digit",
    position: str = "anywhere",
) -> list[Item]:
    """``count`` single frames of random digits at random places. ``captions="clip"`` draws a
    direction too and captions the still as a frame of that clip would be; with
    ``position="clip_start"`` the still is that clip's first frame (its place shows the
    direction), with ``anywhere`` any place on the canvas."""
    items = []
    for _ in range(count):
        index = int(rng.integers(len(digits.labels)))
        direction = cfg.directions[int(rng.integers(len(cfg.directions)))]
        start = trajectory_start(direction if position == "clip_start" else None, rng, cfg)
        alpha = render(digits.images[index], start, None, 1, cfg)
        label = int(digits.labels[index])
        text = caption(label, direction if captions == "clip" else None)
        items.append(Item(paint(alpha, *style), text, label, None))
    return items


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """An MP4 that decodes to ``frames`` within a level or two: H.264 lossless (``crf 0``) at
    4:4:4 chroma, so thin coloured strokes keep their colour."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: the frames of an MP4 that ``write_video`` wrote."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def collection_table(directory: Path) -> Path:
    """The ``video,caption`` CSV of the collection that ``write_collection`` writes there."""
    return directory / "videos.csv"


def write_collection(directory: Path, items: list[Item], fps: int = 8) -> Path:
    """The videos and a ``video,caption`` CSV (``data.format=csv``); returns the CSV's path."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, item in enumerate(items):
        name = f"{index:05d}.mp4"
        write_video(directory / name, item.frames, fps)
        rows.append((name, item.caption))
    table = collection_table(directory)
    with open(table, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["video", "caption"])
        writer.writerows(rows)
    return table
