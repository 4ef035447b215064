"""One Ray Train worker: the training loop, read top to bottom.

    start: build the model, wrap it in DeepSpeed, restore the latest checkpoint
    each step: run the hooks, one optimizer step (grad_accum_steps micro-batches)
    each logging step: window means all-reduced over ranks -> MLflow (rank 0)
    each validation step: fixed-noise validation loss and sample GIFs
    each checkpoint step: every rank saves its part, Ray Train merges them

Every rank takes the same branches (the all-reduces and ZeRO-3 gathers below are collective).
MLflow metric names are namespaced for the UI's chart sections (``train/``, ``val/``, ``perf/``,
``memory/``; ``tracking.notes.METRICS`` explains each); one worker per node samples MLflow's
``system/`` metrics.
"""

from __future__ import annotations

import math
import re
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.distributed as dist

from animatediff.config import Config, from_dict
from animatediff.training import (
    batch_loss,
    build_training_model,
    learning_rate,
    step_generator,
    validation_loss,
)
from trainer import checkpoint
from trainer.checkpoint import Position, TrainerState
from trainer.data import BucketStream, batch_stream, validation_batches
from trainer.engine import setup_engine
from trainer.export import Export


@dataclass(frozen=True)
class StepInfo:
    """What a step hook is told before each optimizer step."""

    step: int
    """Optimizer steps done so far (the step about to run is ``step + 1``)."""
    rank: int
    world_size: int


StepHook = Callable[[StepInfo], None]
"""Called by every rank before each optimizer step, e.g. by tests that kill a worker."""


@dataclass
class LogWindow:
    """What the loop accumulates between two logged steps (metrics are means over the window)."""

    first_step: int
    """The step whose iteration opened the window."""
    top: float
    """``perf_counter`` at the start of that iteration."""
    steps: int = 0
    step_s: float = 0.0
    """Seconds in optimizer steps (data wait, forward, backward, update)."""
    wait_s: float = 0.0
    """Seconds blocked on the next batch."""
    loss_total: torch.Tensor | None = None
    micro_batches: int = 0
    grad_norm_total: Any = 0.0
    grad_norms: int = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        # Kept on the device: no synchronisation per micro-batch.
        self.loss_total = loss if self.loss_total is None else self.loss_total + loss
        self.micro_batches += 1

    def add_grad_norm(self, norm: Any) -> None:
        if norm is not None:  # a device tensor or a float: summed without a sync
            self.grad_norm_total = self.grad_norm_total + norm
            self.grad_norms += 1

    def mean_loss(self) -> float:
        return float(self.loss_total) / self.micro_batches

    def mean_grad_norm(self) -> float:
        return float(self.grad_norm_total) / self.grad_norms if self.grad_norms else float("nan")


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


SAMPLE_MIN_SIDE = 256
"""Validation samples are enlarged (nearest neighbour) to at least this many pixels a side: a
32-pixel sample of a tiny model is a speck in the UI."""
STRIP_FRAMES = 8
"""Frames of a sample shown side by side in the step-indexed image."""


