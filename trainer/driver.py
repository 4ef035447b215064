"""The driver side of a training run: data, MLflow run, ``TorchTrainer.fit``, registration.

Re-running with the same ``train.run_name`` and ``train.storage_path`` resumes from the latest
checkpoint (DeepSpeed state of every rank, step, data position, RNG states) and logs to the same
MLflow run. Worker failures restart the group from the latest checkpoint (``train.max_failures``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animatediff.base_model import resolve_pretrained
from animatediff.config import (
    BaseModelConfig,
    Config,
    ConfigError,
    TrainConfig,
    save_config,
    to_dict,
)
from animatediff.storage import (
    exists,
    is_object_store,
    locate,
    ray_storage,
    read_bytes,
    write_atomic,
)
from trainer import checkpoint as checkpoint_store
from trainer.checkpoint import TrainerState
from trainer.data import TrainingData, load_training_data
from trainer.export import UNET_EXPORT, export_name
from trainer.loop import StepHook, train_loop_per_worker


@dataclass
class TrainOutcome:
    """What ``run_training`` returns."""

    run_id: str | None
    """The MLflow run id (None with ``mlflow.enabled: false``)."""
    checkpoint_path: str
    """The latest checkpoint (local path or URI)."""
    step: int
    val_loss: float | None
    export_path: Path
    """A local copy of the final export: ``motion_module/``, a StableDiffusion directory
    (``image`` stage), ``lora.safetensors`` or ``motion_lora/``."""
    model_version: str | None
    """The registered model version (None without registration)."""

    @property
    def motion_dir(self) -> Path:
        """The native motion module (``motion`` stage)."""
        return self.export_path


def _worker_env() -> dict[str, str]:
    """Object-store credentials, the tracking server, and glibc malloc tuning (on CPU, e.g.
    ``MALLOC_MMAP_THRESHOLD_`` hands large freed buffers back to the OS) reach the workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_", "MALLOC_"))}


INIT_FROM_SOURCE = "source.json"


def resolve_init_from(cfg: Config) -> tuple[Config, str | None]:
    """``cfg`` with ``train.init_from`` readable by every worker and ``model.motion`` the config
    that module trains with (``training.with_init_from_config``), and what it was pinned to.

    A ``models:/`` reference is resolved here, once: its version is pinned and the module copied
    next to the run's checkpoints (``<train.storage_path>/<train.run_name>.init_from``, local or
    ``s3://``), so workers on every node read the same weights, and a resumed run keeps them even
    if the alias has moved since (a MotionLoRA's frozen module is not in its checkpoints)."""
    from animatediff.checkpoints import save_motion_modules
    from animatediff.training import with_init_from_config

    train = cfg.train
    ref = train.init_from
    if not ref:
        return cfg, None
    if ref.startswith("models:/"):
        from tracking.registry import load_registered_motion_module, resolve_motion_source

        target = f"{train.storage_path.rstrip('/')}/{train.run_name}.init_from"
        record = locate(target, cfg.storage).join(INIT_FROM_SOURCE)
        if exists(record):
            pinned = json.loads(read_bytes(record))
            if pinned["ref"] != ref:
                raise ConfigError(
                    f"train.init_from: run {train.run_name!r} started from {pinned['ref']} "
                    f"({pinned['pinned']}), not {ref}: use another train.run_name"
                )
            label = pinned["pinned"]
        else:
            source = resolve_motion_source(ref, cfg)
            modules, motion_cfg, _ = load_registered_motion_module(source.uri, source.tracking_uri)
            save_motion_modules(modules, motion_cfg, target)
            label = source.uri
            write_atomic(record, json.dumps({"ref": ref, "pinned": label}).encode())
        path = target
    else:
        path = ref if "://" in ref else str(Path(ref).expanduser().resolve())
        label = path
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(train, init_from=path))
    return with_init_from_config(cfg), label


