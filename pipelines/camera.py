"""Camera motion by rule: a crop window moving over time turns any clip into a zoom, pan, tilt or
roll (the AnimateDiff paper's data for MotionLoRAs).

    box = crop_box("pan_left", 0.25, index=3, num_frames=16)   # where frame 3 is cut from
    frames = apply_camera_motion(frames, "zoom_in", 0.25)      # (F, R, R, 3) uint8 -> same shape

Pure functions: no I/O, the same clip and setting always give the same frames. Coordinates are
fractions of the (square, centre-cropped) frame: ``x`` to the right, ``y`` down, the centre at 0.
The window is cut out with bilinear sampling and scaled back to the frame size. Directions are
the camera's: ``pan_left`` moves the window (the camera) left, so the scene slides right on
screen; ``roll_clockwise`` turns the window clockwise, so the scene turns anticlockwise.

``strength`` (0 < s < 1) sets the amount:

- ``zoom_in``: the window shrinks from the whole frame to ``1 - s`` of its side (``zoom_out``: the
  reverse), around the centre;
- ``pan_*`` / ``tilt_*``: a window ``1 - s`` of the side travels across the whole free range,
  from one edge of the frame to the other;
- ``roll_*``: the window turns from 0 to ``s * 90`` degrees; its side is fixed at the largest that
  stays inside the frame at every angle of the trajectory.

Time runs linearly from the first frame (``t = 0``) to the last (``t = 1``).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import numpy as np

from animatediff.config.data import CameraMotion

CAMERA_MOTIONS: tuple[str, ...] = typing.get_args(CameraMotion)
MIRRORED_BY_FLIP = {"pan_left", "pan_right", "roll_clockwise", "roll_anticlockwise"}
"""Motions that a horizontal flip turns into their opposite."""
MAX_ROLL_DEGREES = 90.0
"""The roll at strength 1."""


@dataclass(frozen=True)
class CropBox:
    """Where one frame is cut from: a square window of side ``size`` centred at
    ``(center_x, center_y)`` and turned ``angle`` degrees clockwise (fractions of the frame)."""

    center_x: float
    center_y: float
    size: float
    angle: float


def _roll_size(max_degrees: float) -> float:
    """The largest square side that fits in the frame at every angle in ``[0, max_degrees]``: a
    square of side ``a`` turned by ``theta`` spans ``a * (cos theta + sin theta)``."""
    theta = math.radians(min(max_degrees, 45.0))  # cos + sin peaks at 45 degrees
    return 1.0 / (math.cos(theta) + math.sin(theta))


def crop_box(motion: str, strength: float, index: int, num_frames: int) -> CropBox:
    """The window of frame ``index`` of ``num_frames`` under ``motion`` at ``strength``."""
    if motion not in CAMERA_MOTIONS:
        raise ValueError(f"data.camera_motion: unknown {motion!r} (known: {CAMERA_MOTIONS})")
    if motion != "none" and not 0 < strength < 1:
        raise ValueError(f"data.camera_strength: must be in (0, 1), got {strength}")
    if not 0 <= index < num_frames:
        raise ValueError(f"frame {index} is outside a clip of {num_frames} frames")
    t = index / (num_frames - 1) if num_frames > 1 else 0.0
    s = strength
    travel = s / 2 * (1 - 2 * t)  # from +s/2 to -s/2: the free range of a (1 - s) window
    if motion == "none":
        return CropBox(0.0, 0.0, 1.0, 0.0)
    if motion == "zoom_in":
        return CropBox(0.0, 0.0, 1 - s * t, 0.0)
    if motion == "zoom_out":
        return CropBox(0.0, 0.0, 1 - s * (1 - t), 0.0)
    if motion == "pan_left":
        return CropBox(travel, 0.0, 1 - s, 0.0)
    if motion == "pan_right":
        return CropBox(-travel, 0.0, 1 - s, 0.0)
    if motion == "tilt_up":
        return CropBox(0.0, travel, 1 - s, 0.0)
    if motion == "tilt_down":
        return CropBox(0.0, -travel, 1 - s, 0.0)
    degrees = s * MAX_ROLL_DEGREES
    sign = 1.0 if motion == "roll_clockwise" else -1.0
    return CropBox(0.0, 0.0, _roll_size(degrees), sign * degrees * t)


def apply_camera_motion(frames: np.ndarray, motion: str, strength: float) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8 -> the same shape, frame ``i`` cut from
    ``crop_box(motion, strength, i, frames)`` (bilinear) and scaled back to ``size``."""
    import torch
    import torch.nn.functional as F

    if motion == "none":
        return frames
    count, height, width, _ = frames.shape
    if height != width:
        raise ValueError(f"camera motion needs square frames, got {height}x{width}")
    rows = []
    for index in range(count):
        box = crop_box(motion, strength, index, count)
        cos, sin = math.cos(math.radians(box.angle)), math.sin(math.radians(box.angle))
        # Output (u, v) in [-1, 1]^2 -> input centre + R(angle) @ (size * (u, v)); with y down,
        # [[cos, -sin], [sin, cos]] turns the window clockwise on screen.
        rows.append(
            [
                [box.size * cos, -box.size * sin, 2 * box.center_x],
                [box.size * sin, box.size * cos, 2 * box.center_y],
            ]
        )
    theta = torch.tensor(rows, dtype=torch.float32)
    # (frames, H, W, 3) uint8 -> (frames, 3, H, W) float
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
