"""Shared by the serving and job tests: a SQLite MLflow registry holding tiny motion modules."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from animatediff.config import Config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_motion_modules(cfg: Config, seed: int) -> torch.nn.Module:
    """Motion modules for the tiny base with small random weights: unlike a fresh (identity)
    module, two seeds give two different videos, so a test can tell versions apart."""
    from animatediff.base_model import load_base_model
    from animatediff.motion_module import MotionModules

    unet_config = load_base_model(cfg.model.base).unet.config
    modules = MotionModules(
        tuple(unet_config.block_out_channels), unet_config.layers_per_block, cfg.model.motion
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return modules


def random_motion_lora(cfg: Config, seed: int, std: float = 0.5):
    """A rank-2 MotionLoRA for the tiny base's motion modules with random (trained-looking)
    weights (``animatediff.motion_lora.MotionLora``)."""
    from animatediff.lora import LoraLinear, add_lora
    from animatediff.motion_lora import from_adapters

    modules = random_motion_modules(cfg, seed)
    torch.manual_seed(seed)
    add_lora(modules, ("to_q", "to_k", "to_v", "to_out.0"), rank=2, alpha=2.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules.modules():
            if isinstance(module, LoraLinear):
                module.up.weight.copy_(
                    std * torch.randn(module.up.weight.shape, generator=generator)
                )
    return from_adapters(modules)


def register_motion_lora(cfg: Config, work: Path, name: str, seed: int) -> str:
    """Register a random MotionLoRA as ``<registered_model>-motion_lora-<name>`` through the
    training registry code (alias ``candidate``); returns the version."""
    import dataclasses

    from animatediff.motion_lora import save_motion_lora
    from tracking.registry import register_export
    from tracking.runs import client, experiment_id, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow)
    directory = work / f"lora-{name}-{seed}" / "motion_lora"
    save_motion_lora(random_motion_lora(cfg, seed), directory, {"name": name})
    train = dataclasses.replace(
        cfg.train,
        stage="motion_lora",
        init_from=f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.champion_alias}",
        lora=dataclasses.replace(cfg.train.lora, rank=2, name=name),
    )
    lora_cfg = dataclasses.replace(cfg, train=train)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment_id(cfg.mlflow, uri), run_name=f"lora-{name}")
    version = register_export(lora_cfg, directory, run.info.run_id, uri, val_loss=1.0)
    mlflow_client.set_terminated(run.info.run_id)
    return version


def register_versions(cfg: Config, work: Path, seeds: list[int]) -> list[str]:
    """Register one motion module per seed through the training registry code (alias
    ``candidate`` on each); point ``champion`` at the first. Returns the versions."""
    from animatediff.checkpoints import save_motion_modules
    from tracking.registry import register_motion_module
    from tracking.runs import client, experiment_id, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow)
    mlflow_client = client(uri)
    versions = []
    for seed in seeds:
        # The registry stores the directory under its own name: keep the name it expects.
        directory = work / f"seed-{seed}" / "motion_module"
        save_motion_modules(random_motion_modules(cfg, seed), cfg.model.motion, directory)
        run = mlflow_client.create_run(experiment_id(cfg.mlflow, uri), run_name=f"seed-{seed}")
        versions.append(register_motion_module(cfg, directory, run.info.run_id, uri, val_loss=1.0))
        mlflow_client.set_terminated(run.info.run_id)
    mlflow_client.set_registered_model_alias(
        cfg.mlflow.registered_model, cfg.mlflow.champion_alias, versions[0]
    )
    return versions


@contextmanager
def scoped_mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``tracking_uri`` inside the block
    only, for the fluent calls that read them (``mlflow.pyfunc.load_model("models:/...")``): the
    project itself never sets them.

    Both URIs, and the ``MLFLOW_*_URI`` environment variables that ``mlflow.set_*_uri`` also
    writes, are put back afterwards: a caller's own MLflow settings survive registering a model."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])  # also resets MLflow's tracer to the restored URI
        registry_utils._registry_uri = saved[1]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
