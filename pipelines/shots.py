"""Shot boundaries: a content detector on low-resolution frames, as pure numpy.

A cut is where consecutive frames differ far more than motion makes them: the mean absolute
pixel difference of two consecutive thumbnails (0-255 units, all channels) at or above a
threshold, the rule of PySceneDetect's ``ContentDetector`` without its HSV conversion. Every
frame is scored, so every cut is found at its exact frame; clip windows are then drawn inside
shots (``pipelines.windows.shot_windows``). No Ray here.

The thumbnails come from the clip decode itself (``pipelines.decode.shot_pass``): one PyAV pass
decodes the video's frames once, scales each to a thumbnail and holds the decoded frames, and
the windows' frames are converted from them once the shots are known. The codec decodes every
frame in any case (a cut can be anywhere), so what shot detection adds to decoding a window is
the codec's work on the frames after the window and the thumbnails' scaling, which point-
sampling keeps cheap (``THUMBNAIL_SAMPLES``). Measured on the sample clips (1280x720 and 480x270
H.264, one 16-frame window at stride 4 a video, one core, CPU time; ``benchmarks/preprocess.py
--sections curation --clips 64``): shot detection cost 115 % of the window's decode when the
thumbnails were a second decode of the whole video, 32 % in the shared pass, most of it the
codec's work after the window (a quarter of the codec time of a video whose window ends at a
random place) and the rest the thumbnails (about 0.1 ms a frame).
"""

from __future__ import annotations

import numpy as np

THUMBNAIL_SIDE = 32
"""Short side of the frames the detector reads: cuts change the whole picture, so 32 pixels see
them."""

THUMBNAIL_SAMPLES = 2
"""A frame is point-sampled to this many times the thumbnail a side (a 64-pixel short side)
before the bilinear scale to ``THUMBNAIL_SIDE``, so each thumbnail pixel averages 2 x 2 samples:
the scaling then costs the same at any frame size (a 1280x720 frame scaled directly costs 0.65
ms, a sixth of its decode). Frames no larger than that are scaled directly."""


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
