"""Shared fixtures: one local Ray cluster and one tiny base model for the whole test session;
the environment put back after every test; GPUs hidden unless a run selects the `gpu` tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from marker_selection import selects_marker

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GPU_SELECTED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # The CPU suite's in-process code never looks for a GPU (torch, DeepSpeed's accelerator and
    # the encoder's device are chosen once per process); a run that selects the `gpu` tests
    # (`pytest -m gpu`) keeps the machine's GPUs. The session Ray cluster hides them from its
    # workers either way (`ray_cluster`).
    selected = selects_marker(config.option.markexpr, "gpu")
    config.stash[GPU_SELECTED] = selected
    if not selected:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `gpu` test without a CUDA device fails when the run asked for the `gpu` tests (a
    silent skip there once hid that they never ran) and is skipped otherwise."""
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    if item.config.stash[GPU_SELECTED]:
        pytest.fail(
            "-m selected the gpu tests but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
            pytrace=False,
        )
    pytest.skip("needs a CUDA GPU; GPUs stay visible only in a run that selects them: -m gpu")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test leaves ``os.environ`` as it found it: code run in-process (a benchmark's
    ``MASTER_ADDR``/``RANK``/``WORLD_SIZE``, MLflow's ``MLFLOW_TRACKING_URI``) must not reach
    the tests that run after it."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _session_temporary_files(tmp_path_factory: pytest.TempPathFactory):
    """Python's temporary files in the test process go under pytest's own folder, which pytest
    prunes: e.g. ``run_training``'s export copy (``$TMPDIR/animatediff-train-*`` when a test
    passes no ``export_dir``), ~20 folders per run that nothing else removes. Ray keeps its own
    ``/tmp/ray`` (it reads ``$TMPDIR``, not ``tempfile.tempdir``)."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfiles"))
    yield
    tempfile.tempdir = previous


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


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    """A moto S3 server on a free port of 127.0.0.1 for one test, and a boto3 client of it
    (the buckets are the test's to create); ``AWS_*`` point boto3, pyarrow and the project's
    storage at it for the test."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    finally:
        server.stop()


# Fixtures that start a cluster or a server: tests using them (directly or through another
# fixture) are `integration`; `make test-unit` runs the rest in a minute or two.
SERVER_FIXTURES = {
    "ray_cluster",
    "head_node",
    "s3",
    "mlflow_server",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
