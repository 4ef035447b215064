"""Shared fixtures: one local Ray cluster and one tiny base model for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

    2 physical cores: Ray gets 4 logical CPUs so that 2 Train workers do not starve Ray Data
    (see docs in README, "Ray on small machines")."""
    import ray

    # address="local": always a fresh cluster, never one that `ray start` left on this machine.
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
    )
    yield ray
    ray.shutdown()
