"""The motion module's eager speed levers, each alone and together, side by side in one run.

The issue names two levers that change the motion module's code rather than how it runs: fewer
reshapes and copies around the temporal attention, and a fused GEGLU. This script measures both
on the motion modules alone (the 2D layers are diffusers' code and untouched by either), one
module per level of a preset at that level's latent size, forward+backward:

1. Where the module's time goes: the PyTorch profiler's self CPU time by kind of op. The layout
   copies bound what fewer copies can gain, the GEGLU's elementwise ops what fusing it can gain.
2. The levers timed against the module as it is, interleaved (CPU time per step, median):
   - ``fused GEGLU``: one autograd function for ``value * gelu(gate)`` that saves only the
     projection and recomputes the GELU in backward (diffusers' and ours save the GELU's output
     as well);
   - ``residual on the view``: the output's ``(b h w) f c -> (b f) c h w`` layout change folded
     into the residual add (one pass instead of a copy and an add). At batch 1 the module's
     reshape is a view already (a batch of one merges with the frames), so this lever only
     changes something from batch 2 on.
   Each prints its ratio to the module as it is and how far its output and gradients are apart.

Multiply a ratio's gain by the motion modules' share of the step (``benchmarks.unet_step
--motion-share``) for its effect on the whole step.

    .venv/bin/python -m benchmarks.motion_levers                          # moderate, fp32
    .venv/bin/python -m benchmarks.motion_levers --preset sd15 --frames 16 --size 32 --dtype bf16
"""

from __future__ import annotations

import argparse
import collections
import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from animatediff.config import MotionModuleConfig
from animatediff.motion_module import GEGLU, MotionModule, TemporalTransformer3D
from benchmarks.unet_step import DTYPES, PRESETS, interleaved_medians

# The profiler's op names, by kind (self CPU time; everything else is "other"). Upper bounds for
# the two levers: copies include dtype casts, and products include every elementwise ``mul``.
KINDS = {
    "layout copies": ("aten::copy_", "aten::clone", "aten::contiguous"),
    "matmuls": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "GEGLU elementwise": ("aten::gelu", "aten::gelu_backward", "aten::mul"),
    "norms": ("layer_norm", "group_norm"),
}


