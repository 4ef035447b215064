"""Training benchmarks: Ray Train overhead, data stall, and per-worker memory under ZeRO 0/2/3.

    .venv/bin/python -m benchmarks.train                       # all three, tiny base, CPU
    .venv/bin/python -m benchmarks.train --skip-memory --cycles 60
    .venv/bin/python -m benchmarks.train --skip-memory --config configs/moving_digits.yaml \
        --batch-size 8 --threads 1 --set model.base.pretrained=BASE train.data_uri=CLIPS \
        data.stride=1                              # the Moving Digits motion stage's step

1. Overhead: the same model, data and step (``animatediff.training.batch_loss`` + AdamW over the
   motion parameters, clipping 1.0) in a plain PyTorch loop and in ``jobs.train`` with 1 Ray
   worker (DeepSpeed ZeRO-2, Ray Data streaming, metrics all-reduced and logged to MLflow every
   ``--log-every`` steps, 10 as in the sd15 preset), with the same number of torch threads.
   This VM's speed drifts by up to 25% within a minute, more than the effect measured, so the
   two loops take turns every few seconds during one Ray run (``paired_overhead``: the worker
   is frozen while the plain loop, in its own process, runs a block of steps) and each Ray
   logging window is compared with the plain blocks on either side. Ray's side is
   ``perf/iteration_time_s``: everything a user waits for per step, logging included. Target: <= 5%.
   First, in one process, blocks of plain steps and of DeepSpeed engine steps take turns
   (``engine_overhead``): the engine's share of the overhead, and what DeepSpeed's default
   ``contiguous_gradients`` would cost on a CPU.
2. Data stall: ``perf/data_wait_fraction`` of the clean windows of that Ray run (time blocked on the
   next batch / step time): mean, median, max. Target <= 2%.
3. Memory: peak RSS per worker (max over the 2 workers, measured before the final export) and
   rank 0's RSS after the last step, with ZeRO stage 0, 2 and 3 on a motion module made
   deliberately big (4 layers, ff x256: ~93 M trainable parameters) so that the trainable
   parameters, their gradients and the Adam state dominate, fp32. ZeRO-2 shards gradients and
   optimizer state across the workers, ZeRO-3 the parameters too. Measured with glibc's default
   malloc (RSS keeps the heap's high-water mark and fragmentation) and with large buffers
   returned to the OS when freed (RSS follows the live tensors).

Synthetic latent shards (random posteriors, committed like ``jobs.preprocess`` writes them) feed
both loops: training speed does not depend on what the latents show.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


def _config(
    tmp: Path,
    frames: int,
    resolution: int,
    *overrides: str,
    preset: Path = ROOT / "configs/tiny.yaml",
) -> Config:
    return load_config(
        preset,
        [
            f"output_dir={tmp}",
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
    from animatediff.storage import locate
    from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name
    from pipelines.shards import ShardStore, shard_table

    fingerprint = data_fingerprint(cfg)
    store = ShardStore(
        locate(cfg.train.data_uri, cfg.storage).join(fingerprint_dir_name(fingerprint)), fingerprint
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


def _batches(cfg: Config) -> list[Any]:
    """The shards' full batches, read into memory (the plain loops' data)."""
    from animatediff.training import BATCH_COLUMNS
    from pipelines.fingerprint import data_fingerprint
    from pipelines.latents import find_shard_set
    from trainer.data import read_clips, validation_batches

    location, manifest = find_shard_set(cfg.train.data_uri, data_fingerprint(cfg), cfg.storage)
    clips = read_clips(location, manifest, 10**9, list(BATCH_COLUMNS))
    batches = validation_batches(clips, cfg.train.batch_size)
    return [b for b in batches if len(b) == cfg.train.batch_size]


def plain_step(cfg: Config, batches: list[Any]) -> Callable[[int], None]:
    """One training step of a plain PyTorch loop: torch AdamW over the motion parameters,
    gradient clipping; ``step(i)`` trains on batch ``i`` (cycling)."""
    import torch

    from animatediff.training import batch_loss, build_training_model, step_generator

    model = build_training_model(cfg)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    model.unet.train()

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        generator = step_generator(cfg.train.seed, index, 0, 0)
        batch_loss(model, model.unet, batch, cfg, generator).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def engine_step(cfg: Config, batches: list[Any], **zero: Any) -> Callable[[int], None]:
    """The same step through the DeepSpeed engine ``jobs.train`` builds (world size 1; the
    process group must exist); ``zero`` overrides entries of its ``zero_optimization``."""
    from animatediff.training import batch_loss, build_training_model, step_generator
    from trainer.engine import setup_engine

    model = build_training_model(cfg)
    engine = setup_engine(model, cfg.train, world_size=1, zero_overrides=zero)

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        generator = step_generator(cfg.train.seed, index, 0, 0)
        engine.backward(batch_loss(model, engine, batch, cfg, generator))
        engine.step()

    return step


def interleaved(
    steps: dict[str, Callable[[int], None]], blocks: int, block_steps: int
) -> dict[str, list[float]]:
    """Mean step time of each of ``blocks`` blocks per variant, the variants' blocks taking
    turns in one process: neighbouring blocks see the same machine speed, so their ratio is
    free of this VM's drift. One untimed warm-up block each first."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for block in range(blocks + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            for index in range(block * block_steps, (block + 1) * block_steps):
                step(index)
            if block:
                times[name].append((time.perf_counter() - start) / block_steps)
    return times


