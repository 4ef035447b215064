"""Loading a registered motion module: from the store it is asked for (not MLflow's process-wide
one), and whatever the name of the folder the trainer logged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from serve_helpers import random_motion_modules

from animatediff.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs/tiny.yaml")


@pytest.fixture
def global_mlflow(monkeypatch: pytest.MonkeyPatch):
    """Lets a test set MLflow's process-wide URIs; restores them (and their env vars) after."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.pop(name, None) for name in names}
    yield
    for name, value in saved.items():  # mlflow.set_*_uri also wrote these
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def _register(work: Path, folder: str, seed: int, tracking_uri: str) -> torch.nn.Module:
    """Register one tiny motion module, logged from a folder called ``folder``, into
    ``tracking_uri``; returns the module."""
    from animatediff.checkpoints import save_motion_modules
    from tracking.registry import register_motion_module
    from tracking.runs import client, experiment_id

    modules = random_motion_modules(CFG, seed)
    directory = work / f"seed-{seed}" / folder
    save_motion_modules(modules, CFG.model.motion, directory)
    mlflow_client = client(tracking_uri)
    run = mlflow_client.create_run(experiment_id(CFG.mlflow, tracking_uri))
    register_motion_module(CFG, directory, run.info.run_id, tracking_uri, val_loss=0.5)
    mlflow_client.set_terminated(run.info.run_id)
    return modules


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        torch.equal(state_a[key], state_b[key]) for key in state_a
    )


def test_the_default_store_is_mlflow_db_with_artifacts_beside_it(tmp_path, monkeypatch):
    """Nothing configured (no ``mlflow.tracking_uri``, no ``$MLFLOW_TRACKING_URI``): runs and
    the registry go to ``sqlite:///mlflow.db`` in the working directory, made absolute (Ray's
    workers run in other directories), and artifacts to ``mlartifacts`` beside it, never to
    MLflow's own default ``./mlruns``."""
    from tracking.registry import load_registered_motion_module
    from tracking.runs import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (CFG.mlflow.tracking_uri, CFG.mlflow.artifact_location) == ("", "")
    uri = resolve_tracking_uri(CFG.mlflow)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    modules = _register(tmp_path / "work", "motion_module", seed=1, tracking_uri=uri)
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    assert len(list((tmp_path / "mlartifacts").rglob("motion_module.safetensors"))) == 1
    monkeypatch.chdir(ROOT)  # read back from elsewhere: nothing depends on the working directory
    loaded, _, _ = load_registered_motion_module(f"models:/{CFG.mlflow.registered_model}/1", uri)
    assert _same_weights(loaded, modules)


def test_loads_from_the_given_store_not_the_global_one(tmp_path, global_mlflow):
    import mlflow
    from mlflow.exceptions import MlflowException

    from tracking.registry import load_registered_motion_module

    store_a = f"sqlite:///{tmp_path}/a.db"
    store_b = f"sqlite:///{tmp_path}/b.db"
    expected = _register(tmp_path, "motion_module", seed=3, tracking_uri=store_a)
    mlflow.set_tracking_uri(store_b)
    mlflow.set_registry_uri(store_b)
    name = CFG.mlflow.registered_model

    for uri in (f"models:/{name}@{CFG.mlflow.candidate_alias}", f"models:/{name}/1"):
        modules, motion_cfg, meta = load_registered_motion_module(uri, tracking_uri=store_a)
        assert _same_weights(modules, expected)
        assert motion_cfg == CFG.model.motion
        assert (meta["name"], meta["version"], meta["val_loss"]) == (name, "1", 0.5)
        assert meta["base"]["pretrained"] == CFG.model.base.pretrained
    # The global settings are untouched, and store B really does not hold the model.
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (store_b, store_b)
    with pytest.raises(MlflowException):
        load_registered_motion_module(f"models:/{name}@{CFG.mlflow.candidate_alias}", store_b)


def test_registering_leaves_global_uris_and_env_alone(tmp_path, global_mlflow):
    import mlflow

    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    os.environ["MLFLOW_TRACKING_URI"] = elsewhere  # a user's own setting, by env only
    _register(tmp_path, "motion_module", seed=1, tracking_uri=f"sqlite:///{tmp_path}/a.db")
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == elsewhere

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/explicit.db")
    _register(tmp_path, "motion_module", seed=2, tracking_uri=f"sqlite:///{tmp_path}/a.db")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/explicit.db"
    versions = mlflow.MlflowClient(f"sqlite:///{tmp_path}/a.db").search_model_versions(
        f"name='{CFG.mlflow.registered_model}'"
    )
    assert sorted(str(v.version) for v in versions) == ["1", "2"]


