"""Shared by the serving and job tests: a SQLite MLflow registry holding tiny motion modules."""

from __future__ import annotations

import socket
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