def engine_overhead(cfg: Config, threads: int, blocks: int) -> None:
    """Print the DeepSpeed engine's cost over a plain PyTorch step, measured interleaved."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    batches = _batches(cfg)
    # What a launcher sets and DeepSpeed checks for: a world of one process.
    launcher_env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    os.environ.update(launcher_env)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        variants = {
            "plain PyTorch": plain_step(cfg, batches),
            f"DeepSpeed ZeRO-{cfg.train.zero_stage} (this project's config)": engine_step(
                cfg, batches
            ),
            "  the same with DeepSpeed's contiguous_gradients=true": engine_step(
                cfg, batches, contiguous_gradients=True
            ),
        }
        times = interleaved(variants, blocks, block_steps=10)
    finally:
        dist.destroy_process_group()
        for name in launcher_env:
            del os.environ[name]
    base = times["plain PyTorch"]
    print(
        f"[overhead, one process] step through the DeepSpeed engine (world size 1) vs the plain "
        f"step, {blocks} interleaved blocks of 10 steps each, paired ratios of neighbouring blocks"
    )
    for name, values in times.items():
        ratios = [t / b for t, b in zip(values, base)]
        print(
            f"  {name}: {statistics.fmean(values) * 1000:.1f} ms/step, ratio mean "
            f"{statistics.fmean(ratios):.3f} (median {statistics.median(ratios):.3f})"
        )


def _fit(cfg: Config) -> Any:
    """``run_training``, its export copied into the benchmark's temporary folder."""
    from trainer import run_training

    return run_training(cfg, export_dir=Path(cfg.output_dir) / "export")


def memory_run(cfg: Config) -> dict[str, float]:
    """Peak RSS (max over workers) and rank 0's RSS after the last step, in GiB."""
    from mlflow import MlflowClient

    history = MlflowClient(cfg.mlflow.tracking_uri).get_metric_history
    run_id = _fit(cfg).run_id
    last = {
        key: max(history(run_id, key), key=lambda m: m.step).value
        for key in ("memory/peak_rss_gib_max_worker", "memory/rss_gib_rank0")
    }
    return {
        "peak_rss_gib": last["memory/peak_rss_gib_max_worker"],
        "rss_gib": last["memory/rss_gib_rank0"],
    }


def _training_worker(cfg: Config, after_step: int, fit: Any) -> Any:
    """The (single) Ray Train worker process, once MLflow shows it past ``after_step``
    (``fit``: the thread running the training, checked for an early end)."""
    import psutil
    from mlflow import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri)
    while True:
        time.sleep(1.0)
        if not fit.is_alive():
            raise RuntimeError("the training run ended before its warm-up did")
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
        runs = experiment and client.search_runs(
            [experiment.experiment_id], f"attributes.run_name = '{cfg.train.run_name}'"
        )
        if runs and any(
            m.step > after_step
            for m in client.get_metric_history(runs[0].info.run_id, "train/loss")
        ):
            break
    for process in psutil.process_iter(["cmdline"]):
        if "ray::RayTrainWorker" in " ".join(process.info["cmdline"] or []):
            return process
    raise RuntimeError("no ray::RayTrainWorker process on this machine")


