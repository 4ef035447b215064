"""Diffusion math of AnimateDiff training, as pure functions on tensors.

Video latents are ``(batch, channels, frames, height, width)``; per-sample quantities such as
timesteps are ``(batch,)`` and broadcast over the other axes. The schedule follows diffusers'
``DDPMScheduler`` exactly (the tests compare against it), so a model trained here samples with any
diffusers scheduler built from the same ``DiffusionConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from animatediff.config import DiffusionConfig


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """Noise schedule ``(num_train_timesteps,)`` float64.

    ``linear``: evenly spaced betas (AnimateDiff's training setup). ``scaled_linear``: evenly spaced
    square roots, squared (SD 1.5's and diffusers' definition)."""
    steps = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, steps, dtype=torch.float64)
    if cfg.beta_schedule == "scaled_linear":
        root = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, steps, dtype=torch.float64)
        return root**2
    raise ValueError(f"model.diffusion.beta_schedule: unknown schedule {cfg.beta_schedule!r}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``prod_{s<=t} (1 - beta_s)``: ``(T,)`` float64, the signal fraction kept at timestep t."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def _coefficients(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(a_t)`` and ``sqrt(1 - a_t)`` shaped ``(batch, 1, ..., 1)`` to broadcast over ``like``.

    Gathered in float64 on the CPU (some accelerators lack float64), then cast to ``like``."""
    timesteps = torch.as_tensor(timesteps).reshape(-1).long().cpu()
    if timesteps.shape[0] != like.shape[0]:
        raise ValueError(
            f"timesteps: expected one per sample ({like.shape[0]}), got {timesteps.shape[0]}"
        )
    if timesteps.min() < 0 or timesteps.max() >= alphas_cumprod.shape[0]:
        raise ValueError(f"timesteps: must lie in [0, {alphas_cumprod.shape[0]})")
    alpha = alphas_cumprod.detach().cpu().to(torch.float64)[timesteps]
    shape = (-1,) + (1,) * (like.ndim - 1)
    signal = alpha.sqrt().to(like.device, like.dtype).reshape(shape)
    noise = (1.0 - alpha).sqrt().to(like.device, like.dtype).reshape(shape)
    return signal, noise


def add_noise(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """Forward process ``q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.

    latents, noise: ``(batch, channels, frames, height, width)`` (any rank works; the coefficient
    broadcasts over all but the first axis); timesteps: ``(batch,)`` ints; returns latents' shape."""
    signal, sigma = _coefficients(alphas_cumprod, timesteps, latents)
    return signal * latents + sigma * noise


def velocity(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """v-prediction target ``sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (diffusers' ``get_velocity``)."""
    signal, sigma = _coefficients(alphas_cumprod, timesteps, latents)
    return signal * noise - sigma * latents


def training_target(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """What the UNet should output for ``add_noise(latents, noise, timesteps)``; latents' shape."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(latents, noise, timesteps, alphas_cumprod)
    raise ValueError(
        f"model.diffusion.prediction_type: must be 'epsilon' or 'v_prediction', "
        f"got {prediction_type!r}"
    )


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, computed in fp32 (bf16/fp16 sums lose precision)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def drop_captions(
    captions: Sequence[str], probability: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by the empty prompt with ``probability`` (classifier-free guidance
    learns the unconditional model from these)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {probability}")
    draws = torch.rand(len(captions), generator=generator)
    return ["" if drop else caption for caption, drop in zip(captions, (draws < probability))]


def sample_latents(
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator | None,
    scaling_factor: float,
) -> torch.Tensor:
    """Draw ``z ~ N(mean, std^2)`` from a stored VAE posterior and scale it for the UNet.

    mean, std: ``(batch, channels, frames, height, width)`` (often float16 from the shards);
    returns float32 of the same shape, times ``vae.config.scaling_factor`` (0.18215 for SD 1.5)."""
    if mean.shape != std.shape:
        raise ValueError(f"latent mean {tuple(mean.shape)} and std {tuple(std.shape)} differ")
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32)
    return (mean.float() + std.float() * eps.to(mean.device)) * scaling_factor


def sample_timesteps(
    batch: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Uniform training timesteps ``(batch,)`` int64 in ``[0, num_train_timesteps)``."""
    gen_device = generator.device if generator is not None else "cpu"
    steps = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=gen_device)
    return steps.to(device)
