"""Train the motion module on Ray Train + DeepSpeed; track in MLflow; register the result.

    python -m jobs.train --config configs/tiny.yaml train.data_uri=outputs/latents/tiny
    ray job submit --working-dir . -- python -m jobs.train --config configs/sd15_webvid.yaml

Re-running with the same ``train.run_name`` and ``train.storage_path`` resumes from the latest
checkpoint (DeepSpeed state of every rank, step, data position, RNG states) and logs to the same
MLflow run. Worker failures restart the group from the latest checkpoint (``train.max_failures``).

A checkpoint directory holds ``deepspeed/`` (``engine.save_checkpoint`` of every rank, frozen base
excluded), ``trainer_state.json`` (step, data position, config, last validation loss),
``rng/rank{r}.json`` and ``motion_module/`` (the native export, loadable without DeepSpeed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animatediff.config import Config, TrainConfig, from_dict, parse_cli, save_config, to_dict

DS_TAG = "ds"
STATE_FILE = "trainer_state.json"
MOTION_DIR = "motion_module"


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


@dataclass
class Position:
    """Where training stands: optimizer steps done and the next micro-batch of the data stream."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def _skip_shm_comm_build() -> None:
    # DeepSpeed JIT-compiles a shared-memory comm op on first use (20-30 s on CPU) that gloo never
    # needs. Done by item assignment in a module function: Ray cannot pickle the ops object.
    from deepspeed.ops import __compatible_ops__ as ops

    ops["deepspeed_shm_comm"] = False


@dataclass
class _LogWindow:
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

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_total = loss if self.loss_total is None else self.loss_total + loss
        self.micro_batches += 1

    def mean_loss(self) -> float:
        return float(self.loss_total) / self.micro_batches