def _start_tracking(
    cfg: Config, data: TrainingData, init_from: str | None = None
) -> tuple[str | None, str | None]:
    """``(run_id, tracking_uri)`` of the run's MLflow run (created, or found again on resume),
    with its provenance tags, description, params and data inputs."""
    import functools

    from tracking import notes, runs
    from tracking.datasets import log_shard_set
    from tracking.provenance import code_version, run_tags

    if not cfg.mlflow.enabled:
        return None, None
    tracking_uri = runs.resolve_tracking_uri(cfg.mlflow)
    train = cfg.train
    params = {
        # Absolute, as the jobs resolve them (a relative path means nothing in the UI).
        "train.data_uri": locate(train.data_uri, cfg.storage).uri,
        "train.storage_path": locate(train.storage_path, cfg.storage).uri,
        "train.validation_set": data.validation,
    }
    if train.val_data_uri:
        params["train.val_data_uri"] = locate(train.val_data_uri, cfg.storage).uri
    if init_from:
        params["train.init_from.source"] = init_from
    shards = data.shards
    description = ""
    if shards is not None:
        params["data.fingerprint"] = shards.fingerprint
        link = functools.partial(runs.run_link, tracking_uri)
        description = notes.training_run(cfg, shards, data.validation, code_version(), link)
    tags = run_tags(cfg, "train", shards.fingerprint if shards else None)
    run_id, created = runs.start_or_resume_run(
        cfg, run_directory(cfg), tracking_uri, params, tags, description
    )
    if not created:
        runs.add_event(
            tracking_uri, run_id, f"re-run of `jobs.train`, code {notes.code_line(code_version())}"
        )
    if shards is not None:
        log_shard_set(tracking_uri, run_id, shards, "training")
    if data.val_shards is not None:
        log_shard_set(tracking_uri, run_id, data.val_shards, "validation")
    with tempfile.TemporaryDirectory() as directory:
        save_config(cfg, Path(directory) / "config.yaml")
        runs.RunLogger(tracking_uri, run_id).log_artifact(Path(directory) / "config.yaml")
    return run_id, tracking_uri


def run_training(
    cfg: Config, hooks: Sequence[StepHook] = (), export_dir: Path | None = None
) -> TrainOutcome:
    """Fit (or resume) the run named by ``cfg.train``, then log and register the motion module.

    ``hooks`` run on every rank before each optimizer step (they are pickled to the workers).
    ``export_dir`` receives the local copy of the final export (``TrainOutcome.export_path``);
    without it, a new ``$TMPDIR/animatediff-train-*`` directory that the caller owns."""
    from ray.data import ExecutionOptions
    from ray.train import (
        Checkpoint,
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    from tracking.runs import RunLogger

    train = cfg.train
    found = checkpoint_store.latest(locate(run_directory(cfg), cfg.storage))
    if found is not None and found[1].position.step >= train.max_steps:
        location, state = found
        print(
            f"train: run {train.run_name!r} already finished at step {state.position.step} "
            f"(train.max_steps={train.max_steps}): nothing to do; raise train.max_steps to "
            "continue it, or choose another train.run_name",
            flush=True,
        )
        checkpoint = Checkpoint(location.path, location.fs if "://" in location.uri else None)
        return _finish(cfg, checkpoint, state.mlflow_run_id, None, export_dir, finished_before=True)
    # Materialise a built-in base here, outside torch.distributed: transformers' save_pretrained
    # writes nothing on a non-zero rank, so racing workers could publish an empty copy.
    resolve_pretrained(cfg.model.base)
    cfg, init_from = resolve_init_from(cfg)
    train = cfg.train
    data = load_training_data(cfg)
    run_id, tracking_uri = _start_tracking(cfg, data, init_from)
    storage_path, filesystem = ray_storage(train.storage_path, cfg.storage)
    env_vars = _worker_env()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": to_dict(cfg),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "val_clips": data.val_clips,
            "hooks": list(hooks),
            # With data.buckets: each bucket's dataset name and share of the steps.
            "buckets": [(b.name, b.weight) for b in data.buckets] if data.buckets else None,
        },
        scaling_config=scaling_config(train),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        run_config=RunConfig(
            name=train.run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_last),
            worker_runtime_env={"env_vars": env_vars} if env_vars else None,
        ),
        datasets=(
            {b.name: b.dataset for b in data.buckets} if data.buckets else {"train": data.dataset}
        ),
        # A deterministic split: a resumed run re-reads each epoch in the same order.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    try:
        with _controller_env(train):
            result = trainer.fit()
    except Exception:
        if run_id is not None:
            RunLogger(tracking_uri, run_id).set_terminated("FAILED")
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"run {train.run_name!r} finished without a checkpoint")
    tags = {"init_from": init_from} if init_from else {}
    return _finish(cfg, result.checkpoint, run_id, tracking_uri, export_dir, tags=tags)


class _PollInterval:
    """``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` in the driver's environment while ``fit`` starts Ray
    Train's controller, which reads its poll interval from the variables that ``fit`` passes on.

    The environment is the process's: trainings that run at once from threads share one setting,
    set by the first to start and restored when the last ends."""

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before: str | None = None

    @contextlib.contextmanager
    def __call__(self, train: TrainConfig) -> Iterator[None]:
        if train.health_check_interval_s is None:
            yield
            return
        value = str(train.health_check_interval_s)
        with self.lock:
            if self.users and os.environ.get(self.name) != value:
                raise ConfigError(
                    f"train.health_check_interval_s: {value} s, but a training running at once "
                    f"in this process polls every {os.environ.get(self.name)} s; trainings that "
                    "run at once must share it"
                )
            if not self.users:
                self.before = os.environ.get(self.name)
                os.environ[self.name] = value
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if not self.users:
                    if self.before is None:
                        del os.environ[self.name]
                    else:
                        os.environ[self.name] = self.before


