"""Text-in-frame score: how much of a clip looks like an overlay (captions, logos, watermarks).

Overlaid text is sharp and does not move while the footage under it does: the score is the
fraction of pixels that are strong edges (grey gradient above ``EDGE``) in every frame of the
clip and whose grey level hardly changes over the clip (spread below ``STILL``). A fully static
clip scores its whole edge area, so pair it with the motion filter. Pure numpy, no Ray.
"""

from __future__ import annotations

import numpy as np

OVERLAY = "text_overlay"
EDGE = 48.0
"""Grey gradient (|dx| + |dy|, 0-255 units) above which a pixel is an edge."""
STILL = 6.0
"""Grey range over the clip (0-255 units) below which a pixel counts as constant."""


def overlay_score(frames: np.ndarray) -> float:
    """uint8 ``(frames, H, W, 3)`` -> fraction in [0, 1] of constant strong-edge pixels."""
    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    # (frames, H, W): forward differences, cropped to a common (H-1, W-1) grid.
    gradient = np.abs(np.diff(grey, axis=2))[:, :-1, :] + np.abs(np.diff(grey, axis=1))[:, :, :-1]
    edges = (gradient > EDGE).all(axis=0)
    still = (grey.max(axis=0) - grey.min(axis=0))[:-1, :-1] < STILL
    return float((edges & still).mean())
