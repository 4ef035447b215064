"""Forward+backward of our VideoUNet vs diffusers' UNetMotionModel on the same config and weights.

Both get the same random 2D UNet and the same motion weights (diffusers' cross-frame GroupNorm, so
the two compute the same function: the script checks the outputs agree), 2D weights frozen in both.
Prints, with and without gradient checkpointing: median step time and peak memory of one step
(on CPU: the peak of live tensor allocations during the step, from the PyTorch profiler's memory
events; on CUDA: ``torch.cuda.max_memory_allocated`` above the pre-step level), and ours/diffusers
ratios (target <= 1.0). Timed steps alternate between the two models so machine load hits both alike.

The checkpointing modes: ``off``; ``all`` (ours recomputes every group, motion modules included);
``2d-only`` (ours recomputes the 2D layers only); ``matmuls`` (``all`` with torch's selective
checkpointing: matmul, convolution and attention outputs are kept, the rest recomputed). Diffusers
runs its own checkpointing in every mode but ``off``.

``--compile`` adds ours with ``model.motion.compile_motion_modules`` (regional
``torch.compile``), without checkpointing, timed side by side with eager ours and diffusers; the
first step, which compiles (or loads inductor's cache), is reported apart.

``--motion-share`` adds our step with every motion module the identity, side by side: the motion
modules' share of the step, and the lowest ours/diffusers ratio that speeding them up could give
(the 2D layers are diffusers' own code in both models).

``--budget`` adds the 10 GiB accounting of one training step on one accelerator (bf16 base,
ZeRO-2 with the optimizer offloaded, cached latents and text embeddings), term by term, with the
measured peak of each mode. ``--attention-frames 16 32 64`` adds the peak memory of one
SD 1.5-width motion module (the first level's) at those lengths, with SDPA's math kernel and with
torch's default (a memory-efficient kernel, flash attention on CPU).

    .venv/bin/python -m benchmarks.unet_step                  # moderate CPU config
    .venv/bin/python -m benchmarks.unet_step --preset sd15 --dtype bf16 --frames 16 --size 32 \
        --repeats 1 --threads 2 --budget --attention-frames 16 32 64       # the issue's table
    .venv/bin/python -m benchmarks.unet_step --preset sd15 --device cuda --frames 16 --size 64
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

# mode: (ours recomputes the motion modules too (None: no checkpointing), what a checkpointed
# group keeps, diffusers checkpoints)
MODES = {
    "off": (None, "nothing", False),
    "all": (True, "nothing", True),
    "2d-only": (False, "nothing", True),
    "matmuls": (True, "matmuls", True),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

PRESETS = {
    # (block_out_channels, cross_attention_dim, attention_head_dim)
    "tiny": ((32, 64), 32, 8),
    "moderate": ((64, 128, 256, 256), 128, 8),
    "sd15": ((320, 640, 1280, 1280), 768, 8),
}


def build_models(args: argparse.Namespace):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from animatediff.config import MotionModuleConfig
    from animatediff.motion_module import to_diffusers_key
    from animatediff.unet import VideoUNet

    channels, cross_dim, head_dim = PRESETS[args.preset]
    levels = len(channels)
    groups = min(32, channels[0] // 2)
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(
        sample_size=args.size,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cross_dim,
        attention_head_dim=head_dim,
        norm_num_groups=groups,
    )
    cfg = MotionModuleConfig(norm_groups=groups, num_heads=8, cross_frame_norm=True)
    ours = VideoUNet.from_unet2d(unet2d, cfg)
    with torch.no_grad():  # non-zero motion weights, so every module's backward does real work
        for p in ours.motion_modules.parameters():
            p.normal_(0, 0.02)
    adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=2,
        motion_norm_num_groups=groups,
        motion_num_attention_heads=8,
        use_motion_mid_block=True,
    )
    converted = {to_diffusers_key(k): v for k, v in ours.motion_modules.state_dict().items()}
    converted.pop(None)
    adapter.load_state_dict(converted, strict=True)
    theirs = UNetMotionModel.from_unet2d(unet2d, adapter)
    theirs.freeze_unet2d_params()
    dtype = DTYPES[args.dtype]
    return ours.to(args.device, dtype), theirs.to(args.device, dtype), cross_dim


def make_step(model, diffusers_model: bool, sample, timestep, text, target):
    frames = sample.shape[2]
    text_in = text.repeat_interleave(frames, dim=0) if diffusers_model else text

    def step() -> torch.Tensor:
        out = model(sample, timestep, text_in)
        out = out.sample if diffusers_model else out
        F.mse_loss(out.float(), target).backward()
        for p in model.parameters():
            p.grad = None
        return out.detach()

    return step


def timed(step, device: str) -> float:
    """Seconds of one step: process CPU time on CPU (robust to other processes sharing the cores;
    equals wall time per thread), wall time on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    step()
    return time.process_time() - start