_controller_env = _PollInterval()


def scaling_config(train: TrainConfig) -> Any:
    """The workers' Ray ``ScalingConfig``: each reserves ``train.cpus_per_worker`` CPUs, a GPU
    with ``train.use_gpu`` and the custom ``train.worker_resources``; ``train.placement_strategy``
    spreads or packs them over the nodes."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=train.num_workers,
        use_gpu=train.use_gpu,
        resources_per_worker={"CPU": train.cpus_per_worker, **train.worker_resources},
        placement_strategy=train.placement_strategy,
    )


def checkpoint_uri(storage_path: str, path: str) -> str:
    """A checkpoint's ``path`` as Ray hands it back, as a URI a user can pass on: on S3 Ray's
    path is ``bucket/key`` without its scheme, which reads as a local relative path."""
    if is_object_store(storage_path) and not is_object_store(path):
        return "s3://" + path.lstrip("/")
    return path


def run_directory(cfg: Config) -> str:
    """Where Ray Train keeps this run: ``<train.storage_path>/<train.run_name>``."""
    return f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}"


def _finish(
    cfg: Config,
    checkpoint: Any,
    run_id: str | None,
    tracking_uri: str | None,
    export_dir: Path | None,
    *,
    finished_before: bool = False,
    tags: dict[str, str] | None = None,
) -> TrainOutcome:
    """Copy the final export out of the checkpoint (an ``image``-stage UNet becomes a whole
    StableDiffusion directory), log it, register it. A run that ``finished_before`` is only
    read back: nothing is logged or registered again."""
    from tracking.registry import register_export, registered_versions
    from tracking.runs import RunLogger, add_event, resolve_tracking_uri

    name = export_name(cfg.train)
    local = Path(export_dir or tempfile.mkdtemp(prefix="animatediff-train-"))
    local.mkdir(parents=True, exist_ok=True)
    with checkpoint_store.local_directory(checkpoint) as directory:
        state = TrainerState.read(directory)
        source = directory / name
        export_path = local / ("pipeline" if name == UNET_EXPORT else name)
        if export_path.is_dir():  # a rerun into the same export_dir replaces its copy
            shutil.rmtree(export_path)
        if source.is_file():
            shutil.copyfile(source, export_path)
        elif name == UNET_EXPORT:
            assemble_pipeline(cfg.model.base, source, export_path)
        else:
            shutil.copytree(source, export_path)
    version = None
    if finished_before and run_id is not None and cfg.mlflow.enabled:
        found = registered_versions(cfg, resolve_tracking_uri(cfg.mlflow), run_id)
        version = found[-1] if found else None
    elif run_id is not None:
        logger = RunLogger(tracking_uri, run_id)
        if export_path.is_dir():
            logger.log_artifacts(export_path, export_path.name)
        else:
            logger.log_artifact(export_path)
        if cfg.train.register:
            version = register_export(
                cfg,
                export_path,
                run_id,
                tracking_uri,
                val_loss=state.val_loss,
                step=state.position.step,
                tags=tags,
            )
        add_event(tracking_uri, run_id, f"finished at step {state.position.step}")
        logger.set_terminated("FINISHED")
    return TrainOutcome(
        run_id=run_id,
        checkpoint_path=checkpoint_uri(cfg.train.storage_path, checkpoint.path),
        step=state.position.step,
        val_loss=state.val_loss,
        export_path=export_path,
        model_version=version,
    )


def assemble_pipeline(base: BaseModelConfig, unet_dir: Path, target: Path) -> Path:
    """A StableDiffusion directory: the frozen base's components with the trained ``unet/``
    (``model.base.pretrained=<target>`` loads it). A personalized base's single file and LoRAs
    are baked into its components first, so the directory stands on its own."""
    from animatediff.base_model import load_base_model, resolve_pretrained

    source = Path(resolve_pretrained(base))
    if not source.is_dir():
        raise ValueError(f"model.base.pretrained: {source} is not a local directory to copy from")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("unet"))
    if base.single_file or base.loras:
        components = load_base_model(base)
        components.vae.save_pretrained(target / "vae")
        components.text_encoder.save_pretrained(target / "text_encoder")
    shutil.copytree(unet_dir, target / "unet")
    return target
