"""Diffusion math against diffusers' DDPMScheduler, and the training-side sampling helpers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from animatediff.config import DiffusionConfig
from animatediff.diffusion import (
    add_noise,
    alphas_cumprod,
    diffusion_loss,
    drop_captions,
    make_betas,
    sample_latents,
    sample_timesteps,
    training_target,
    velocity,
)


def _reference(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_betas_match_diffusers(schedule: str) -> None:
    cfg = DiffusionConfig(beta_schedule=schedule)
    betas = make_betas(cfg)
    reference = _reference(cfg)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    torch.testing.assert_close(betas, reference.betas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        alphas_cumprod(betas), reference.alphas_cumprod.double(), atol=1e-6, rtol=0
    )


def test_schedules_differ() -> None:
    linear = make_betas(DiffusionConfig(beta_schedule="linear"))
    scaled = make_betas(DiffusionConfig(beta_schedule="scaled_linear"))
    assert (linear - scaled).abs().max() > 1e-4


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_add_noise_and_velocity_match_diffusers_on_video_latents(schedule: str) -> None:
    cfg = DiffusionConfig(beta_schedule=schedule)
    reference = _reference(cfg)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 5, 6, 7, generator=generator)  # (batch, C, frames, H, W)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    ac = alphas_cumprod(make_betas(cfg))

    noisy = add_noise(latents, noise, timesteps, ac)
    assert noisy.shape == latents.shape and noisy.dtype == latents.dtype
    # diffusers keeps its schedule in float32 (1 - 0.99915 loses digits near t=0); ours is float64.
    # In float32 both agree to float32 rounding ...
    torch.testing.assert_close(
        noisy, reference.add_noise(latents, noise, timesteps), atol=1e-5, rtol=0
    )
    # ... and with diffusers' formulas run in float64 on the same schedule, to 1e-6.
    reference.alphas_cumprod = ac.clone()
    latents64, noise64 = latents.double(), noise.double()
    torch.testing.assert_close(
        add_noise(latents64, noise64, timesteps, ac),
        reference.add_noise(latents64, noise64, timesteps),
        atol=1e-6,
        rtol=0,
    )
    torch.testing.assert_close(
        velocity(latents64, noise64, timesteps, ac),
        reference.get_velocity(latents64, noise64, timesteps),
        atol=1e-6,
        rtol=0,
    )
    # Each sample gets its own timestep: sample 0 (t=0) is almost clean, sample 2 almost noise.
    assert (noisy[0] - latents[0]).abs().max() < 0.3
    assert (noisy[2] - noise[2]).abs().max() < 0.3


def test_training_target() -> None:
    ac = alphas_cumprod(make_betas(DiffusionConfig()))
    latents, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(latents, noise, t, ac, "epsilon"), noise)
    torch.testing.assert_close(
        training_target(latents, noise, t, ac, "v_prediction"), velocity(latents, noise, t, ac)
    )
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(latents, noise, t, ac, "sample")


def test_add_noise_rejects_bad_timesteps() -> None:
    ac = alphas_cumprod(make_betas(DiffusionConfig()))
    latents = torch.zeros(2, 4, 1, 2, 2)
    with pytest.raises(ValueError, match="one per sample"):
        add_noise(latents, latents, torch.tensor([1]), ac)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        add_noise(latents, latents, torch.tensor([1, 1000]), ac)


def test_loss_is_fp32_mse() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
    target = torch.zeros(2, 2, dtype=torch.bfloat16)
    loss = diffusion_loss(pred, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    with pytest.raises(ValueError, match="differ"):
        diffusion_loss(pred, torch.zeros(4))


def test_drop_captions_rate_and_determinism() -> None:
    captions = [f"caption {i}" for i in range(4000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(1))
    empty = [i for i, c in enumerate(dropped) if c == ""]
    assert 0.08 < len(empty) / len(captions) < 0.12
    assert all(dropped[i] == captions[i] for i in range(len(captions)) if i not in set(empty))
    assert dropped == drop_captions(captions, 0.1, torch.Generator().manual_seed(1))
    assert drop_captions(captions[:5], 0.0) == captions[:5]
    assert drop_captions(captions[:5], 1.0) == [""] * 5
    with pytest.raises(ValueError, match="probability"):
        drop_captions(captions, 1.5)


def test_sample_latents_from_posterior() -> None:
    mean = torch.randn(2, 4, 3, 4, 4).half()
    std = torch.full(mean.shape, 0.5).half()
    z = sample_latents(mean, std, torch.Generator().manual_seed(0), scaling_factor=0.18215)
    assert z.dtype == torch.float32 and z.shape == mean.shape
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, (mean.float() + 0.5 * eps) * 0.18215)
    # Zero std gives the scaled mean exactly; the scaling factor is applied.
    z0 = sample_latents(mean, torch.zeros_like(std), torch.Generator().manual_seed(0), 0.18215)
    torch.testing.assert_close(z0, mean.float() * 0.18215)
    with pytest.raises(ValueError, match="differ"):
        sample_latents(mean, std[:1], None, 1.0)


def test_sample_timesteps() -> None:
    steps = sample_timesteps(5000, 1000, torch.Generator().manual_seed(0))
    assert steps.shape == (5000,) and steps.dtype == torch.int64
    assert steps.min() >= 0 and steps.max() <= 999 and steps.unique().numel() > 900
    again = sample_timesteps(5000, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(steps, again)
