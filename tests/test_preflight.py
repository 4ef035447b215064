"""Jobs check their inputs before they start Ray: a mistyped path, an output that is a file, a
base model that cannot be loaded from here, a registry that does not hold what was asked for. Each
ends in one line naming the option and exit status 2, within seconds, with nothing started."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from serve_helpers import free_port

from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny.yaml")


def _run(job: str, args: list[str], capsys) -> tuple[int, str]:
    import importlib

    import ray

    module = importlib.import_module(f"jobs.{job}")
    started: list[str] = []  # other tests' Ray may already run in this process: watch the calls
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(ray, "init", lambda *a, **k: started.append("ray")))
        if hasattr(module, "init_ray"):
            patches.enter_context(
                mock.patch.object(module, "init_ray", lambda *a, **k: started.append("init_ray"))
            )
        code = cli.run(module.main, args)
    assert not started, f"refused only after starting Ray: {started}"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no traceback
    return code, err


@pytest.fixture
def table(tmp_path) -> Path:
    (tmp_path / "videos").mkdir()
    path = tmp_path / "results.csv"
    path.write_text("videoid,page_dir,name\n1,p,a caption\n")
    return path


def test_preprocess_checks_its_options_before_starting_ray(table, tmp_path, capsys):
    base = ["--config", TINY, f"data.video_root={tmp_path / 'videos'}"]
    cases = [
        ([], "data.input: required"),
        ([f"data.input={tmp_path / 'nope.csv'}"], "data.input: "),
        ([f"data.input={tmp_path}"], "is a directory, not a file"),
        ([f"data.input={table}", f"data.video_root={tmp_path / 'missing'}"], "data.video_root: "),
        ([f"data.input={table}", f"data.video_root={table}"], "is a file, not a directory"),
        ([f"data.input={table}", f"data.output={table}"], "data.output: "),
        ([f"data.input={table}", f"output_dir={table}"], "output_dir: "),
        ([f"data.input={table}", f"model.base.pretrained={tmp_path / 'sd'}"], "model.base.pre"),
        ([f"data.input={table}", f"model.base.pretrained={table}"], "single-file checkpoint"),
    ]
    manifest = tmp_path / "clips.csv"  # a manifest, read with the preset's format: webvid
    manifest.write_text("video,caption\na.mp4,a caption\n")
    cases += [
        ([f"data.input={manifest}"], "data.id_column: column 'videoid' not in"),
        ([f"data.input={manifest}"], "set data.format=csv"),
        (["data.format=folder", f"data.input={table}"], "must be empty with data.format=folder"),
    ]
    for extra, words in cases:
        code, err = _run("preprocess", base + extra, capsys)
        assert code == 2 and words in err, (extra, err)
    _, err = _run("preprocess", [*base, f"data.input={tmp_path / 'nope.csv'}"], capsys)
    assert "does not exist" in err


def test_train_generate_and_serve_check_theirs(tmp_path, capsys):
    code, err = _run("train", ["--config", TINY, f"train.data_uri={tmp_path / 'no'}"], capsys)
    assert code == 2 and "train.data_uri: " in err and "does not exist" in err
    (tmp_path / "file").write_text("x")
    code, err = _run(
        "train",
        ["--config", TINY, f"train.data_uri={tmp_path}", f"train.storage_path={tmp_path}/file/x"],
        capsys,
    )
    assert code == 2 and "train.storage_path: " in err
    code, err = _run("generate", ["--config", TINY, f"generate.prompts={tmp_path}/p.txt"], capsys)
    assert code == 2 and "generate.prompts: " in err
    (tmp_path / "p.txt").write_text('{"prompt": "a", "colour": 1}\n')
    code, err = _run("generate", ["--config", TINY, f"generate.prompts={tmp_path}/p.txt"], capsys)
    assert code == 2 and "generate.prompts: " in err and "unknown keys" in err
    code, err = _run(
        "serve", ["--config", TINY, f"serve.bases.toon.pretrained={tmp_path}/x"], capsys
    )
    assert code == 2 and "serve.bases.toon.pretrained: " in err


def _train_paper_preset(
    env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    full |= {"PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")} | env
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", "configs/sd15_webvid.yaml"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, time.monotonic() - start


def test_the_paper_preset_offline_fails_in_seconds_naming_the_option(tmp_path):
    """It once retried the hub for about 5 minutes and ended in a transformers traceback."""
    done, seconds = _train_paper_preset({"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: model.base.pretrained: 'stable-diffusion-v1-5/")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local diffusers directory" in lines[0]
    assert "model.base.single_file" in lines[0]
    assert seconds < 60  # mostly the interpreter and imports


def test_an_unreachable_hub_fails_in_seconds(tmp_path):
    """No network, no offline flag: one short request to the hub, not minutes of retries."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done, seconds = _train_paper_preset({"HF_ENDPOINT": endpoint}, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.base.pretrained: " in done.stderr and "cannot be reached" in done.stderr
    assert endpoint in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert seconds < 60


def test_a_hub_id_in_the_local_cache_passes_offline(tmp_path, monkeypatch):
    from animatediff.config import BaseModelConfig
    from animatediff.preflight import check_base_model

    repo = "someone/some-model"
    snapshot = tmp_path / "hf" / "hub" / "models--someone--some-model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    check_base_model(BaseModelConfig(pretrained=repo))


def test_promote_without_a_registry_is_one_line(tmp_path, monkeypatch, capsys):
    """No --config: MLflow's default store in the working directory; once a raw
    MlflowException traceback (and a stray empty mlflow.db)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, err = _run("promote", [], capsys)
    assert code == 2 and "mlflow.tracking_uri: " in err and "--config" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_promote_names_what_the_registry_holds(tmp_path, capsys):
    from serve_helpers import register_versions

    from animatediff.config import load_config

    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    store.append(f"mlflow.artifact_location={tmp_path}/artifacts")
    versions = register_versions(load_config(TINY, store), tmp_path, seeds=[1])
    capsys.readouterr()  # MLflow's own log lines while registering
    code, err = _run("promote", ["--config", TINY, *store, "--version", "99"], capsys)
    assert code == 2 and "--version 99: not in" in err and f"versions: {versions[0]}" in err
    code, err = _run("promote", ["--config", TINY, *store, "mlflow.registered_model=other"], capsys)
    assert code == 2 and "mlflow.registered_model: no model 'other'" in err
    assert "animatediff-tiny-motion" in err
    assert cli.run(__import__("jobs.promote").promote.main, ["--config", TINY, *store]) == 0