def _optimizer(params: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable (motion) parameters only.

    torch's AdamW needs no compilation; with ``train.offload_optimizer`` the optimizer state lives
    in CPU memory and DeepSpeed requires its own CPU Adam there (compiled on first use, ~40 s,
    then cached in ``~/.cache/torch_extensions``)."""
    kwargs = {"lr": train.lr, "betas": train.betas, "weight_decay": train.weight_decay}
    if train.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[float(x) for x in np_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _batch_stream(shard: Any, cfg: Config, position: Position) -> Iterator[tuple[int, int, Any]]:
    """``(epoch, index_in_epoch, Batch)`` forever, starting at ``position``.

    Each epoch re-reads the shard in the same order (the split runs with ``preserve_order``), and
    the local shuffle is seeded by ``(seed, epoch)``, so skipping the consumed batches puts a
    resumed run exactly where the interrupted one stopped."""
    from animatediff.training import collate

    epoch, skip = position.epoch, position.batch_in_epoch
    while True:
        count = 0
        shuffle = cfg.train.shuffle_buffer or None
        for index, batch in enumerate(
            shard.iter_torch_batches(
                batch_size=cfg.train.batch_size,
                drop_last=True,
                prefetch_batches=cfg.train.prefetch_batches,
                local_shuffle_buffer_size=shuffle,
                local_shuffle_seed=cfg.train.seed * 100_003 + epoch if shuffle else None,
                collate_fn=collate,
            )
        ):
            count += 1
            if index >= skip:
                yield epoch, index, batch
        if count == 0:
            raise ValueError(
                f"train.data_uri: a worker's shard holds fewer than train.batch_size="
                f"{cfg.train.batch_size} clips; use fewer workers or more data"
            )
        epoch, skip = epoch + 1, 0


def _full_motion_state(engine: Any) -> dict[str, torch.Tensor]:
    """fp32 motion-module weights on the CPU. Under ZeRO-3 this gathers: every rank must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    modules = engine.module.motion_modules
    state = {}
    for name, param in modules.named_parameters():
        full = safe_get_full_fp32_param(param)  # the fp32 master copy (None without ZeRO/bf16)
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    for name, buffer in modules.named_buffers():
        state[name] = buffer.detach().float().cpu().clone()
    return state


def _export_motion_modules(engine: Any, cfg: Config) -> torch.nn.Module:
    from animatediff.training import new_motion_modules

    modules = new_motion_modules(engine.module, cfg.model.motion)
    modules.load_state_dict(_full_motion_state(engine))
    return modules


def _process_memory_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _validation_batches(clips: dict[str, np.ndarray], batch_size: int) -> list[Any]:
    from animatediff.training import collate

    count = len(clips["caption"])
    return [
        collate({name: column[start : start + batch_size] for name, column in clips.items()})
        for start in range(0, count, batch_size)
    ]


def _render_samples(
    cfg: Config, modules: torch.nn.Module, directory: Path, step: int
) -> list[Path]:
    """Validation GIFs: fixed prompts and seed, so steps are comparable by eye."""
    from animatediff.export import save_video
    from animatediff.sampling import TextToVideo

    pipe = TextToVideo(cfg, modules, device="cpu" if not cfg.train.use_gpu else None)
    paths = []
    for index, prompt in enumerate(cfg.train.validation_prompts):
        frames = pipe(
            prompt,
            seed=cfg.train.validation_seed,
            num_inference_steps=cfg.train.validation_steps or None,
        )
        paths.append(
            save_video(frames, directory / f"step{step:08d}_prompt{index}.gif", cfg.sample.fps)
        )
    return paths


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: DeepSpeed engine over the VideoUNet, trainable motion modules only."""
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    from animatediff.checkpoints import save_motion_modules
    from animatediff.tracking import RunLogger
    from animatediff.training import (
        batch_loss,
        build_training_model,
        deepspeed_config,
        learning_rate,
        step_generator,
        validation_loss,
    )

    _skip_shm_comm_build()
    cfg: Config = from_dict(Config, loop_config["config"])
    train = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if train.use_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if train.precision == "bf16" else torch.float32

    model = build_training_model(cfg)
    model.unet.to(device)
    model.conditioner.text_encoder.to(device)
    model.conditioner.empty = model.conditioner.empty.to(device)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model.unet,
        optimizer=_optimizer(params, train),
        config=deepspeed_config(train, world),
        dist_init_required=False,
    )

    position = Position()
    last_val_loss: float | None = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = json.loads((Path(directory) / STATE_FILE).read_text())
            if state["world_size"] != world:
                raise ValueError(
                    f"train.num_workers: the checkpoint was written by {state['world_size']} "
                    f"workers, this run has {world} (ZeRO state is sharded per rank)"
                )
            engine.load_checkpoint(
                str(Path(directory) / "deepspeed"),
                tag=DS_TAG,
                load_module_strict=False,  # frozen base weights are not in checkpoints
                load_lr_scheduler_states=False,  # the lr is a pure function of the step
            )
            position = Position(**state["position"])
            last_val_loss = state.get("val_loss")
            _set_rng_state(json.loads((Path(directory) / "rng" / f"rank{rank}.json").read_text()))

    logger = (
        RunLogger(loop_config["tracking_uri"], loop_config["run_id"])
        if rank == 0 and loop_config.get("run_id")
        else None
    )
    if logger is not None and restored is not None:
        logger.log_metrics({"resumed_from_step": float(position.step)}, step=position.step)
    val_batches = _validation_batches(loop_config["val_clips"], train.batch_size)
    stream = _batch_stream(ray.train.get_dataset_shard("train"), cfg, position)
    samples_per_step = train.batch_size * train.grad_accum_steps * world

    def validate() -> tuple[float, torch.nn.Module]:
        engine.eval()
        loss = validation_loss(model, engine, val_batches, cfg, dtype=dtype)
        engine.train()
        return loss, _export_motion_modules(engine, cfg)

    window = _LogWindow(position.step, time.perf_counter())
    while position.step < train.max_steps:
        top = time.perf_counter()
        marker = loop_config.get("fault_marker")
        if (
            train.fault_injection_step == position.step
            and rank == world - 1
            and marker
            and not Path(marker).exists()
        ):
            Path(marker).touch()  # first attempt only
            # Ray Train collects reports every 2 s: let it register the last checkpoint first, so
            # the restart point is deterministic. Then a real crash: no cleanup, no report.
            time.sleep(5)
            os.kill(os.getpid(), signal.SIGKILL)

        step = position.step
        lr = learning_rate(step, train)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        for micro in range(train.grad_accum_steps):
            wait_start = time.perf_counter()
            epoch, index, batch = next(stream)
            window.wait_s += time.perf_counter() - wait_start
            generator = step_generator(train.seed, step, micro, rank)
            loss = batch_loss(model, engine, batch, cfg, generator, dtype=dtype)
            engine.backward(loss)
            engine.step()
            window.add_loss(loss.detach())  # stays on the device: no sync per micro-batch
            position.epoch, position.batch_in_epoch = epoch, index + 1
        window.step_s += time.perf_counter() - start
        window.steps += 1
        position.step = step + 1
        done = position.step

        final = done == train.max_steps
        validating = final or (train.validate_every and done % train.validate_every == 0)
        checkpointing = final or (train.checkpoint_every and done % train.checkpoint_every == 0)
        if not (done % train.log_every == 0 or validating or checkpointing):
            continue  # every rank takes the same branch: the all-reduces below are collective
        grad_norm = engine.get_global_grad_norm()
        loss_sum, wait_sum, step_sum = _all_reduce(
            [window.mean_loss(), window.wait_s, window.step_s]
        )
        (peak_rss,) = _all_reduce([_peak_rss_gib()], op="max")
        step_time = step_sum / world / window.steps
        metrics = {
            "loss": loss_sum / world,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "samples_per_s": samples_per_step / step_time,
            "step_time_s": step_time,
            "data_wait_fraction": wait_sum / step_sum,
            "rss_gib": _process_memory_gib(),
            "peak_rss_gib_max_worker": peak_rss,
            "epoch": float(position.epoch),
        }
        if step > window.first_step:
            # Whole iterations since the last log (that log's own cost, checkpoints and
            # validation included): what a user waits for per step.
            metrics["iteration_time_s"] = (top - window.top) / (step - window.first_step)
        window = _LogWindow(step, top)
        if train.use_gpu and torch.cuda.is_available():
            metrics["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30

        exported = None
        if validating:
            last_val_loss, exported = validate()
            metrics["val_loss"] = last_val_loss
        if logger is not None:
            logger.log_metrics(metrics, step=done)
        if validating and logger is not None and train.validation_prompts:
            with tempfile.TemporaryDirectory() as directory:
                _render_samples(cfg, exported, Path(directory), done)
                logger.log_artifacts(directory, "samples")

        if checkpointing:
            if exported is None:
                exported = _export_motion_modules(engine, cfg)  # collective under ZeRO-3
            with tempfile.TemporaryDirectory() as directory:
                root = Path(directory)
                engine.save_checkpoint(
                    str(root / "deepspeed"), tag=DS_TAG, exclude_frozen_parameters=True
                )
                (root / "rng").mkdir()
                (root / "rng" / f"rank{rank}.json").write_text(json.dumps(_rng_state()))
                if rank == 0:
                    save_motion_modules(exported, cfg.model.motion, root / MOTION_DIR)
                    state = {
                        "position": vars(position),
                        "world_size": world,
                        "val_loss": last_val_loss,
                        "config": to_dict(cfg),
                        "mlflow_run_id": loop_config.get("run_id"),
                    }
                    (root / STATE_FILE).write_text(json.dumps(state, indent=2))
                # Ray registers the checkpoint only once every rank has uploaded its part.
                ray.train.report(
                    {**metrics, "step": done},
                    checkpoint=Checkpoint.from_directory(directory),
                    checkpoint_dir_name=f"checkpoint_{done:08d}",
                )


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    """What ``run_training`` returns."""

    run_id: str | None
    """The MLflow run id (None with ``mlflow.enabled: false``)."""
    checkpoint_path: str
    """The latest checkpoint (local path or URI)."""
    step: int
    val_loss: float | None
    motion_dir: Path
    """A local copy of the final native motion module."""
    model_version: str | None
    """The registered model version (None without registration)."""


def _storage(cfg: Config) -> tuple[str, Any]:
    """``(storage_path, filesystem)`` for ``RunConfig``.

    ``s3://`` honours ``AWS_ENDPOINT_URL`` (an S3-compatible server) with an explicit pyarrow
    filesystem, which travels to the Train controller and workers inside the run config."""
    path = cfg.train.storage_path
    if not path.startswith("s3://"):
        return str(Path(path).expanduser().resolve()), None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return path, None
    from pyarrow import fs

    scheme, _, host = endpoint.partition("://")
    filesystem = fs.S3FileSystem(
        endpoint_override=host or endpoint,
        scheme=scheme if host else "https",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    return path.removeprefix("s3://"), filesystem


def _read_clips(
    uri: str, fingerprint: dict, limit: int, columns: list[str]
) -> dict[str, np.ndarray]:
    """The first ``limit`` clips of a shard set as numpy columns, read with pyarrow directly (a
    Ray Data job costs seconds of start-up for a handful of rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorType  # noqa: F401 - registers the tensor type

    from pipelines.latents import find_shard_set

    location, manifest = find_shard_set(uri, fingerprint)
    tables, rows = [], 0
    for entry in manifest["shards"]:
        table = pq.read_table(
            location.join(entry["path"]).path, columns=columns, filesystem=location.fs
        )
        tables.append(table.slice(0, limit - rows))
        rows += tables[-1].num_rows
        if rows >= limit:
            break
    if rows == 0:
        raise ValueError(f"train.val_data_uri: {uri} holds no clips")
    table = pa.concat_tables(tables)
    return {
        name: table.column(name).combine_chunks().to_numpy(zero_copy_only=False) for name in columns
    }


def _datasets(cfg: Config) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """``(train dataset, validation clips as numpy columns, data fingerprint)``; the shards must
    match the model being trained (the fingerprint is checked)."""
    from animatediff.training import BATCH_COLUMNS, OPTIONAL_BATCH_COLUMNS
    from pipelines.fingerprint import data_fingerprint
    from pipelines.latents import find_shard_set, shard_set_dataset

    if not cfg.train.data_uri:
        raise ValueError("train.data_uri: set it to the latent shards of the data pipeline")
    fingerprint = data_fingerprint(cfg)
    location, manifest = find_shard_set(cfg.train.data_uri, fingerprint)
    train_ds = shard_set_dataset(location, manifest)
    names = set(train_ds.schema().names)
    columns = list(BATCH_COLUMNS) + [c for c in OPTIONAL_BATCH_COLUMNS if c in names]
    train_ds = train_ds.select_columns(columns)
    if sum(entry["bytes"] for entry in manifest["shards"]) <= cfg.train.cache_data_max_gib * 2**30:
        # A streamed read restarts at every epoch (seconds on a small cluster: a stall that
        # dominates short epochs); a small shard set is read once, in file order (resumed runs
        # must see the same order), and each epoch is served from Ray's object store.
        train_ds.context.execution_options.preserve_order = True
        train_ds = train_ds.materialize()
    # The validation clips are few: read once here and shipped to the workers with the config.
    val_uri = cfg.train.val_data_uri or cfg.train.data_uri
    val_clips = _read_clips(val_uri, fingerprint, cfg.train.val_max_clips, columns)
    return train_ds, val_clips, fingerprint


def run_training(cfg: Config) -> TrainOutcome:
    """Fit (or resume) the run named by ``cfg.train``, then log and register the motion module."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from animatediff import tracking
    from animatediff.base_model import resolve_pretrained

    train = cfg.train
    # Materialise a built-in base here, outside torch.distributed: transformers' save_pretrained
    # writes nothing on a non-zero rank, so racing workers could publish an empty copy.
    resolve_pretrained(cfg.model.base)
    train_ds, val_clips, fingerprint = _datasets(cfg)
    storage_path, filesystem = _storage(cfg)
    run_id = tracking_uri = None
    if cfg.mlflow.enabled:
        tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow)
        params = {f"data.fingerprint.{k}": v for k, v in fingerprint.items()}
        run_id, _ = tracking.start_or_resume_run(
            cfg, f"{train.storage_path.rstrip('/')}/{train.run_name}", tracking_uri, params
        )
        with tempfile.TemporaryDirectory() as directory:
            save_config(cfg, Path(directory) / "config.yaml")
            tracking.RunLogger(tracking_uri, run_id).log_artifact(Path(directory) / "config.yaml")

    fault_marker = None
    if train.fault_injection_step is not None:  # testing: workers share this machine's /tmp
        fault_marker = str(Path(tempfile.gettempdir()) / f"animatediff-fault-{uuid.uuid4().hex}")
    # Object-store credentials, the tracking server, and glibc malloc tuning (on CPU, e.g.
    # MALLOC_MMAP_THRESHOLD_ hands large freed buffers back to the OS) reach the workers.
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_", "MALLOC_"))}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "fault_marker": fault_marker,
            "config": to_dict(cfg),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "val_clips": val_clips,
        },
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        run_config=RunConfig(
            name=train.run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_last),
            worker_runtime_env={"env_vars": env_vars} if env_vars else None,
        ),
        datasets={"train": train_ds},
        # A deterministic split: a resumed run re-reads each epoch in the same order.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    try:
        result = trainer.fit()
    except Exception:
        if run_id is not None:
            tracking.RunLogger(tracking_uri, run_id).set_terminated("FAILED")
        raise
    finally:
        if fault_marker:
            Path(fault_marker).unlink(missing_ok=True)
    if result.checkpoint is None:
        raise RuntimeError(f"run {train.run_name!r} finished without a checkpoint")
    return _finish(cfg, result.checkpoint, run_id, tracking_uri)


def _finish(
    cfg: Config, checkpoint: Any, run_id: str | None, tracking_uri: str | None
) -> TrainOutcome:
    from animatediff import tracking

    output = Path(tempfile.mkdtemp(prefix="animatediff-train-"))
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        motion_dir = output / MOTION_DIR
        import shutil

        shutil.copytree(Path(directory) / MOTION_DIR, motion_dir)
    version = None
    if run_id is not None:
        logger = tracking.RunLogger(tracking_uri, run_id)
        logger.log_artifacts(motion_dir, MOTION_DIR)
        if cfg.train.register:
            from animatediff.registry import register_motion_module

            version = register_motion_module(
                cfg, motion_dir, run_id, tracking_uri, val_loss=state.get("val_loss")
            )
        logger.set_terminated("FINISHED")
    return TrainOutcome(
        run_id=run_id,
        checkpoint_path=checkpoint.path,
        step=state["position"]["step"],
        val_loss=state.get("val_loss"),
        motion_dir=motion_dir,
        model_version=version,
    )


def _init_local_ray(cfg: Config) -> None:
    """Without a cluster to join (``RAY_ADDRESS``), start a local one with room for Ray Data next
    to the workers: on a small machine the workers would otherwise take every CPU and the shard
    reads would wait forever."""
    import math

    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return
    needed = math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker) + 2
    ray.init(num_cpus=max(os.cpu_count() or 1, needed))


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_cli(argv, description=__doc__.splitlines()[0])
    _init_local_ray(cfg)
    outcome = run_training(cfg)
    print(
        f"trained to step {outcome.step}: val_loss={outcome.val_loss} "
        f"checkpoint={outcome.checkpoint_path} mlflow_run={outcome.run_id} "
        f"model_version={outcome.model_version}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
