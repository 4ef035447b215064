"""Loading a registered motion module: from the store it is asked for (not MLflow's process-wide
one), and whatever the name of the folder the trainer logged."""

from __future__ import annotations

import os
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
