"""Shared fixtures: one local Ray cluster and one tiny base model for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

# DeepSpeed/torch print less and never look for a GPU in CI.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``builtin:tiny`` base saved once as a diffusers StableDiffusionPipeline directory."""
    from animatediff.tiny import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny", seed=0)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one.

    Sized like the jobs' own local clusters (``jobs.cluster.local_cpus``: 4 logical CPUs for the
    tiny preset on 2 cores, so 2 Train workers do not starve Ray Data); GPUs hidden."""
    import ray

    from animatediff.config import load_config
    from jobs.cluster import init_ray

    init_ray(load_config(CONFIG), hide_gpus=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding tiny latent shards (``train_helpers.write_latent_shards``) and the
    MLflow preprocess run that ``jobs.preprocess`` would have logged for them; the training
    tests write their runs, checkpoints and MLflow store beside them."""
    from train_helpers import log_preprocess_run_for, tiny_train_config, write_latent_shards

    root = tmp_path_factory.mktemp("train")
    cfg = tiny_train_config(root)
    write_latent_shards(cfg)
    log_preprocess_run_for(cfg)
    return root


@pytest.fixture(scope="session")
def reference(ray_cluster, shards: Path):
    """``(TrainOutcome, Config)`` of one uninterrupted tiny ZeRO-2 run (6 steps, checkpoints
    every 2, keep 2), registered: the reference of the training tests, and the store the MLflow
    browsing tests open."""
    from train_helpers import STEPS, tiny_train_config

    from trainer import run_training

    cfg = tiny_train_config(shards, *STEPS, "train.run_name=reference")
    return run_training(cfg), cfg


# Fixtures that start a cluster or a server: tests using them (directly or through another
# fixture) are `integration`; `make test-unit` runs the rest in a minute or two.
SERVER_FIXTURES = {
    "ray_cluster",
    "head_node",
    "s3_bucket",
    "s3_endpoint",
    "s3_server",
    "mlflow_server",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
