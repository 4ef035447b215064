"""Where a submitted job's results go: under ``ray job submit`` the relative result paths resolve
under ``$ANIMATEDIFF_HOME`` (never in Ray's per-job copy of the working dir), everything else is
left as written; a multi-node cluster writing to one node's disk gets a warning. The submitted
jobs themselves run in ``test_jobs.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from animatediff.config import load_config
from jobs import cli
from jobs.cluster import anchor_results, node_local_results, warn_if_multi_node_local

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_relative_results_resolve_under_the_home(tmp_path):
    cfg = load_config(TINY, ["data.output=latents", "mlflow.artifact_location=artifacts"])
    anchored = anchor_results(cfg, tmp_path)
    assert anchored.output_dir == str(tmp_path / "outputs")
    assert anchored.data.output == str(tmp_path / "latents")
    assert anchored.train.storage_path == str(tmp_path / "outputs/ray_results")
    assert anchored.train.data_uri == str(tmp_path / "outputs/latents/tiny")
    assert anchored.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert anchored.mlflow.artifact_location == str(tmp_path / "artifacts")
    # Files shipped with the project stay where the working dir has them.
    assert anchored.generate.prompts == cfg.generate.prompts == "configs/prompts.txt"
    assert anchored.model == cfg.model and anchored.serve == cfg.serve


def test_absolute_remote_and_server_locations_are_kept(tmp_path, monkeypatch):
    absolute = [
        f"output_dir={tmp_path / 'out'}",
        "train.storage_path=s3://bucket/runs",
        "train.data_uri=s3://bucket/latents",
        "evaluate.data_uri=~/held-out",
        "mlflow.tracking_uri=http://127.0.0.1:5000",
    ]
    cfg = load_config(TINY, absolute)
    assert anchor_results(cfg, tmp_path / "home") == cfg
    # A relative SQLite store from the environment is anchored too: workers must name the same.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    anchored = anchor_results(load_config(TINY), tmp_path)
    assert anchored.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'runs/mlflow.db'}"


def test_only_a_submitted_job_is_anchored(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("ANIMATEDIFF_HOME", str(tmp_path / "home"))
    local, _ = cli.parse(["--config", str(TINY)], cli.Job("t", "", "", ()))
    assert local.output_dir == "outputs"  # a local run keeps the current directory
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    submitted, _ = cli.parse(["--config", str(TINY)], cli.Job("t", "", "", ()))
    assert submitted.output_dir == str(tmp_path / "home/outputs")
    assert (tmp_path / "home").is_dir()
    assert f"resolve under {tmp_path / 'home'}" in capsys.readouterr().out


def test_the_default_home_is_in_the_user_directory(tmp_path, monkeypatch):
    from jobs.cluster import results_home

    monkeypatch.delenv("ANIMATEDIFF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert results_home() == tmp_path / "animatediff-ray"


def test_several_nodes_writing_to_one_disk_are_warned(capsys):
    local = load_config(TINY)
    assert node_local_results(local) == ["output_dir", "train.storage_path", "mlflow.tracking_uri"]
    warn_if_multi_node_local(local, num_nodes=1)
    assert capsys.readouterr().out == ""
    warn_if_multi_node_local(local, num_nodes=3)
    line = capsys.readouterr().out
    assert line.startswith("warning: the cluster has 3 nodes") and "train.storage_path" in line
    shared = load_config(
        TINY,
        [
            "output_dir=s3://b/out",
            "train.storage_path=s3://b/runs",
            "mlflow.tracking_uri=http://mlflow:5000",
        ],
    )
    warn_if_multi_node_local(shared, num_nodes=3)
    assert capsys.readouterr().out == ""
