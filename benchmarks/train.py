"""Training benchmarks: Ray Train overhead, data stall, and per-worker memory under ZeRO 0/2/3.

    .venv/bin/python -m benchmarks.train                       # all three, tiny base, CPU
    .venv/bin/python -m benchmarks.train --skip-memory --steps 200 --rounds 5

1. Overhead: the same model, data and step (``animatediff.training.batch_loss`` + AdamW over the
   motion parameters, clipping 1.0) in a plain PyTorch loop and in ``jobs.train`` with 1 Ray
   worker (DeepSpeed ZeRO-2, Ray Data streaming, metrics all-reduced and logged to MLflow every
   ``--log-every`` steps, 10 as in the sd15 preset). Both use the same number of torch threads.
   Wall times per step, averaged over windows of ``--log-every`` steps (Ray side:
   ``iteration_time_s``, everything a user waits for, logging included), are compared by median
   and by mean, in ``--rounds`` alternating plain/Ray rounds (this VM's speed drifts in phases
   of a minute). Target: overhead <= 5%.
2. Data stall: ``data_wait_fraction`` of the measured windows of the Ray run (time blocked on
   the next batch / step time): mean, median, max (an epoch boundary restarts the streaming read).
   Target <= 2%.
3. Memory: peak RSS per worker (max over the 2 workers, measured before the final export) and
   rank 0's RSS after the last step, with ZeRO stage 0, 2 and 3 on a motion module made
   deliberately big (4 layers, ff x256: ~95 M trainable parameters) so that the trainable
   parameters, their gradients and the Adam state dominate, fp32. ZeRO-2 shards gradients + optimizer state across
   the workers, ZeRO-3 the parameters too.

Synthetic latent shards (random posteriors, committed like ``jobs.preprocess`` writes them) feed
both loops: training speed does not depend on what the latents show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, frames: int, resolution: int, *overrides: str) -> Config:
    return load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"train.data_uri={tmp / 'latents'}",
            f"train.storage_path={tmp / 'ray_results'}",
            f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"model.base.cache_dir={tmp / 'cache'}",
            f"data.num_frames={frames}",
            f"data.resolution={resolution}",
            "train.validation_prompts=[]",
            "train.register=false",
            "train.checkpoint_every=0",
            "train.val_max_clips=1",
            *overrides,
        ],
    )


def write_synthetic_shards(cfg: Config, clips: int, seed: int = 0) -> None:
    from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name
    from pipelines.shards import ShardStore, shard_table
    from pipelines.storage import locate

    fingerprint = data_fingerprint(cfg)
    store = ShardStore(
        locate(cfg.train.data_uri, cfg.data).join(fingerprint_dir_name(fingerprint)), fingerprint
    )
    store.open()
    if store.manifest["num_clips"] >= clips:
        return
    rng = np.random.default_rng(seed)
    frames, size = cfg.data.num_frames, cfg.data.resolution // 8
    shape = (clips, 4, frames, size, size)
    batch = {
        "clip_id": np.array([f"{i:016x}" for i in range(clips)]),
        "video_id": np.array([f"video{i}" for i in range(clips)]),
        "caption": np.array([f"synthetic clip {i}" for i in range(clips)]),
        "frame_indices": np.tile(np.arange(frames, dtype=np.int32), (clips, 1)),
        "fps": np.full(clips, 8.0, np.float32),
        "source": np.array([f"synthetic://{i}" for i in range(clips)]),
        "flipped": np.zeros(clips, bool),
        "latent_mean": rng.normal(0, 4, shape).astype(np.float16),
        "latent_std": rng.uniform(0.05, 0.2, shape).astype(np.float16),
    }
    store.commit(shard_table(batch), "part-bench-000000.parquet")
    store.write_manifest()


def plain_loop(cfg: Config, warmup: int, steps: int, threads: int) -> list[float]:
    """Wall time of each measured step of a plain PyTorch loop over the same shards (read into
    memory first)."""
    import torch

    from animatediff.training import BATCH_COLUMNS, batch_loss, build_training_model, step_generator
    from jobs.train import _read_clips, _validation_batches
    from pipelines.fingerprint import data_fingerprint

    torch.set_num_threads(threads)
    clips = _read_clips(cfg.train.data_uri, data_fingerprint(cfg), 10**9, list(BATCH_COLUMNS))
    batches = _validation_batches(clips, cfg.train.batch_size)
    batches = [b for b in batches if len(b) == cfg.train.batch_size]
    model = build_training_model(cfg)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    model.unet.train()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        batch = batches[step % len(batches)]
        loss = batch_loss(model, model.unet, batch, cfg, step_generator(cfg.train.seed, step, 0, 0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _metric(cfg: Config, run_id: str, key: str, first_step: int) -> list[float]:
    from mlflow import MlflowClient

    history = MlflowClient(cfg.mlflow.tracking_uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step) if m.step >= first_step]


def ray_run(cfg: Config, warmup: int) -> dict[str, Any]:
    from jobs.train import run_training

    outcome = run_training(cfg)
    # iteration_time_s at a logged step is the mean wall time of the iterations since the
    # previous log (that log's cost included); keep the windows that start after the warm-up.
    first = warmup + cfg.train.log_every + 1
    iterations = _metric(cfg, outcome.run_id, "iteration_time_s", first)
    computes = _metric(cfg, outcome.run_id, "step_time_s", first)
    waits = _metric(cfg, outcome.run_id, "data_wait_fraction", first)
    return {
        "iterations": iterations,
        "loop_overhead_s": statistics.median(i - c for i, c in zip(iterations, computes)),
        "data_wait_fractions": waits,
        "peak_rss_gib": _metric(cfg, outcome.run_id, "peak_rss_gib_max_worker", 1)[-1],
        "rss_gib": _metric(cfg, outcome.run_id, "rss_gib", 1)[-1],
        "torch_threads": _metric(cfg, outcome.run_id, "torch_threads", 1)[-1],
    }


def windows(times: list[float], size: int) -> list[float]:
    """Means of consecutive ``size``-step windows (the Ray side logs window means)."""
    return [statistics.fmean(times[i : i + size]) for i in range(0, len(times) - size + 1, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (Ray: CPUs/worker)")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--memory-layers", type=int, default=4, help="motion layers (memory run)")
    parser.add_argument("--memory-ff-mult", type=int, default=256, help="ff width (memory run)")
    parser.add_argument(
        "--memory-buckets",
        default="500000000,20000000",
        help="train.zero_bucket_size values of the memory run (DeepSpeed's default first)",
    )
    parser.add_argument("--clips", type=int, default=64, help="clips in the overhead run's shards")
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain/Ray rounds")
    parser.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="Ray run: MLflow logging period (10 as in configs/sd15_webvid.yaml; one SQLite "
        "write costs ~5-7 ms, a large share of a tiny CPU step)",
    )
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    ray.init(
        address="local",
        num_cpus=max(4, args.threads + 2),
        include_dashboard=False,
        log_to_driver=False,
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-") as directory:
        tmp = Path(directory)
        if not args.skip_overhead:
            batch = args.batch_size
            plain_all, ray_all, ratios, figures = [], [], [], []
            for round_index in range(args.rounds):
                # Alternating rounds: this shared VM's speed drifts by up to ~25% over minutes,
                # which would otherwise land on whichever loop ran in a slow phase.
                cfg = _config(
                    tmp,
                    args.frames,
                    args.resolution,
                    "train.num_workers=1",
                    f"train.cpus_per_worker={args.threads}",
                    f"train.batch_size={batch}",
                    f"train.max_steps={args.warmup + args.steps + 1}",
                    f"train.log_every={args.log_every}",
                    f"train.run_name=overhead{round_index}",  # a fresh run, not a resume
                )
                write_synthetic_shards(cfg, clips=args.clips)
                plain = windows(
                    plain_loop(cfg, args.warmup, args.steps, args.threads), args.log_every
                )
                ray_figures = ray_run(cfg, args.warmup)
                plain_all += plain
                ray_all += ray_figures["iterations"]
                figures.append(ray_figures)
                ratios.append(statistics.fmean(ray_figures["iterations"]) / statistics.fmean(plain))
            print(
                f"[overhead] {args.frames} frames {args.resolution}px batch {batch}, "
                f"{args.threads} torch threads, {args.rounds} alternating rounds of "
                f"{args.steps} measured steps, MLflow log every {args.log_every} steps, "
                f"times averaged over windows of {args.log_every} steps (worker torch threads "
                f"{figures[0]['torch_threads']:.0f})"
            )
            print(
                "  per round, mean step time Ray / plain: "
                + ", ".join(f"{r:.3f}" for r in ratios)
                + f"; median over rounds: overhead {(statistics.median(ratios) - 1) * 100:+.1f}%"
            )
            for label, pick in (("median", statistics.median), ("mean", statistics.fmean)):
                a, b = batch / pick(plain_all), batch / pick(ray_all)
                print(
                    f"  {label:6s} window, all rounds: plain PyTorch {a:.3f} samples/s, Ray Train"
                    f" 1 worker {b:.3f} samples/s: overhead {(1 - b / a) * 100:+.1f}% "
                    "(target <= 5%)"
                )
            print(
                f"  Ray loop outside the step (metrics all-reduce, MLflow log): median "
                f"{statistics.median(f['loop_overhead_s'] for f in figures) * 1000:.1f} ms per "
                "iteration"
            )
            waits = [w for f in figures for w in f["data_wait_fractions"]]
            print(
                f"[data stall] data-wait fraction per window: mean "
                f"{statistics.fmean(waits) * 100:.2f}%, median {statistics.median(waits) * 100:.2f}%, "
                f"max {max(waits) * 100:.2f}% (target <= 2%)"
            )
        if not args.skip_memory:
            print(
                f"[memory] 2 workers, motion module {args.memory_layers} layers ff x"
                f"{args.memory_ff_mult} (fp32), {args.memory_steps} steps, RSS per worker"
            )
            baseline = None
            for bucket in (int(float(b)) for b in args.memory_buckets.split(",")):
                for stage in (0, 2, 3):
                    if stage == 0 and baseline is not None:
                        continue  # ZeRO-0 uses no ZeRO buckets: measured once
                    cfg = _config(
                        tmp,
                        4,
                        32,
                        "train.num_workers=2",
                        f"train.zero_stage={stage}",
                        f"train.zero_bucket_size={bucket}",
                        f"train.max_steps={args.memory_steps}",
                        f"train.run_name=memory-zero{stage}-bucket{bucket}",
                        f"model.motion.num_layers={args.memory_layers}",
                        f"model.motion.ff_mult={args.memory_ff_mult}",
                    )
                    write_synthetic_shards(cfg, clips=8)
                    figures = ray_run(cfg, 0)
                    params = _trainable_parameters(cfg)
                    if stage == 0:
                        baseline = figures["peak_rss_gib"]
                    print(
                        f"  ZeRO-{stage}"
                        + (f", buckets {bucket:.0e} elements" if stage else "")
                        + f": peak {figures['peak_rss_gib']:.2f} GiB (max over workers; "
                        f"{figures['peak_rss_gib'] - baseline:+.2f} GiB vs ZeRO-0), after the "
                        f"last step {figures['rss_gib']:.2f} GiB (rank 0); trainable "
                        f"{params / 1e6:.0f} M params = {params * 4 / 2**30:.2f} GiB fp32, "
                        f"grads + Adam state {params * 12 / 2**30:.2f} GiB unsharded"
                    )
    ray.shutdown()


def _trainable_parameters(cfg: Config) -> int:
    from animatediff.motion_module import MotionModules
    from animatediff.tiny import tiny_unet_kwargs

    unet = tiny_unet_kwargs()
    modules = MotionModules(unet["block_out_channels"], unet["layers_per_block"], cfg.model.motion)
    return sum(p.numel() for p in modules.parameters())


if __name__ == "__main__":
    main()
