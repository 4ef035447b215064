"""Shot boundaries: a content detector on low-resolution frames, as pure numpy.

A cut is where consecutive frames differ far more than motion makes them: the mean absolute
pixel difference of two consecutive thumbnails (0-255 units, all channels) at or above a
threshold, the rule of PySceneDetect's ``ContentDetector`` without its HSV conversion. The frames
come from a second, tiny decord reader over the whole video (``pipelines.decode``), so every cut
is found at its exact frame; clip windows are then drawn inside shots
(``pipelines.windows.shot_windows``). No Ray here.
"""

from __future__ import annotations

import numpy as np

THUMBNAIL_SIDE = 32
"""Short side of the frames the detector reads: cuts change the whole picture, so 32 pixels see
them, and the resize happens inside the decoder."""


def cut_scores(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(frames, H, W, C)`` -> float32 ``(frames - 1,)``: mean absolute difference of each
    frame and the one before it (0-255 units)."""
    if len(frames) < 2:
        return np.zeros((0,), np.float32)
    # int16 so that the difference of two uint8 frames does not wrap around.
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0))
    return diff.reshape(len(frames) - 1, -1).mean(axis=1).astype(np.float32)


def detect_cuts(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Cut scores ``(frames - 1,)`` -> int64 frame indices that start a new shot (index ``t``: the
    cut lies between frames ``t - 1`` and ``t``), ascending."""
    return (np.flatnonzero(np.asarray(scores) >= threshold) + 1).astype(np.int64)


def shots_from_cuts(cuts: np.ndarray, num_frames: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` frame ranges of the shots of a ``num_frames`` video."""
    bounds = [0, *[int(c) for c in cuts if 0 < c < num_frames], num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