def test_any_logged_folder_name_loads(tmp_path, global_mlflow):
    import mlflow
    from serve_helpers import scoped_mlflow_uris

    from tracking.registry import load_registered_motion_module

    store = f"sqlite:///{tmp_path}/a.db"
    expected = _register(tmp_path, "weights", seed=5, tracking_uri=store)
    with scoped_mlflow_uris(store):  # models:/ URIs resolve through the global registry URI
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{CFG.mlflow.registered_model}/1", dst_path=str(tmp_path / "dl")
        )
    assert (Path(local) / "artifacts" / "weights").is_dir()
    assert not (Path(local) / "artifacts" / "motion_module").exists()
    for uri in (local, f"models:/{CFG.mlflow.registered_model}/1"):
        modules, _, meta = load_registered_motion_module(uri, tracking_uri=store)
        assert _same_weights(modules, expected)
        assert meta["base"]["pretrained"] == CFG.model.base.pretrained


def test_identical_weights_are_registered_once(tmp_path, capsys):
    """The registry rule: a version per distinct weights. Registering the same weights again
    (another run, here) creates nothing, moves ``candidate`` back to the version holding them
    and says so, in the log and in the run's events."""
    import hashlib

    from mlflow import MlflowClient

    from tracking.registry import register_motion_module
    from tracking.runs import client, experiment_id

    store = f"sqlite:///{tmp_path}/a.db"
    name = CFG.mlflow.registered_model
    _register(tmp_path, "motion_module", seed=3, tracking_uri=store)
    _register(tmp_path, "motion_module", seed=4, tracking_uri=store)
    store_client = MlflowClient(store)
    assert store_client.get_model_version_by_alias(name, "candidate").version == 2

    copy = tmp_path / "again" / "motion_module"  # the first weights, exported again elsewhere
    shutil.copytree(tmp_path / "seed-3" / "motion_module", copy)
    run = client(store).create_run(experiment_id(CFG.mlflow, store))
    version = register_motion_module(CFG, copy, run.info.run_id, store, val_loss=0.5, step=9)

    assert version == "1"
    assert sorted(int(v.version) for v in store_client.search_model_versions()) == [1, 2]
    assert store_client.get_model_version_by_alias(name, "candidate").version == 1
    sha = hashlib.sha256((copy / "motion_module.safetensors").read_bytes()).hexdigest()
    assert store_client.get_model_version(name, "1").tags["weights_sha256"] == sha
    out = capsys.readouterr().out
    assert f"identical weights (sha256 {sha[:12]}) are already {name} version 1" in out
    events = store_client.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    assert "no new version; @candidate -> version 1" in events
    # No logged model was made for the duplicate either.
    models = store_client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 2


def test_a_version_carries_its_provenance(tmp_path):
    """Tags (weights, step, stage, preset, commit), a description linking the run, the logged
    model named after what it is, and the registered model's own description."""
    from mlflow import MlflowClient

    from animatediff.checkpoints import save_motion_modules
    from tracking.provenance import code_version
    from tracking.registry import register_motion_module
    from tracking.runs import client, experiment_id

    store = f"sqlite:///{tmp_path}/a.db"
    directory = tmp_path / "motion_module"
    save_motion_modules(random_motion_modules(CFG, 1), CFG.model.motion, directory)
    run = client(store).create_run(experiment_id(CFG.mlflow, store), run_name="trainer")
    version = register_motion_module(CFG, directory, run.info.run_id, store, val_loss=0.25, step=7)
    store_client = MlflowClient(store)
    found = store_client.get_model_version(CFG.mlflow.registered_model, version)
    assert (found.tags["step"], found.tags["stage"], found.tags["preset"]) == (
        "7",
        "motion",
        "tiny",
    )
    assert found.tags["val_loss"] == "0.25"
    code = code_version()
    if code is not None:
        assert found.tags["git_commit"] == code.commit
    link = f"[trainer](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})"
    assert found.description.startswith(f"Trained by {link}: `motion` stage, 7 steps")
    assert found.tags["weights_sha256"] in found.description
    registered = store_client.get_registered_model(CFG.mlflow.registered_model)
    assert "Identical weights are never registered twice" in registered.description
    (logged,) = store_client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged.name == "motion-module" and logged.tags["step"] == "7"
    assert logged.params["train.max_steps"] == str(CFG.train.max_steps)


def test_promotion_reads_a_versions_loss_from_its_tag_else_its_runs_val_loss(tmp_path):
    from types import SimpleNamespace

    from tracking.registry import version_loss
    from tracking.runs import RunLogger, client, experiment_id

    store = f"sqlite:///{tmp_path}/a.db"
    mlflow_client = client(store)
    run = mlflow_client.create_run(experiment_id(CFG.mlflow, store))
    RunLogger(store, run.info.run_id).log_metrics({"val/loss": 0.75}, step=6)
    untagged = SimpleNamespace(tags={}, run_id=run.info.run_id)
    assert version_loss(mlflow_client, "m", untagged) == 0.75
    tagged = SimpleNamespace(tags={"val_loss": "0.5"}, run_id=run.info.run_id)
    assert version_loss(mlflow_client, "m", tagged) == 0.5
