"""Aspect-ratio buckets (``data.buckets``): which frame size a video is cut to.

    index = nearest_bucket(640, 360, ((256, 256), (224, 288), (288, 224)))   # -> 1 (landscape)
    width, height = cover_shape(640, 360, (224, 288))                          # -> (512, 288)
    frames = center_crop_to(frames, (224, 288))             # (F, 288, 512, 3) -> (F, 224, 288, 3)

Pure functions, no I/O. Buckets are ``(height, width)`` pairs, as ``sample.height/width`` are;
video sizes are ``(width, height)``, as decoders report them. A video goes to the bucket whose
aspect ratio is nearest its own in log ratio (so 2:1 and 1:2 are equally far from 1:1), is resized
to the smallest size that covers the bucket (aspect kept) and centre-cropped to it: the least of
the frame is cut away and nothing is stretched.

Latents of different buckets have different shapes, so they never share a shard (a Ray tensor
column holds one shape) nor a training batch (``trainer.data.bucket_for_step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Bucket = tuple[int, int]
"""``(height, width)`` in pixels."""


def log_ratio(width: int, height: int) -> float:
    """``log(width / height)``: 0 for square, > 0 landscape, < 0 portrait."""
    return math.log(width / height)


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> int:
    """The index of the bucket whose aspect ratio is nearest ``width / height`` in log ratio.

    Ties (a ratio exactly between two buckets, or buckets of equal ratio) go to the earlier
    bucket in ``buckets``: the choice depends on nothing but its arguments."""
    if not buckets:
        raise ValueError("data.buckets: no bucket to choose from")
    if width <= 0 or height <= 0:
        raise ValueError(f"video size must be positive, got {width}x{height}")
    own = log_ratio(width, height)
    distances = [abs(own - log_ratio(w, h)) for h, w in buckets]
    # Rounded so that ratios equal on paper (e.g. 3:2 and 6:4) tie exactly despite float error.
    rounded = [round(d, 12) for d in distances]
    return rounded.index(min(rounded))


def cover_shape(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """``(width, height)`` to resize a ``width x height`` video to: aspect kept, the smallest size
    with both sides at least the bucket's (one side equals it; rounding never makes the other
    fall short)."""
    out_height, out_width = bucket
    scale = max(out_width / width, out_height / height)
    return max(out_width, round(width * scale)), max(out_height, round(height * scale))


def center_crop_to(frames: np.ndarray, bucket: Bucket) -> np.ndarray:
    """``(frames, H, W, 3)`` -> ``(frames, height, width, 3)`` of ``bucket`` around the centre
    (``H >= height`` and ``W >= width``)."""
    out_height, out_width = bucket
    height, width = frames.shape[1:3]
    if height < out_height or width < out_width:
        raise ValueError(f"frames {height}x{width} are smaller than the bucket {bucket}")
    top, left = (height - out_height) // 2, (width - out_width) // 2
    return frames[:, top : top + out_height, left : left + out_width]
