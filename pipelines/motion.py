"""Motion score of a clip window, as pure numpy: static and jittery windows are filtered.

The score is the mean absolute difference of consecutive frames of the clip (uint8, 0-255 units,
all channels), i.e. of frames ``stride`` apart in the source: near 0 for a still picture, a few
units for ordinary motion, tens for flashes or a cut the shot detector missed. A spike rule
(largest step over the median step) catches one flash or cut inside otherwise calm footage,
which the mean alone dilutes. No Ray here.
"""

from __future__ import annotations

import numpy as np

STATIC = "static"
JITTER = "jitter"
SPIKE = "motion_spike"


def frame_steps(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(frames, H, W, 3)`` -> float32 ``(frames - 1,)`` mean absolute step per pair."""
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0))
    return diff.reshape(len(frames) - 1, -1).mean(axis=1).astype(np.float32)


def motion_score(steps: np.ndarray) -> float:
    """The clip's motion score: the mean of its steps."""
    return float(np.mean(steps)) if len(steps) else 0.0


def spike_ratio(steps: np.ndarray) -> float:
    """Largest step over the median step (1 for even motion; large for a flash or a cut)."""
    if not len(steps):
        return 1.0
    return float(np.max(steps) / max(float(np.median(steps)), 1e-3))


def motion_verdict(
    steps: np.ndarray, min_motion: float, max_motion: float, max_spike: float
) -> tuple[str, float]:
    """``(reason, score)``: reason ``""`` keeps the window; ``static`` (score < ``min_motion``),
    ``jitter`` (score > ``max_motion``) or ``motion_spike`` (spike ratio > ``max_spike``) drop
    it, the score then being the one that decided. A threshold of 0 is off."""
    score = motion_score(steps)
    if min_motion > 0 and score < min_motion:
        return STATIC, score
    if max_motion > 0 and score > max_motion:
        return JITTER, score
    if max_spike > 0:
        ratio = spike_ratio(steps)
        if ratio > max_spike:
            return SPIKE, ratio
    return "", score
