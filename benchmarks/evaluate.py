"""Evaluation throughput: clips/s of each part of ``jobs.evaluate`` and each metric's cost relative
to generating the video it scores, measured side by side in one process.

    .venv/bin/python -m benchmarks.evaluate                       # tiny base, CPU, 8 x 64 x 64
    .venv/bin/python -m benchmarks.evaluate --videos 16 --steps 20 --height 32 --width 32

What is timed, per clip: generating a video (``TextToVideo``, DDIM, CFG); the held-out loss (one
forward per fixed timestep, twice: in order and permuted, as ``held_out_metrics`` does); and each
metric of ``score_video`` on the generated videos, with the Moving Digits scorer's architecture
(``FrameClassifier``, random weights: its cost does not depend on what it learned). Ray Data's
scheduling around these calls is left out: it is the pipelines' plumbing, not the evaluation's
cost. Best of ``--repeats`` timings counts (wall time moves with other load on a shared CPU).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

DIRECTIONS = ("left", "right", "up", "down")


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(args: argparse.Namespace) -> list[tuple[str, float]]:
    """``[(part, seconds per clip)]``, generation first."""
    import numpy as np
    import torch

    from animatediff.config import load_config
    from animatediff.evaluation import fixed_timesteps, frame_permutation, held_out_loss
    from animatediff.features import ClassifierFeatures, FrameClassifier, PixelFeatures
    from animatediff.metrics import (
        colour_statistics,
        frame_consistency,
        label_agreement,
        motion_magnitude,
        trajectory,
    )
    from animatediff.sampling import TextToVideo
    from animatediff.training import Batch, build_training_model

    torch.manual_seed(0)
    cfg = load_config(
        args.config,
        [
            f"sample.num_frames={args.frames}",
            f"sample.context_frames={args.frames}",
            f"sample.height={args.height}",
            f"sample.width={args.width}",
            f"sample.num_inference_steps={args.steps}",
            f"evaluate.timesteps={args.timesteps}",
        ],
    )
    t2v = TextToVideo(cfg)
    prompts = [f"the digit {i % 10} moving {DIRECTIONS[i % 4]}" for i in range(args.videos)]
    t2v(prompts[0], seed=0)  # warm-up: allocator, caches
    videos: list[np.ndarray] = []

    def generate() -> None:
        videos.clear()
        videos.extend(t2v(prompt, seed=i) for i, prompt in enumerate(prompts))

    rows = [("generate a video", _best_seconds(generate, args.repeats) / args.videos)]

    model = build_training_model(cfg)
    model.unet.eval()
    size = (args.height // 8, args.width // 8)

    def held_out_batch(captions: list[str]) -> Batch:  # random latents: cost, not quality
        shape = (len(captions), 4, args.frames, *size)
        return Batch(captions, torch.randn(shape), torch.full(shape, 0.1))

    batches = [
        held_out_batch(prompts[i : i + args.batch]) for i in range(0, args.videos, args.batch)
    ]
    steps = fixed_timesteps(args.timesteps, cfg.model.diffusion.num_train_timesteps)
    order = frame_permutation(args.frames, 0)

    def loss() -> None:
        held_out_loss(model, batches, cfg, steps, 0)
        held_out_loss(model, batches, cfg, steps, 0, frame_order=order)

    rows.append(
        (f"held-out loss ({args.timesteps} t, x2)", _best_seconds(loss, args.repeats) / args.videos)
    )

    classifier = ClassifierFeatures(
        FrameClassifier(10, size=min(args.height, 32), foreground=True),
        input_size=(min(args.height, 32),) * 2,
        foreground=True,
    )
    pixels = PixelFeatures()
    metrics: dict[str, Callable[[np.ndarray], object]] = {
        "frame_consistency (pixels)": lambda v: frame_consistency(pixels(v)),
        "frame_consistency (classifier)": lambda v: frame_consistency(classifier(v)),
        "label_agreement (classifier)": lambda v: label_agreement(classifier.classify(v), 3),
        "trajectory (direction, speed)": lambda v: trajectory(v),
        "motion_magnitude": motion_magnitude,
        "colour_statistics": colour_statistics,
    }
    for name, metric in metrics.items():
        seconds = _best_seconds(lambda m=metric: [m(v) for v in videos], args.repeats)
        rows.append((name, seconds / args.videos))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--videos", type=int, default=8, help="prompts (clips) per timing")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per video")
    parser.add_argument("--timesteps", type=int, default=10, help="held-out loss timesteps")
    parser.add_argument("--batch", type=int, default=4, help="held-out clips per forward")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    rows = measure(args)
    generation = rows[0][1]
    print(
        f"{args.videos} clips of {args.frames} x {args.height} x {args.width}, "
        f"{args.steps} sampling steps ({args.config})"
    )
    print(f"{'part':<36} {'ms/clip':>10} {'clips/s':>10} {'x generation':>13}")
    for name, seconds in rows:
        print(
            f"{name:<36} {seconds * 1e3:>10.2f} {1 / seconds:>10.1f} {seconds / generation:>13.4f}"
        )
    scoring = sum(seconds for name, seconds in rows[2:] if "pixels" not in name)
    print(
        f"\nscoring a video (classifier extractor, every metric): {scoring * 1e3:.1f} ms "
        f"= {scoring / generation:.3f} x its generation; evaluation end to end "
        f"{1 / (generation + rows[1][1] + scoring):.2f} clips/s"
    )


if __name__ == "__main__":
    main()