def paired_overhead(cfg: Config, threads: int, cycles: int, warmup: int) -> dict[str, Any]:
    """Plain PyTorch blocks and Ray Train logging windows, measured turn about during one run.

    The driver freezes the Ray Train worker (SIGSTOP), times ``train.log_every`` plain steps,
    thaws the worker (SIGCONT) and lets it train for about 3.5 logging windows. A window that lies
    inside one running interval (judged by the MLflow timestamps of the logs) is a clean Ray
    measurement (``perf/iteration_time_s``: everything the loop does, logging included);
    it is compared with the mean of the plain blocks just before and just after it, which ran
    seconds apart at the same machine speed (a speed change in between still makes outliers:
    the median ratio is the robust figure). Ray's daemons and idle actors keep running while the
    worker is frozen, so their CPU use (reported) is charged to both sides."""
    import contextlib
    import signal
    import threading

    import psutil
    from mlflow import MlflowClient

    # The plain loop runs in its own process: the driver's Ray threads stay out of its way.
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    plain_process = context.Process(
        target=_plain_process, args=(child_conn, cfg, threads, warmup), daemon=True
    )
    plain_process.start()
    conn.recv()  # warmed up
    outcome: dict[str, Any] = {}
    fit = threading.Thread(target=lambda: outcome.update(result=_fit(cfg)))
    fit.start()
    worker = _training_worker(cfg, warmup + cfg.train.log_every, fit)
    block = cfg.train.log_every
    plain: list[float] = []
    running: list[tuple[float, float]] = []
    others_busy: list[float] = []  # cores' worth of CPU used by other processes, per block

    def plain_block() -> None:
        busy, start = _cpu_seconds(), time.perf_counter()
        conn.send(block)
        elapsed, own = conn.recv()
        others_busy.append((_cpu_seconds() - busy - own) / (time.perf_counter() - start))
        plain.append(elapsed / block)

    try:
        for _ in range(cycles):
            worker.send_signal(signal.SIGSTOP)
            plain_block()
            resumed = time.time()
            worker.send_signal(signal.SIGCONT)
            time.sleep(3.5 * plain[-1] * block)
            running.append((resumed, time.time()))
            if not fit.is_alive():
                raise RuntimeError(f"the run ended after {len(running)} of {cycles} cycles")
        worker.send_signal(signal.SIGSTOP)
        plain_block()  # every running interval has a plain block on either side
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGCONT)
        conn.send(0)
        plain_process.join()
        fit.join()
    history = MlflowClient(cfg.mlflow.tracking_uri).get_metric_history
    run_id = outcome["result"].run_id
    ends = {m.step: m.timestamp / 1000 for m in history(run_id, "train/loss")}
    iterations = {m.step: m.value for m in history(run_id, "perf/iteration_time_s")}
    waits = {m.step: m.value for m in history(run_id, "perf/data_wait_fraction")}
    pairs, clean_waits = [], []
    for (begin, end), before, after in zip(running, plain, plain[1:]):
        # perf/iteration_time_s at log k covers the iterations from the start of log k-1's
        # iteration, which began after log k-2: that one must fall inside the interval too.
        inside = [
            s
            for s in iterations
            if s - 2 * block in ends and begin <= ends[s - 2 * block] and ends[s] + 0.001 <= end
        ]
        if inside:
            ray_s = statistics.fmean(iterations[s] for s in inside)
            pairs.append(((before + after) / 2, ray_s))
            clean_waits += [waits[s] for s in inside]
    return {"pairs": pairs, "waits": clean_waits, "others_busy": others_busy}


def _plain_process(conn: Any, cfg: Config, threads: int, warmup: int) -> None:
    """Child process of ``paired_overhead``: on each ``n`` received, one untimed step (caches
    refill after the Ray worker's turn) then ``n`` timed plain steps; sends back
    ``(wall seconds of the timed steps, own CPU seconds of all)``. 0 ends it."""
    import torch

    torch.set_num_threads(threads)
    step = plain_step(cfg, _batches(cfg))
    for index in range(warmup):
        step(index)
    conn.send("ready")
    index = warmup
    while steps := conn.recv():
        own = time.process_time()
        step(index)
        start = time.perf_counter()
        for offset in range(1, steps + 1):
            step(index + offset)
        conn.send((time.perf_counter() - start, time.process_time() - own))
        index += steps + 1


