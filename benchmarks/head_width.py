"""The Moving Digits base's attention heads: SD 1.5's 8 heads against heads of
``reproduce.unet_head_channels`` channels, in the preset's image and motion training steps.

    .venv/bin/python -m benchmarks.head_width                  # the preset, 1 thread per worker
    .venv/bin/python -m benchmarks.head_width --threads 2 --repeats 60

Both bases get the same random weights (a head count changes no parameter's shape) and the
project's own wrappers: ``FrameUNet`` with every parameter trainable (the image stage, one frame
per clip) and ``VideoUNet`` with fresh motion modules and the 2D layers frozen (the motion
stage). A step is the forward pass, the L2 loss against the noise, the backward pass and AdamW,
at the preset's per-worker batch. After a warm-up, steps alternate between the two widths
(``unet_step.interleaved_medians``: process CPU time, the first of each round rotating), so the
machine's drift hits both alike. Prints each stage's median step time and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from animatediff.config import Config, load_config
from benchmarks.unet_step import interleaved_medians
from experiments.moving_digits.run import with_overrides

WARMUP_STEPS = 3


def base_unet(cfg: Config, head_channels: int | None) -> torch.nn.Module:
    """The chain's random base UNet (seeded: the same weights for every width) with heads
    ``head_channels`` wide (None: 8 heads)."""
    from experiments.moving_digits.models import build_unet

    return build_unet(dataclasses.replace(cfg.reproduce, unet_head_channels=head_channels))


def head_counts(unet2d: torch.nn.Module) -> list[int]:
    """Heads of each of the UNet's attention layers, in module order."""
    from diffusers.models.attention_processor import Attention

    return [module.heads for module in unet2d.modules() if isinstance(module, Attention)]


def training_step(cfg: Config, unet2d: torch.nn.Module) -> Callable[[], None]:
    """One step of the stage ``cfg`` trains (``train.stage``: image or motion) with ``unet2d`` as
    the base, on random inputs at the stage's per-worker batch."""
    from animatediff.unet import FrameUNet, VideoUNet
    from experiments.moving_digits.models import latent_size

    rc = cfg.reproduce
    size = latent_size(rc)
    if cfg.train.stage == "image":
        unet: torch.nn.Module = FrameUNet(unet2d.requires_grad_(True).train())
        frames = 1
    else:
        unet = VideoUNet.from_unet2d(unet2d, cfg.model.motion)
        frames = rc.frames
    batch = cfg.train.batch_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, frames, size, size, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    context = torch.randn(batch, 77, rc.text_width, generator=generator)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        F.mse_loss(unet(latents, timesteps, context), noise).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/moving_digits.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's CPUs)")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per width")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the preset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    wide = cfg.reproduce.unet_head_channels
    if wide is None:
        parser.error("the preset sets no reproduce.unet_head_channels to compare with 8 heads")
    narrow_heads, wide_heads = head_counts(base_unet(cfg, None)), head_counts(base_unet(cfg, wide))
    print(f"heads per attention layer: 8 heads {narrow_heads}, {wide}-channel {wide_heads}\n")
    print(f"| stage | 8 heads, ms | {wide}-channel heads, ms | ratio |\n|---|---:|---:|---:|")
    stages = {  # as the chain trains the base and the motion module
        "image": with_overrides(cfg, ["train.stage=image", *cfg.reproduce.base_train]),
        "motion": with_overrides(cfg, cfg.reproduce.motion_train),
    }
    for stage, stage_cfg in stages.items():
        steps = {
            "8 heads": training_step(stage_cfg, base_unet(cfg, None)),
            "wide": training_step(stage_cfg, base_unet(cfg, wide)),
        }
        for step in steps.values():  # AdamW's state and the allocator's pools
            for _ in range(WARMUP_STEPS):
                step()
        medians = interleaved_medians(steps, args.repeats, "cpu", rotate=True)
        narrow, wide_s = medians["8 heads"], medians["wide"]
        print(f"| {stage} | {narrow * 1e3:.1f} | {wide_s * 1e3:.1f} | {wide_s / narrow:.2f}x |")


if __name__ == "__main__":
    main()
