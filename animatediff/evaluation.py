"""Evaluation maths: the held-out denoising loss at fixed timesteps, its frame-order check, and the
scores of one generated video. No Ray, MLflow or I/O here (``pipelines.evaluate`` runs them).

Why an order check: a falling loss is not evidence of motion. A module can lower the loss with
per-frame corrections and order-free pooling across frames (averaging a static background) while
being blind to the order of the frames. ``order_sensitivity`` is the held-out loss with the frames
of every clip permuted minus the loss in order: about 0 at initialisation and for a module that
learned no motion, clearly positive for one that did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from animatediff.config import Config
from animatediff.diffusion import add_noise, diffusion_loss, training_target
from animatediff.features import FeatureExtractor
from animatediff.metrics import (
    STATIC,
    colour_statistics,
    frame_consistency,
    label_agreement,
    motion_magnitude,
    trajectory,
)
from animatediff.training import Batch, TrainingModel

STYLE_COLUMNS = tuple(f"{part}_{c}" for part in ("foreground", "background") for c in "rgb")
"""``score_video``'s style columns, in ``ColourStatistics.vector`` order: mean subject, then canvas,
colours."""


def fixed_timesteps(count: int, num_train_timesteps: int) -> list[int]:
    """``count`` evenly spaced timesteps, the centres of equal bins of ``[0, T)``."""
    return [int((index + 0.5) * num_train_timesteps / count) for index in range(count)]


def frame_permutation(num_frames: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the frame axis that moves every frame (a derangement), so that a
    module blind to order and one that reads order cannot score the same by chance."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(num_frames, generator=generator)
        if num_frames < 2 or bool((order != torch.arange(num_frames)).all()):
            return order


@torch.no_grad()
def held_out_loss(
    model: TrainingModel,
    batches: Sequence[Batch],
    cfg: Config,
    timesteps: Sequence[int],
    seed: int,
    frame_order: torch.Tensor | None = None,
) -> dict[int, float]:
    """Mean denoising loss over ``batches`` at each of ``timesteps``: ``{t: loss}``.

    Deterministic: the posterior mean as the latent, noise drawn per batch from ``seed``, the
    real captions (no dropout). ``frame_order`` reorders the frames of every clip, each frame
    with its own noise, so a model that treats frames independently (or pools them without
    regard to order) scores exactly the same."""
    unet = model.unet
    device = next(unet.parameters()).device
    losses = {t: 0.0 for t in timesteps}
    clips = 0
    for index, batch in enumerate(batches):
        latents = batch.latent_mean.float() * model.scaling_factor
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        noise = torch.randn(latents.shape, generator=generator)
        if frame_order is not None:  # each frame keeps its noise: only the order changes
            latents, noise = latents[:, :, frame_order], noise[:, :, frame_order]
        context = model.conditioner(batch.captions, batch.text_embedding).to(device)
        for t in timesteps:
            steps = torch.full((len(batch),), t, dtype=torch.long)
            noisy = add_noise(latents, noise, steps, model.alphas_cumprod)
            target = training_target(
                latents, noise, steps, model.alphas_cumprod, cfg.model.diffusion.prediction_type
            )
            pred = unet(noisy.to(device), steps.to(device), context)
            losses[t] += float(diffusion_loss(pred, target.to(device))) * len(batch)
        clips += len(batch)
    return {t: total / clips for t, total in losses.items()}


def score_video(
    video: np.ndarray,
    extractor: FeatureExtractor,
    expect: Mapping[str, Any] | None = None,
    prompt: str | None = None,
    directions: int = 4,
    min_speed: float = 0.5,
) -> dict[str, Any]:
    """The metrics of one generated video ``(frames, height, width, 3)`` uint8.

    Always: ``frame_consistency`` (mean cosine of consecutive frames' features),
    ``motion_magnitude`` (mean absolute frame difference), ``displacement_per_frame`` (pixels,
    from the foreground's fitted trajectory), ``trajectory_residual`` (pixels, RMS distance of the
    foreground's centroids from that straight line: jumps and jitter, which a per-frame label
    misses), ``direction`` and ``static``. With an ``expect`` ``direction``:
    ``direction_correct``. With a classifying extractor: ``label_agreement`` (share
    of frames agreeing with the clip's majority class) and, with an ``expect`` ``label``,
    ``label_share`` (share of frames of that class). With a text scorer and ``prompt``:
    ``text_alignment`` (mean CLIP score). The style: ``foreground_r/g/b`` and
    ``background_r/g/b`` (mean colours in [0, 1])."""
    expect = expect or {}
    path = trajectory(video, directions=directions, min_speed=min_speed)
    row: dict[str, Any] = {
        "frame_consistency": frame_consistency(extractor(video)),
        "motion_magnitude": motion_magnitude(video),
        "displacement_per_frame": path.displacement_per_frame,
        "trajectory_residual": path.residual,
        "direction": path.direction,
        "static": path.static,
    }
    if "direction" in expect:
        row["direction_correct"] = path.direction == expect["direction"]
    if hasattr(extractor, "classify"):
        labels = extractor.classify(video)
        agreement = label_agreement(labels, int(expect.get("label", -1)))
        row["label_agreement"] = agreement.majority
        row["majority_label"] = agreement.majority_label
        if "label" in expect:
            row["label_share"] = agreement.expected
    if hasattr(extractor, "text_similarity") and prompt:
        row["text_alignment"] = float(extractor.text_similarity(video, prompt).mean())
    colours = colour_statistics(video).vector()  # the style: mean subject and canvas colours
    row |= {name: float(v) for name, v in zip(STYLE_COLUMNS, colours, strict=True)}
    return row


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means of every numeric or boolean metric over the videos (NaNs skipped), plus
    ``direction_accuracy`` (the mean of ``direction_correct``) and ``static_share``."""
    summary: dict[str, float] = {}
    names = [k for k in rows[0] if k not in ("direction", "majority_label")] if rows else []
    for name in names:
        values = [float(row[name]) for row in rows if name in row and row[name] is not None]
        values = [v for v in values if not np.isnan(v)]
        if values:
            summary[name] = float(np.mean(values))
    if "direction_correct" in summary:
        summary["direction_accuracy"] = summary.pop("direction_correct")
    if "static" in summary:
        summary["static_share"] = summary.pop("static")
    summary["videos"] = float(len(rows))
    summary["moving_share"] = float(np.mean([row["direction"] != STATIC for row in rows]))
    return summary
