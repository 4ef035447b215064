"""Long-video cost of sliding-window sampling: time and peak memory at 128 vs 32 frames, and the
speed-up of running the windows of a step in batches instead of one after another.

    .venv/bin/python -m benchmarks.long_video                     # tiny base, CPU, 64x64, 10 steps
    .venv/bin/python -m benchmarks.long_video --device cuda --height 256 --width 256 --steps 25
    .venv/bin/python -m benchmarks.long_video --compare batching --context-batch 0  # all windows

Targets (issue 2): time(128) / time(32) <= 4.5 (linear growth is 4) and peak memory(128) <=
1.5 x peak memory(32), at the default ``sample.context_batch_size``. Batching (issue 13): the long
run with ``sample.context_batch_size=1`` (one UNet call per window) against ``--context-batch``
windows per call (0: all windows of a step in one call); the ratio of their times is printed.
Each run is its own fresh process (so one run's peak cannot hide the other's), after a warm-up
generation, runs interleaved over ``--repeats`` rounds; the best time counts (process CPU time is
printed too: on a shared CPU, wall time moves with other people's load).
Peak memory is the sampling run's peak of tensor memory above what was live before it (models,
caches): the torch profiler's allocator records on CPU, ``torch.cuda.max_memory_allocated`` on
CUDA. The processes' peak RSS (models and libraries included) is printed as well.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_tensor_peak(run: Callable[[], object]) -> int:
    """Peak bytes of CPU tensor memory allocated by ``run`` above what was live before it.

    From the torch profiler's allocator records: each op's own allocations net of its frees, and
    the frees recorded between ops, in time order. Unlike RSS this is blind to memory that malloc
    keeps cached from earlier runs, so two runs compare fairly."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    current = peak = 0
    for _, usage in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()):
        current += usage
        peak = max(peak, current)
    return peak


def _worker(args: argparse.Namespace) -> dict:
    """Time one sampling run, then measure its memory in a second, identical run."""
    import gc

    import torch

    from animatediff.config import load_config
    from animatediff.sampling import TextToVideo

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(
        args.config,
        [
            f"sample.context_frames={args.context}",
            f"sample.context_overlap={args.overlap}",
            f"sample.decode_chunk_frames={args.decode_chunk}",
            *args.overrides,
        ],
    )
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    t2v = TextToVideo(cfg, device=args.device, dtype=dtype)
    settings = dict(num_inference_steps=args.steps, height=args.height, width=args.width, seed=0)
    cuda = t2v.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def sample() -> None:
        frames = t2v("a corgi running on the beach", num_frames=args.frames, **settings)
        sync()
        assert frames.shape[0] == args.frames

    t2v("warm-up", num_frames=args.context, **settings)  # one window: allocator, kernels, caches
    gc.collect()
    sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    sample()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_rss = _peak_rss_mib()  # before the profiler adds its own records
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        sample()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _cpu_tensor_peak(sample)
    return {
        "frames": args.frames,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_delta_mib": peak / 2**20,
        "peak_total_mib": peak_rss,
        "memory": "cuda allocated" if cuda else "cpu tensors (torch profiler)",
    }


def _run_child(args: argparse.Namespace, frames: int, extra: tuple[str, ...] = ()) -> dict:
    command = [sys.executable, "-m", "benchmarks.long_video", "--worker", "--frames", str(frames)]
    for name in (
        "config",
        "steps",
        "height",
        "width",
        "context",
        "overlap",
        "decode_chunk",
        "device",
        "dtype",
        "threads",
    ):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    command += [*args.overrides, *extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker for {frames} frames failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--short", type=int, default=32, help="frames of the reference run")
    parser.add_argument("--long", type=int, default=128, help="frames of the long run")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--context", type=int, default=16, help="sample.context_frames")
    parser.add_argument("--overlap", type=int, default=4, help="sample.context_overlap")
    parser.add_argument("--decode-chunk", type=int, default=8, help="sample.decode_chunk_frames")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best time")
    parser.add_argument(
        "--compare",
        default="both",
        choices=["frames", "batching", "both"],
        help="frames: --long vs --short frames; batching: --long frames with one window per "
        "UNet call vs --context-batch windows per call",
    )
    parser.add_argument(
        "--context-batch", type=int, default=0, help="windows per UNet call; 0: all of a step"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. model.motion.num_heads=4"
    )
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args)))
        return

    if args.compare in ("frames", "both"):
        compare_frames(args)
    if args.compare in ("batching", "both"):
        compare_batching(args)