def _cpu_seconds() -> float:
    """CPU time all processes on this machine used so far (user + system, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system = (int(f) for f in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _spread(values: list[float]) -> str:
    """Mean with its standard error and quartiles (the error needs two values)."""
    if len(values) < 2:
        return f"one value {values[0]:.3f} (no spread: raise --cycles)"
    error = statistics.stdev(values) / len(values) ** 0.5
    quartiles = " ".join(f"{q:.3f}" for q in statistics.quantiles(values, n=4))
    return f"mean {statistics.fmean(values):.3f} +/- {error:.3f} (standard error), quartiles {quartiles}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument(
        "--clips", type=int, default=256, help="clips in the overhead run's shards (an epoch)"
    )
    parser.add_argument("--cycles", type=int, default=30, help="plain block / Ray windows pairs")
    parser.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="Ray run: MLflow logging period (10 as in configs/sd15_webvid.yaml; one SQLite "
        "write costs ~5-7 ms, a large share of a tiny CPU step)",
    )
    parser.add_argument(
        "--engine-blocks", type=int, default=12, help="interleaved blocks (DeepSpeed vs plain)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs/tiny.yaml",
        help="the overhead run's preset (the memory run always uses tiny.yaml)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="dotted overrides of the overhead run, last (e.g. a real base and shard set: "
        "model.base.pretrained=DIR train.data_uri=DIR; synthetic shards are written only "
        "where train.data_uri holds fewer than --clips clips)",
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
            log_every = args.log_every
            cfg = _config(
                tmp,
                args.frames,
                args.resolution,
                "train.num_workers=1",
                f"train.cpus_per_worker={args.threads}",
                f"train.batch_size={args.batch_size}",
                # Enough steps for every cycle (about 3.5 windows each) and the warm-up.
                f"train.max_steps={args.warmup + (4 * args.cycles + 4) * log_every}",
                f"train.log_every={log_every}",
                "train.run_name=overhead",
                *args.set,
                preset=args.config,
            )
            write_synthetic_shards(cfg, clips=args.clips)
            # First, while the driver runs nothing else: DeepSpeed's share, in this process.
            engine_overhead(cfg, args.threads, args.engine_blocks)
            figures = paired_overhead(cfg, args.threads, args.cycles, args.warmup)
            ratios = [ray_s / plain_s for plain_s, ray_s in figures["pairs"]]
            if not ratios:
                raise SystemExit("no cycle gave a clean Ray window: raise --cycles")
            plain_rate = args.batch_size / statistics.fmean(p for p, _ in figures["pairs"])
            ray_rate = args.batch_size / statistics.fmean(r for _, r in figures["pairs"])
            print(
                f"[overhead] {args.frames} frames {args.resolution}px batch {args.batch_size}, "
                f"{args.threads} torch threads, MLflow log every {log_every} steps; "
                f"{len(ratios)} of {args.cycles} cycles gave clean Ray windows, each compared "
                f"with the plain blocks of {log_every} steps on either side"
            )
            print(
                f"  plain PyTorch {plain_rate:.3f} samples/s, Ray Train 1 worker {ray_rate:.3f} "
                f"samples/s. Ray/plain step time: median {statistics.median(ratios):.3f}, "
                + _spread(ratios)
            )
            print("  all ratios, sorted: " + " ".join(f"{r:.2f}" for r in sorted(ratios)))
            print(
                f"  Ray Train overhead (median): {(statistics.median(ratios) - 1) * 100:+.1f}% "
                "(target <= 5%)"
            )
            print(
                "  other processes (Ray's daemons and idle actors, frozen worker excluded) used "
                f"{statistics.fmean(figures['others_busy']) * 100:.0f}% of a core during the "
                "plain blocks"
            )
            waits = figures["waits"]
            print(
                f"[data stall] data-wait fraction per clean window: mean "
                f"{statistics.fmean(waits) * 100:.2f}%, median {statistics.median(waits) * 100:.2f}%,"
                f" max {max(waits) * 100:.2f}% (target <= 2%)"
            )
        if not args.skip_memory:
            motion = (
                f"model.motion.num_layers={args.memory_layers}",
                f"model.motion.ff_mult={args.memory_ff_mult}",
            )
            params = _trainable_parameters(_config(tmp, 4, 32, *motion))
            print(
                f"[memory] 2 workers, motion module {args.memory_layers} layers ff x"
                f"{args.memory_ff_mult}: {params / 1e6:.0f} M trainable params = "
                f"{params * 4 / 2**30:.2f} GiB fp32, grads + Adam state "
                f"{params * 12 / 2**30:.2f} GiB unsharded; {args.memory_steps} steps; peak RSS "
                "(max over the workers) and rank 0's RSS after the last step"
            )
            allocators = {
                "glibc malloc, defaults": None,
                # Buffers >= 64 KiB are mmap'ed and go back to the OS when freed: RSS then
                # follows the live tensors instead of the heap's high-water mark.
                "glibc malloc, MALLOC_MMAP_THRESHOLD_=65536": "65536",
            }
            for allocator, threshold in allocators.items():
                print(f"  {allocator}:")
                if threshold:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = threshold  # forwarded to the workers
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
                            f"train.run_name=memory-{threshold}-zero{stage}-bucket{bucket}",
                            *motion,
                        )
                        write_synthetic_shards(cfg, clips=8)
                        figures = memory_run(cfg)
                        if stage == 0:
                            baseline = figures["peak_rss_gib"]
                        print(
                            f"    ZeRO-{stage}"
                            + (f", buckets {bucket:.0e} elements" if stage else "")
                            + f": peak {figures['peak_rss_gib']:.2f} GiB "
                            f"({figures['peak_rss_gib'] - baseline:+.2f} GiB vs ZeRO-0), after "
                            f"the last step {figures['rss_gib']:.2f} GiB"
                        )
                os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    ray.shutdown()


def _trainable_parameters(cfg: Config) -> int:
    from animatediff.motion_module import MotionModules
    from animatediff.tiny import tiny_unet_kwargs

    unet = tiny_unet_kwargs()
    modules = MotionModules(unet["block_out_channels"], unet["layers_per_block"], cfg.model.motion)
    return sum(p.numel() for p in modules.parameters())


if __name__ == "__main__":
    main()