def prompt_slug(prompt: str, limit: int = 60) -> str:
    """``a red ball, bouncing!`` -> ``a-red-ball-bouncing`` (file names, image keys)."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-") or "prompt"


def enlarge(frames: np.ndarray, min_side: int = SAMPLE_MIN_SIDE) -> np.ndarray:
    """``(frames, H, W, 3)`` repeated to at least ``min_side`` pixels on the shorter side."""
    scale = max(1, math.ceil(min_side / min(frames.shape[1:3])))
    return frames.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames


def frame_strip(frames: np.ndarray, count: int = STRIP_FRAMES) -> np.ndarray:
    """Up to ``count`` evenly spaced frames side by side: ``(H, count * W, 3)``."""
    picked = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return np.concatenate(list(frames[picked]), axis=1)


def render_samples(
    cfg: Config, export: Export, directory: Path, step: int
) -> list[tuple[str, np.ndarray, Path]]:
    """Validation samples, fixed prompts and seed (steps are comparable by eye): one GIF per
    prompt, ``step<N>/prompt<i>-<prompt>.gif``, enlarged to ``SAMPLE_MIN_SIDE``. Returns
    ``(prompt, frames, path)`` per prompt."""
    from animatediff.export import save_video

    pipe = export.sampler(device="cpu" if not cfg.train.use_gpu else None)
    samples = []
    for index, prompt in enumerate(cfg.train.validation_prompts):
        frames = enlarge(
            pipe(
                prompt,
                seed=cfg.train.validation_seed,
                num_inference_steps=cfg.train.validation_steps or None,
            )
        )
        path = directory / f"step{step:08d}" / f"prompt{index}-{prompt_slug(prompt)}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        samples.append((prompt, frames, save_video(frames, path, cfg.sample.fps)))
    return samples


class Worker:
    """The state of one rank: model, engine, data stream, position and the open log window."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train

        from tracking import runs

        self.cfg: Config = from_dict(Config, loop_config["config"])
        self.train = self.cfg.train
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.hooks: list[StepHook] = list(loop_config.get("hooks") or [])
        device = ray.train.torch.get_device() if self.train.use_gpu else torch.device("cpu")
        if not self.train.use_gpu:
            # Subnormal floats take a slow path on x86 CPUs: a tiny VAE trained 14x slower with
            # them (0.19 vs 2.7 s/step, measured here); flushing them to zero costs nothing.
            torch.set_flush_denormal(True)
        self.dtype = torch.bfloat16 if self.train.precision == "bf16" else torch.float32
        self.model = build_training_model(self.cfg)
        self.engine = setup_engine(self.model, self.train, self.world, device)

        self.position = Position()
        self.val_loss: float | None = None
        restored = ray.train.get_checkpoint()
        if restored is not None:
            with checkpoint.local_directory(restored) as directory:
                state = checkpoint.restore(directory, self.engine, self.rank, self.world)
            self.position, self.val_loss = state.position, state.val_loss

        self.run_id = loop_config.get("run_id")
        self.logger = None
        self.logged_through = -1
        if self.rank == 0 and self.run_id:
            self.logger = runs.RunLogger(loop_config["tracking_uri"], self.run_id)
            attempt = int(self.logger.tag(runs.ATTEMPTS_TAG) or 0) + 1
            tags = {runs.ATTEMPTS_TAG: attempt}
            if restored is not None:
                # Steps between the checkpoint and a failure were logged by the failed attempt;
                # they are trained again (identically) but logged once.
                self.logged_through = self.logger.last_step(runs.LOSS_METRIC)
                tags[runs.RESUMED_TAG] = self.position.step
                event = f"attempt {attempt}: resumed from the step-{self.position.step} checkpoint"
            else:
                event = f"attempt {attempt}: started at step 0"
            self.logger.set_tags(tags)
            runs.add_event(
                loop_config["tracking_uri"], self.run_id, f"{event} ({self.world} workers)"
            )
        self.val_batches = validation_batches(loop_config["val_clips"], self.train.batch_size)
        buckets = loop_config.get("buckets")
        if buckets:  # data.buckets: every micro-batch from one bucket, the same on every rank
            self.stream = BucketStream(
                [ray.train.get_dataset_shard(name) for name, _ in buckets],
                [weight for _, weight in buckets],
                self.cfg,
                self.position,
            )
        else:
            self.stream = batch_stream(
                ray.train.get_dataset_shard("train"), self.cfg, self.position
            )
        self.samples_per_step = self.train.batch_size * self.train.grad_accum_steps * self.world
        self.window = LogWindow(self.position.step, time.perf_counter())

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        train = self.train
        while self.position.step < train.max_steps:
            top = time.perf_counter()
            step = self.position.step
            for hook in self.hooks:
                hook(StepInfo(step, self.rank, self.world))
            self.optimizer_step(step)
            done = self.position.step
            final = done == train.max_steps
            validating = final or bool(train.validate_every and done % train.validate_every == 0)
            checkpointing = final or bool(
                train.checkpoint_every and done % train.checkpoint_every == 0
            )
            if not (done % train.log_every == 0 or validating or checkpointing):
                continue
            metrics = self.window_metrics(step, top)
            exported = None
            if validating:
                self.val_loss, exported = self.validate()
                metrics["val/loss"] = self.val_loss
            self.log(metrics, samples_from=exported)
            if checkpointing:
                self.checkpoint(metrics, exported)

    # -- named steps --------------------------------------------------------------------------

    def optimizer_step(self, step: int) -> None:
        """``grad_accum_steps`` micro-batches, then DeepSpeed's update (inside its last
        ``engine.step()``); randomness from ``step_generator(seed, step, micro, rank)``."""
        lr = learning_rate(step, self.train)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        window = self.window
        start = time.perf_counter()
        for micro in range(self.train.grad_accum_steps):
            wait_start = time.perf_counter()
            epoch, index, batch = next(self.stream)
            window.wait_s += time.perf_counter() - wait_start
            generator = step_generator(self.train.seed, step, micro, self.rank)
            loss = batch_loss(self.model, self.engine, batch, self.cfg, generator, dtype=self.dtype)
            self.engine.backward(loss)
            self.engine.step()
            window.add_loss(loss.detach())
            self.position.epoch, self.position.batch_in_epoch = epoch, index + 1
        if isinstance(self.stream, BucketStream):
            self.position.buckets = [list(p) for p in self.stream.positions]
        window.add_grad_norm(self.engine.get_global_grad_norm())
        window.step_s += time.perf_counter() - start
        window.steps += 1
        self.position.step = step + 1

    def window_metrics(self, step: int, top: float) -> dict[str, float]:
        """Means over the log window, reduced over ranks; opens the next window."""
        window = self.window
        loss_sum, wait_sum, step_sum = _all_reduce(
            [window.mean_loss(), window.wait_s, window.step_s]
        )
        (peak_rss,) = _all_reduce([_peak_rss_gib()], op="max")
        step_time = step_sum / self.world / window.steps
        metrics = {
            "train/loss": loss_sum / self.world,
            "train/lr": learning_rate(step, self.train),
            "train/grad_norm": window.mean_grad_norm(),
            "train/epoch": float(self.position.epoch),
            # Training clips per second, summed over all workers.
            "perf/clips_per_s": self.samples_per_step / step_time,
            "perf/step_time_s": step_time,
            "perf/data_wait_fraction": wait_sum / step_sum,
            "memory/rss_gib_rank0": psutil.Process().memory_info().rss / 2**30,
            "memory/peak_rss_gib_max_worker": peak_rss,
        }
        if step > window.first_step:
            # Whole iterations since the last log (that log's own cost, checkpoints and
            # validation included): what a user waits for per step.
            metrics["perf/iteration_time_s"] = (top - window.top) / (step - window.first_step)
        if self.train.use_gpu and torch.cuda.is_available():
            metrics["memory/gpu_peak_gib_rank0"] = torch.cuda.max_memory_allocated() / 2**30
        self.window = LogWindow(step, top)
        return metrics

    def validate(self) -> tuple[float, Export]:
        """The fixed-noise validation loss and the gathered export (collective under ZeRO-3)."""
        self.engine.eval()
        loss = validation_loss(self.model, self.engine, self.val_batches, self.cfg, self.dtype)
        self.engine.train()
        return loss, Export.of(self.engine, self.cfg)

    def log(self, metrics: dict[str, float], samples_from: Export | None) -> None:
        done = self.position.step
        if self.logger is None or done <= self.logged_through:
            return
        self.logger.log_metrics(metrics, step=done)
        if samples_from is not None and self.train.validation_prompts:
            with tempfile.TemporaryDirectory() as directory:
                samples = render_samples(self.cfg, samples_from, Path(directory), done)
                self.logger.log_artifacts(directory, "samples")
            for index, (prompt, frames, _) in enumerate(samples):
                key = f"samples/{index} {prompt_slug(prompt).replace('-', ' ')}"
                self.logger.log_image(frame_strip(frames), key=key, step=done)

    def checkpoint(self, metrics: dict[str, float], exported: Export | None) -> None:
        """Every rank writes its part; Ray registers the checkpoint once all have reported."""
        import ray.train
        from ray.train import Checkpoint

        from animatediff.config import to_dict

        if exported is None:
            exported = Export.of(self.engine, self.cfg)
        done = self.position.step
        state = TrainerState(
            position=self.position,
            world_size=self.world,
            val_loss=self.val_loss,
            config=to_dict(self.cfg),
            mlflow_run_id=self.run_id,
        )
        with tempfile.TemporaryDirectory() as directory:
            checkpoint.save(Path(directory), self.engine, self.rank, state, exported)
            ray.train.report(
                {**metrics, "step": done},
                checkpoint=Checkpoint.from_directory(directory),
                checkpoint_dir_name=f"checkpoint_{done:08d}",
            )


def _system_metrics(loop_config: dict[str, Any]) -> Any:
    """MLflow's system metrics of this node, sampled by its first worker (None elsewhere, or
    without MLflow, or with ``train.system_metrics_interval_s: 0``)."""
    import ray.train

    from tracking.runs import SystemMetrics

    interval = loop_config["config"]["train"].get("system_metrics_interval_s", 0)
    context = ray.train.get_context()
    if not (loop_config.get("run_id") and interval > 0 and context.get_local_rank() == 0):
        return None
    node = f"node{context.get_node_rank()}"
    return SystemMetrics(loop_config["tracking_uri"], loop_config["run_id"], node, interval)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The ``TorchTrainer`` entry point of every rank."""
    monitor = _system_metrics(loop_config)
    try:
        Worker(loop_config).run()
    finally:
        if monitor is not None:
            monitor.stop()