class _FusedGEGLU(torch.autograd.Function):
    """``value * gelu(gate)`` of a ``(..., 2 * inner)`` projection; saves only the projection."""

    @staticmethod
    def forward(ctx, projected: torch.Tensor) -> torch.Tensor:
        value, gate = projected.chunk(2, dim=-1)
        ctx.save_for_backward(projected)
        return F.gelu(gate).mul_(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (projected,) = ctx.saved_tensors
        value, gate = projected.chunk(2, dim=-1)
        grad_value = F.gelu(gate).mul_(grad)
        grad_gate = torch.ops.aten.gelu_backward(grad * value, gate)
        return torch.cat([grad_value, grad_gate], dim=-1)


def _fused_geglu_forward(self: GEGLU, x: torch.Tensor) -> torch.Tensor:
    return _FusedGEGLU.apply(self.proj(x))


def _residual_on_view_forward(
    self: TemporalTransformer3D, hidden: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """``TemporalTransformer3D.forward`` (per-frame norm) with the output's layout change done by
    the residual add."""
    batch_frames, channels, height, width = hidden.shape
    batch = batch_frames // num_frames
    normed = self.norm(hidden).view(batch, num_frames, channels, height, width)
    x = normed.permute(0, 3, 4, 1, 2).reshape(batch * height * width, num_frames, channels)
    x = self.proj_in(x)
    for block in self.transformer_blocks:
        x = block(x)
    x = self.proj_out(x).view(batch, height, width, num_frames, channels)
    # The contiguous residual first: the add's output takes its (b f) c h w layout, in one pass
    # (``view`` would fail otherwise).
    out = hidden.view(batch, num_frames, channels, height, width) + x.permute(0, 3, 4, 1, 2)
    return out.view(batch_frames, channels, height, width)


LEVERS = {
    "fused GEGLU": [(GEGLU, _fused_geglu_forward)],
    "residual on the view": [(TemporalTransformer3D, _residual_on_view_forward)],
}


@contextlib.contextmanager
def levers(names: tuple[str, ...]) -> Iterator[None]:
    """The named levers patched into the classes while the block runs."""
    patches = [patch for name in names for patch in LEVERS[name]]
    originals = [(cls, cls.forward) for cls, _ in patches]
    for cls, forward in patches:
        cls.forward = forward
    try:
        yield
    finally:
        for cls, forward in originals:
            cls.forward = forward


def build(args: argparse.Namespace) -> list[tuple[MotionModule, torch.Tensor]]:
    """One random motion module per level (``proj_out`` random too, so every op does work) and
    its input ``(batch * frames, channels, side, side)``: level ``i`` at ``size / 2**i``, as in
    the down blocks of SD 1.5 (each but the last halves the side)."""
    widths = PRESETS[args.preset][0]  # block_out_channels
    cfg = MotionModuleConfig(max_frames=max(32, args.frames), zero_init_out=False)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    out = []
    for level, channels in enumerate(widths):
        side = args.size // 2**level
        module = MotionModule(channels, cfg).to(dtype)
        hidden = torch.randn(args.batch * args.frames, channels, side, side, dtype=dtype)
        out.append((module, hidden.requires_grad_(True)))
    return out


def step(modules: list[tuple[MotionModule, torch.Tensor]], frames: int) -> list[torch.Tensor]:
    """Forward+backward through every level; returns the outputs and gradients (for checks)."""
    results = []
    for module, hidden in modules:
        out = module(hidden, frames)
        out.float().square().mean().backward()
        results += [out.detach(), hidden.grad, *(p.grad for p in module.parameters())]
        hidden.grad = None
        module.zero_grad(set_to_none=True)
    return results


def profile_kinds(modules, frames: int) -> dict[str, float]:
    """Share of the self CPU time of one step by kind of op."""
    from torch.profiler import ProfilerActivity, profile

    step(modules, frames)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(modules, frames)
    times: collections.Counter[str] = collections.Counter()
    for event in prof.key_averages():
        kind = next(
            (k for k, names in KINDS.items() if any(n in event.key for n in names)), "other"
        )
        times[kind] += event.self_cpu_time_total
    total = sum(times.values())
    return {kind: times[kind] / total for kind in [*KINDS, "other"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="moderate")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="latent side at the first level")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modules = build(args)
    print(
        f"motion modules of {args.preset} {PRESETS[args.preset][0]}, {args.frames} "
        f"frames, batch {args.batch}, latents {args.size}, {args.dtype}, {args.threads} thread(s)"
    )

    shares = profile_kinds(modules, args.frames)
    print("self CPU time of one forward+backward, by kind of op:")
    for kind, share in shares.items():
        print(f"  {kind:<20}{share * 100:>6.1f} %")

    variants = {"as is": (), **{name: (name,) for name in LEVERS}, "both": tuple(LEVERS)}
    reference = step(modules, args.frames)
    diffs = {}
    for name, names in variants.items():  # warm-up, and each one's distance to the module as is
        with levers(names):
            results = step(modules, args.frames)
        diffs[name] = max(
            (a.float() - b.float()).abs().max().item() for a, b in zip(results, reference)
        )

    def with_levers(names: tuple[str, ...]):
        def run() -> None:
            with levers(names):
                step(modules, args.frames)

        return run

    median = interleaved_medians(
        {name: with_levers(names) for name, names in variants.items()},
        args.repeats,
        "cpu",
        rotate=True,
    )
    print(f"forward+backward, CPU seconds (median of {args.repeats}, interleaved, rotated):")
    for name in variants:
        print(
            f"  {name:<22}{median[name]:>8.3f} s  {median[name] / median['as is']:.3f}x as is"
            f"  max |diff| of outputs and gradients {diffs[name]:.1e}"
        )


if __name__ == "__main__":
    main()
