"""Metrics of generated videos that need no pretrained network: where the subject is, where it
moves, how much the frames change, how alike they are, and what colours they use.

Pure functions on arrays: no Ray, MLflow or I/O here. A video is ``(frames, height, width, 3)``
uint8, as the sampler returns it, unless a docstring says otherwise.

Image coordinates throughout: ``x`` is the column index and grows to the right, ``y`` is the row
index and grows **downwards**, the origin is the centre of the top-left pixel. So "up" on screen
is decreasing ``y``, and a velocity ``(vx, vy) = (0, -2)`` is "up" at 2 pixels per frame.

    traj = trajectory(video, directions=4, min_speed=1.0)
    traj.direction, traj.displacement_per_frame      # ("left", 2.03)
    direction_accuracy([t.direction for t in trajs], expected_directions)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Compass labels counter-clockwise from "right", in screen terms (up = decreasing y).
DIRECTIONS_4: tuple[str, ...] = ("right", "up", "left", "down")
DIRECTIONS_8: tuple[str, ...] = (
    "right",
    "up-right",
    "up",
    "up-left",
    "left",
    "down-left",
    "down",
    "down-right",
)
STATIC = "static"  # the direction label of a clip that does not move measurably

DEFAULT_THRESHOLD = 0.15  # foreground: some channel differs from the background by > 15 % of 255


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video: expected (frames, height, width, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"video: expected uint8, got {video.dtype}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"video: empty video {video.shape}")
    return video


def background_colour(video: np.ndarray) -> np.ndarray:
    """Per-video background estimate ``(3,)`` float in [0, 255]: the per-channel median of the
    outermost ring of pixels over all frames.

    The rule assumes what the Moving Digits canvas (and most generated scenes) have: the subject
    stays off the border for most of the clip, so the border is mostly background, and the median
    ignores the frames where the subject touches it."""
    video = _check_video(video)
    border = np.concatenate(
        [
            video[:, 0, :, :],  # top row       (frames, width, 3)
            video[:, -1, :, :],  # bottom row
            video[:, :, 0, :],  # left column   (frames, height, 3)
            video[:, :, -1, :],  # right column
        ],
        axis=1,
    )
    return np.median(border.reshape(-1, 3), axis=0).astype(np.float64)


def foreground_coverage(frames: np.ndarray) -> np.ndarray:
    """Soft foreground ``(n, h, w)`` float32 in [0, 1] of each frame on its own: the colour
    distance to the frame's border median, scaled so the most distinct pixel is 1 (at least a
    quarter of the colour cube's scale). Independent of the two colours a style uses, so a digit
    reads the same white-on-black or yellow-on-blue."""
    frames = _check_video(frames).astype(np.float32) / 255.0
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1
    )  # (n, 2 * (h + w), 3)
    background = np.median(border, axis=1)[:, None, None, :]
    distance = np.linalg.norm(frames - background, axis=-1)
    scale = np.maximum(distance.reshape(len(frames), -1).max(axis=1), 0.25)[:, None, None]
    return np.clip(distance / scale, 0, 1)


def foreground_mask(
    video: np.ndarray,
    background: Sequence[float] | np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Foreground pixels ``(frames, height, width)`` bool.

    A pixel is foreground when some channel differs from the background colour by more than
    ``threshold`` in [0, 1] units (a max over channels, so a red digit on a green canvas of equal
    brightness still counts). background: an RGB colour ``(3,)`` in [0, 255]; ``None`` estimates it
    per video with ``background_colour`` (the median of the border pixels)."""
    video = _check_video(video)
    if background is None:
        background = background_colour(video)
    background = np.asarray(background, dtype=np.float64).reshape(3)
    distance = np.abs(video.astype(np.float64) - background).max(axis=-1) / 255.0
    return distance > threshold