def interleaved_medians(
    steps: dict, repeats: int, device: str, rotate: bool = False
) -> dict[str, float]:
    """Median ``timed`` seconds of each step over ``repeats`` rounds, one step of each per round,
    so machine load hits them alike. ``rotate``: each round starts with the next step, so none
    always runs right after the same one (the allocator's and caches' state carry over)."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        first = repeat % len(names) if rotate else 0
        for name in names[first:] + names[:first]:
            times[name].append(timed(steps[name], device))
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(step, device: str) -> float:
    """Peak bytes allocated during one step above the level before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="moderate")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model and mode")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 1 keeps CPU "
        "time meaningful when other processes share the cores",
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--budget", action="store_true", help="print the 10 GiB accounting")
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with compiled motion modules"
    )
    parser.add_argument(
        "--motion-share",
        action="store_true",
        help="also time ours with every motion module the identity (the 2D UNet's share)",
    )
    parser.add_argument("--attention-frames", type=int, nargs="*", default=[], help="e.g. 16 32 64")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, theirs, cross_dim = build_models(args)
    generator = torch.Generator().manual_seed(1)
    shape = (args.batch, 4, args.frames, args.size, args.size)
    dtype = next(ours.parameters()).dtype
    sample = torch.randn(shape, generator=generator).to(args.device, dtype)
    text = torch.randn(args.batch, 77, cross_dim, generator=generator).to(args.device, dtype)
    timestep = torch.randint(0, 1000, (args.batch,), generator=generator).to(args.device)
    target = torch.randn(shape, generator=generator).to(args.device)
    steps = {
        "ours": make_step(ours, False, sample, timestep, text, target),
        "diffusers": make_step(theirs, True, sample, timestep, text, target),
    }

    print(
        f"preset={args.preset} batch={args.batch} frames={args.frames} latent={args.size}x{args.size} "
        f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"motion params={sum(p.numel() for p in ours.trainable_parameters()):,}"
    )
    rows = []
    for mode in args.modes:
        ours_motion, saves, theirs_on = MODES[mode]
        if ours_motion is None:
            ours.disable_gradient_checkpointing()
        else:
            ours.enable_gradient_checkpointing(motion_modules=ours_motion, saves=saves)
        if theirs_on:
            theirs.enable_gradient_checkpointing()
        else:
            theirs.disable_gradient_checkpointing()
        outputs = {name: step() for name, step in steps.items()}  # warm-up, and the same function?
        diff = (outputs["ours"].float() - outputs["diffusers"].float()).abs().max().item()
        median = interleaved_medians(steps, args.repeats, args.device)
        measured = {
            name: (median[name], peak_memory(step, args.device)) for name, step in steps.items()
        }
        rows.append((mode, measured, diff))

    unit = "wall s" if args.device.startswith("cuda") else "cpu s"
    print(
        f"{'checkpointing':<15}{'ours ' + unit:>12}{'diffusers':>11}{'time ratio':>12}"
        f"{'ours MiB':>11}{'diffusers':>11}{'mem ratio':>11}{'max |diff|':>12}"
    )
    for mode, measured, diff in rows:
        (ours_s, ours_b), (theirs_s, theirs_b) = measured["ours"], measured["diffusers"]
        print(
            f"{mode:<15}{ours_s:>12.3f}{theirs_s:>11.3f}{ours_s / theirs_s:>12.3f}"
            f"{ours_b / 2**20:>11.1f}{theirs_b / 2**20:>11.1f}{ours_b / theirs_b:>11.3f}{diff:>12.2e}"
        )
    print(
        "ratios are ours/diffusers (target <= 1.0). 'all': ours recomputes every group incl. the "
        "motion modules; '2d-only': ours recomputes the 2D layers only; 'matmuls': 'all' keeping "
        "matmul/conv/attention outputs; diffusers' checkpointing never recomputes the motion "
        "modules outside its mid block."
    )
    if args.compile:
        print_compiled(ours, steps, args, (sample, timestep, text, target))
    if args.motion_share:
        print_motion_share(ours, steps, args, (sample, timestep, text, target))
    if args.budget:
        print_budget(ours, args, {mode: measured["ours"][1] for mode, measured, _ in rows})
    if args.attention_frames:
        print_attention_memory(args)


def print_compiled(ours, steps: dict, args: argparse.Namespace, inputs: tuple) -> None:
    """``model.motion.compile_motion_modules`` without checkpointing: the first step (when
    inductor compiles, or loads its cache) apart, then timed steps side by side with eager ours
    and diffusers."""
    import copy

    ours.disable_gradient_checkpointing()
    compiled = copy.deepcopy(ours)
    compiled.compile_motion_modules()
    steps = {**steps, "compiled": make_step(compiled, False, *inputs)}
    start = time.perf_counter()
    out = steps["compiled"]()
    first = time.perf_counter() - start
    diff = (out.float() - steps["ours"]().float()).abs().max().item()
    median = interleaved_medians(steps, args.repeats, args.device)
    print(
        f"\ncompiled motion modules, no checkpointing: first step {first:.1f} s wall (compiles, "
        f"or loads inductor's cache); then ours compiled {median['compiled']:.3f}, ours eager "
        f"{median['ours']:.3f}, diffusers {median['diffusers']:.3f}; compiled/eager "
        f"{median['compiled'] / median['ours']:.3f}, compiled/diffusers "
        f"{median['compiled'] / median['diffusers']:.3f} (target <= 0.85); max |diff| {diff:.2e}"
    )


def print_motion_share(ours, steps: dict, args: argparse.Namespace, inputs: tuple) -> None:
    """What the motion modules cost in our step, and so how fast ours could be at most: the step
    timed side by side with the same step through the 2D UNet alone (every motion module the
    identity; the input then requires grad, so backward still runs through the whole 2D UNet).
    The 2D layers are diffusers' own modules in both models, so ``2D alone / diffusers`` bounds
    ours/diffusers from below, whatever the motion modules gain."""
    from animatediff.motion_module import MotionModule

    ours.disable_gradient_checkpointing()
    sample, timestep, text, target = inputs
    through_2d = sample.detach().clone().requires_grad_(True)
    bypassed = [m for m in ours.modules() if isinstance(m, MotionModule)]

    def step_2d_only() -> None:
        for module in bypassed:
            module.forward = lambda hidden, num_frames: hidden
        try:
            make_step(ours, False, through_2d, timestep, text, target)()
        finally:
            for module in bypassed:
                del module.forward
        through_2d.grad = None

    steps = {"ours": steps["ours"], "2d-only": step_2d_only, "diffusers": steps["diffusers"]}
    step_2d_only()  # warm-up
    median = interleaved_medians(steps, args.repeats, args.device)
    share = 1 - median["2d-only"] / median["ours"]
    print(
        f"\nmotion modules' share, no checkpointing: ours {median['ours']:.3f}, the 2D UNet alone "
        f"{median['2d-only']:.3f}, diffusers {median['diffusers']:.3f}; motion modules "
        f"{share * 100:.1f}% of our step; 2D alone/diffusers "
        f"{median['2d-only'] / median['diffusers']:.3f} (the best ours/diffusers could reach)"
    )


def print_budget(ours, args: argparse.Namespace, peaks: dict[str, float]) -> None:
    """The accelerator memory of one training step, term by term, for each measured mode.

    What the trainer holds on the device with ``data.cache_text_embeddings`` (the text encoder
    stays on the CPU, ``TrainingModel.text_encoder_on_device``), cached latents (the VAE never
    leaves the CPU) and ZeRO-2 with ``train.offload_optimizer`` (fp32 master weights and Adam
    moments live in CPU memory): the weights at ``--dtype``, plus the step's measured peak of live
    tensors (activations and the motion modules' gradients), plus DeepSpeed's gradient bucket."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from animatediff.config import TrainConfig

    element = torch.finfo(next(ours.parameters()).dtype).bits // 8
    trainable = sum(p.numel() for p in ours.trainable_parameters())
    frozen = sum(p.numel() for p in ours.parameters()) - trainable
    with torch.device("meta"):  # SD 1.5's text encoder (CLIP ViT-L/14), sized without weights
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072))
    text_encoder = sum(p.numel() for p in clip.parameters())
    bucket = min(TrainConfig().zero_bucket_size, trainable)  # elements; never more than exist
    gib = 2**30
    fixed = [
        (f"frozen 2D UNet weights ({frozen / 1e6:.0f}M, {args.dtype})", frozen * element),
        (f"motion module weights ({trainable / 1e6:.0f}M, {args.dtype})", trainable * element),
        ("fp32 master weights + Adam moments (12 B/param): offloaded to the CPU", 0),
        (f"text encoder ({text_encoder / 1e6:.0f}M fp32): stays on the CPU, embeddings cached", 0),
        ("VAE: never on the device, latents cached", 0),
        (f"ZeRO-2 gradient bucket ({bucket / 1e6:.0f}M elements, {args.dtype})", bucket * element),
    ]
    print(
        f"\nmemory budget of one training step on one accelerator (target <= 10 GiB), {args.dtype}:"
    )
    for name, size in fixed:
        print(f"  {name:<76}{size / gib:>8.2f} GiB")
    base = sum(size for _, size in fixed)
    for mode, peak in peaks.items():
        total = base + peak
        print(
            f"  + measured step peak, checkpointing {mode!r:<12} {peak / gib:>6.2f} GiB "
            f"= {total / gib:>6.2f} GiB ({'meets' if total <= 10 * gib else 'misses'} 10 GiB)"
        )
    print(
        f"  not counted: the CUDA context and allocator fragmentation; the text encoder on the "
        f"device would add {text_encoder * 4 / gib:.2f} GiB, the optimizer without offload "
        f"{trainable * 12 / gib:.2f} GiB"
    )


def module_step(module, hidden: torch.Tensor, frames: int) -> None:
    """Forward+backward of ``module`` on ``hidden`` ``(frames, channels, height, width)``."""
    module(hidden, frames).float().square().mean().backward()
    hidden.grad = None
    module.zero_grad(set_to_none=True)


def print_attention_memory(args: argparse.Namespace) -> None:
    """Peak memory of forward+backward through one motion module at SD 1.5's first level (320
    channels, ``--size`` latents), SDPA's math kernel against torch's default choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from animatediff.config import MotionModuleConfig
    from animatediff.motion_module import MotionModule

    dtype = DTYPES[args.dtype]
    cfg = MotionModuleConfig(norm_groups=32, num_heads=8, max_frames=max(args.attention_frames))
    torch.manual_seed(0)
    module = MotionModule(320, cfg).to(args.device, dtype)
    default = SDPBackend.FLASH_ATTENTION if args.device == "cpu" else SDPBackend.EFFICIENT_ATTENTION
    print(
        f"\none motion module (320 channels, latent {args.size}x{args.size}, {args.dtype}), "
        "peak MiB of forward+backward:"
    )
    print(f"{'frames':>8}{'math':>12}{default.name.lower():>22}{'ratio':>9}")
    for frames in args.attention_frames:
        hidden = torch.randn(frames, 320, args.size, args.size, device=args.device, dtype=dtype)
        step = functools.partial(module_step, module, hidden.requires_grad_(True), frames)
        peaks = {}
        for backend in (SDPBackend.MATH, default):
            with sdpa_kernel(backend):
                step()  # warm-up
                peaks[backend] = peak_memory(step, args.device)
        math, fast = peaks[SDPBackend.MATH], peaks[default]
        print(f"{frames:>8}{math / 2**20:>12.1f}{fast / 2**20:>22.1f}{fast / math:>9.3f}")


if __name__ == "__main__":
    main()