def _report(label: str, result: dict) -> None:
    print(
        f"{label}  {result['seconds']:7.2f} s (cpu {result['cpu_seconds']:7.2f} s)  "
        f"peak +{result['peak_delta_mib']:8.1f} MiB  (total {result['peak_total_mib']:.0f} MiB)",
        flush=True,
    )


def compare_batching(args: argparse.Namespace) -> None:
    """The long run with one window per UNet call against ``--context-batch`` per call."""
    from animatediff.sampling import context_windows

    windows = len(context_windows(args.long, args.context, args.overlap))
    batch = args.context_batch or windows
    sizes = {"sequential": 1, "batched": batch}
    runs: dict[str, list[dict]] = {name: [] for name in sizes}
    for round_index in range(args.repeats):
        for name, size in sizes.items():
            result = _run_child(args, args.long, (f"sample.context_batch_size={size}",))
            runs[name].append(result)
            _report(
                f"round {round_index + 1}: {args.long} frames, {name:10s} ({size:2d}/call)", result
            )
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu = {name: min(r["cpu_seconds"] for r in rs) for name, rs in runs.items()}
    peak = {name: max(r["peak_delta_mib"] for r in rs) for name, rs in runs.items()}
    print(
        f"\nsetup: {args.config} {args.long} frames {args.height}x{args.width}, {args.steps} steps, "
        f"window {args.context} overlap {args.overlap} ({windows} windows per step), device "
        f"{args.device} {args.dtype}"
    )
    print(
        f"window batching: sequential / batched ({batch} windows per call) time = "
        f"{best['sequential']:.2f} s / {best['batched']:.2f} s = "
        f"{best['sequential'] / best['batched']:.2f}x  (cpu time "
        f"{cpu['sequential'] / cpu['batched']:.2f}x); sampling peak memory "
        f"+{peak['sequential']:.1f} / +{peak['batched']:.1f} MiB"
    )


def compare_frames(args: argparse.Namespace) -> None:
    from animatediff.sampling import context_windows

    runs: dict[int, list[dict]] = {args.short: [], args.long: []}
    for round_index in range(args.repeats):
        for frames in (args.short, args.long):
            result = _run_child(args, frames)
            runs[frames].append(result)
            _report(f"round {round_index + 1}: {frames:4d} frames", result)
    best = {f: min(r["seconds"] for r in rs) for f, rs in runs.items()}
    best_cpu = {f: min(r["cpu_seconds"] for r in rs) for f, rs in runs.items()}
    delta = {f: max(r["peak_delta_mib"] for r in rs) for f, rs in runs.items()}
    total = {f: max(r["peak_total_mib"] for r in rs) for f, rs in runs.items()}
    windows = {f: len(context_windows(f, args.context, args.overlap)) for f in runs}
    time_ratio = best[args.long] / best[args.short]
    delta_ratio = delta[args.long] / max(delta[args.short], 1e-9)
    total_ratio = total[args.long] / total[args.short]
    memory = runs[args.short][0]["memory"]
    print(
        f"\nsetup: {args.config} {args.height}x{args.width}, {args.steps} steps, window "
        f"{args.context} overlap {args.overlap}, device {args.device} {args.dtype}; "
        f"windows per step {windows[args.short]} vs {windows[args.long]}"
    )
    print(
        f"time   {args.long}/{args.short} frames: {best[args.long]:.2f} s / {best[args.short]:.2f} s "
        f"= {time_ratio:.2f}  (target <= 4.5; frames ratio {args.long / args.short:.1f})"
    )
    print(
        f"cpu time {args.long}/{args.short} frames: {best_cpu[args.long]:.2f} s / "
        f"{best_cpu[args.short]:.2f} s = {best_cpu[args.long] / best_cpu[args.short]:.2f}  "
        "(process CPU time: robust to other load on a shared CPU)"
    )
    print(
        f"memory {args.long}/{args.short} frames ({memory}): sampling peak +{delta[args.long]:.1f} / "
        f"+{delta[args.short]:.1f} MiB = {delta_ratio:.2f}; process peak RSS {total[args.long]:.0f} / "
        f"{total[args.short]:.0f} MiB = {total_ratio:.2f}  (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