def centroids(
    video: np.ndarray,
    mask: np.ndarray | None = None,
    min_pixels: int = 1,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Centre of mass ``(frames, 2)`` float64 ``(x, y)`` of each frame's foreground, in pixels.

    Every foreground pixel weighs the same (the mask, not the colour: the centre of a grey digit
    and of a white one agree). Frames with fewer than ``min_pixels`` foreground pixels are NaN.
    mask: ``(frames, height, width)`` bool; default ``foreground_mask(video, threshold=...)``."""
    if mask is None:
        mask = foreground_mask(video, threshold=threshold)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask: expected (frames, height, width), got {mask.shape}")
    counts = mask.sum(axis=(1, 2)).astype(np.float64)  # (frames,)
    ys, xs = np.arange(mask.shape[1]), np.arange(mask.shape[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask.sum(axis=1) * xs).sum(axis=1) / counts  # column sums (frames, width)
        y = (mask.sum(axis=2) * ys).sum(axis=1) / counts  # row sums (frames, height)
    result = np.stack([x, y], axis=1)
    result[counts < max(min_pixels, 1)] = np.nan
    return result


def scale_growth(
    video: np.ndarray, mask: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD
) -> float:
    """How fast the foreground grows: the least-squares slope of ``log(radius)`` per frame,
    with ``radius`` the RMS distance of a frame's foreground pixels from their centroid.

    0 for a subject of constant size (wherever it moves), ``> 0`` for a zoom in (``log 2 / 7``
    for a subject that doubles in size over 8 frames), ``< 0`` for a zoom out. Frames with fewer
    than two foreground pixels are left out; NaN when fewer than two frames remain."""
    if mask is None:
        mask = foreground_mask(video, threshold=threshold)
    mask = np.asarray(mask, dtype=bool)  # (frames, height, width)
    centres = centroids(video, mask=mask, min_pixels=2)  # (frames, 2) x, y
    ys, xs = np.indices(mask.shape[1:])
    radii = np.full(len(mask), np.nan)
    for index, (frame, (cx, cy)) in enumerate(zip(mask, centres)):
        if not np.isnan(cx):
            squared = (xs[frame] - cx) ** 2 + (ys[frame] - cy) ** 2
            radii[index] = math.sqrt(float(squared.mean()))
    valid = np.flatnonzero(radii > 0)
    if len(valid) < 2:
        return float("nan")
    return float(np.polyfit(valid.astype(np.float64), np.log(radii[valid]), 1)[0])


def direction_label(vx: float, vy: float, directions: int = 4) -> str:
    """Compass label of an image-coordinate velocity (``vy > 0`` is down).

    The angle ``atan2(-vy, vx)`` (counter-clockwise from "right", up positive) falls into one of
    ``directions`` equal sectors centred on the labels: 90 degrees wide for 4 directions, 45 for 8.
    A velocity exactly on a sector boundary goes to the next label counter-clockwise."""
    labels = {4: DIRECTIONS_4, 8: DIRECTIONS_8}.get(directions)
    if labels is None:
        raise ValueError(f"directions: must be 4 or 8, got {directions}")
    angle = math.atan2(-vy, vx)  # minus: image y grows downwards, compass "up" is positive
    sector = 2 * math.pi / directions
    return labels[math.floor((angle + sector / 2) / sector) % directions]


@dataclass(frozen=True)
class Trajectory:
    """Straight-line motion of a clip's foreground, fitted to its per-frame centroids."""

    velocity: tuple[float, float]
    """``(vx, vy)`` pixels per frame in image coordinates (``vy < 0`` is up); NaN if unmeasurable."""
    displacement_per_frame: float
    """Speed ``|velocity|`` in pixels per frame; NaN if fewer than two frames have foreground."""
    direction: str
    """A label of ``DIRECTIONS_4``/``DIRECTIONS_8``, or ``"static"`` when ``static``."""
    static: bool
    """No measurable motion: speed below the caller's ``min_speed``, or fewer than two frames with
    foreground (a claim that the subject moves must never pass on a clip we cannot measure)."""
    residual: float
    """RMS distance (pixels) of the centroids from the fitted line: large for jumps and jitter."""
    valid_frames: int
    """Frames whose centroid was found (the fit ignores the others)."""


def trajectory(
    video: np.ndarray,
    directions: int = 4,
    min_speed: float = 0.5,
    mask: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Trajectory:
    """Fit ``centroid(t) = start + velocity * t`` by least squares over the frames that have a
    centroid, with ``t`` the true frame index (so a missing frame leaves a gap, not a shift).

    min_speed: pixels per frame below which the clip is ``static`` (direction ``"static"``); set it
    from the rendered speed, e.g. half of it, to judge whether the motion is real."""
    points = centroids(video, mask=mask, threshold=threshold)  # (frames, 2)
    valid = ~np.isnan(points).any(axis=1)
    count = int(valid.sum())
    if count < 2:
        nan = float("nan")
        return Trajectory((nan, nan), nan, STATIC, True, nan, count)
    t = np.flatnonzero(valid).astype(np.float64)
    design = np.stack([np.ones_like(t), t], axis=1)  # (valid, 2): intercept, slope
    coef, *_ = np.linalg.lstsq(design, points[valid], rcond=None)  # (2, 2): rows start, velocity
    vx, vy = float(coef[1, 0]), float(coef[1, 1])
    fitted = design @ coef
    residual = float(np.sqrt(((points[valid] - fitted) ** 2).sum(axis=1).mean()))
    speed = math.hypot(vx, vy)
    static = speed < min_speed
    label = STATIC if static else direction_label(vx, vy, directions)
    return Trajectory((vx, vy), speed, label, static, residual, count)


def direction_accuracy(predicted_labels: Sequence[str], expected_labels: Sequence[str]) -> float:
    """Share in [0, 1] of clips whose predicted direction equals the caption's."""
    if len(predicted_labels) != len(expected_labels):
        raise ValueError(
            f"{len(predicted_labels)} predicted labels for {len(expected_labels)} expected ones"
        )
    if not expected_labels:
        raise ValueError("direction_accuracy: no labels")
    hits = sum(p == e for p, e in zip(predicted_labels, expected_labels))
    return hits / len(expected_labels)


def motion_magnitude(video: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames in [0, 1] units (0 for a static clip or a
    single frame). It measures change, not motion: flicker scores high too."""
    video = _check_video(video)
    if video.shape[0] < 2:
        return 0.0
    frames = video.astype(np.float32) / 255.0
    return float(np.abs(np.diff(frames, axis=0)).mean())


def frame_consistency(features: torch.Tensor | np.ndarray) -> float:
    """Mean cosine similarity of consecutive frames' features ``(frames, dim)``, in [-1, 1].

    AnimateDiff-style temporal consistency when the features are CLIP image embeddings. A frame
    whose features are all zero has similarity 0 with its neighbours. NaN for a single frame."""
    features = torch.as_tensor(features).double()
    if features.ndim != 2:
        raise ValueError(f"features: expected (frames, dim), got {tuple(features.shape)}")
    if features.shape[0] < 2:
        return float("nan")
    similarity = torch.nn.functional.cosine_similarity(features[:-1], features[1:], dim=1)
    return float(similarity.mean())


@dataclass(frozen=True)
class LabelAgreement:
    """How consistently a per-frame classifier labels one clip."""

    expected: float
    """Share of frames classified as the caption's label."""
    majority: float
    """Share of frames that agree with the clip's most frequent label (the subject stays the same
    thing, whatever the classifier calls it)."""
    majority_label: Hashable
    """The most frequent label; ties go to the one seen first."""


def label_agreement(
    labels_per_frame: Sequence[Hashable] | np.ndarray | torch.Tensor, expected_label: Hashable
) -> LabelAgreement:
    """Agreement of per-frame labels ``(frames,)`` with the caption's label and with each other."""
    labels = [x.item() if hasattr(x, "item") else x for x in labels_per_frame]
    if not labels:
        raise ValueError("label_agreement: no labels")
    label, count = Counter(labels).most_common(1)[0]  # stable: ties keep first-seen order
    expected = sum(x == expected_label for x in labels) / len(labels)
    return LabelAgreement(expected, count / len(labels), label)


@dataclass(frozen=True)
class ColourStatistics:
    """Mean colours of the subject and of the background, in [0, 1] RGB."""

    foreground: np.ndarray
    """``(3,)`` mean RGB of the foreground pixels (NaN if there are none)."""
    background: np.ndarray
    """``(3,)`` mean RGB of the other pixels (NaN if there are none)."""
    foreground_share: float
    """Share of pixels in the foreground."""

    def vector(self) -> np.ndarray:
        """``(6,)`` foreground then background RGB: the style statistic to compare."""
        return np.concatenate([self.foreground, self.background])


def colour_statistics(video: np.ndarray, mask: np.ndarray | None = None) -> ColourStatistics:
    """Mean foreground and background colours of a video, or of stills stacked as frames.

    mask: ``(frames, height, width)`` bool; default ``foreground_mask(video)``. Splitting by the
    mask is what makes this a style statistic: a personalised base that paints red digits on cream
    paper shows it in both means, whatever share of the frame the digit covers."""
    video = _check_video(video)
    if mask is None:
        mask = foreground_mask(video)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != video.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not match video {video.shape[:3]}")
    pixels = video.reshape(-1, 3).astype(np.float64) / 255.0
    flat = mask.reshape(-1)

    def mean(selected: np.ndarray) -> np.ndarray:
        return selected.mean(axis=0) if len(selected) else np.full(3, np.nan)

    return ColourStatistics(mean(pixels[flat]), mean(pixels[~flat]), float(flat.mean()))


def relative_difference(
    value: np.ndarray | Sequence[float], reference: np.ndarray | Sequence[float]
) -> float:
    """``||value - reference|| / ||reference||`` (Euclidean): 0.1 means "within 10 %".

    Not symmetric: ``reference`` is the base's own stills, ``value`` the generated videos. Compare
    ``ColourStatistics.vector()`` (foreground and background together) rather than one dark colour
    alone, whose small norm would inflate the ratio. inf if the reference is zero and value is not."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"value {value.shape} and reference {reference.shape} differ")
    difference = float(np.linalg.norm(value - reference))
    scale = float(np.linalg.norm(reference))
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale
