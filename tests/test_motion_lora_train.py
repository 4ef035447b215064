"""``train.init_from`` and ``train.stage=motion_lora`` through the real trainer (Ray Train +
DeepSpeed on the session cluster, MLflow in SQLite): a domain fine-tune that starts from a
checkpoint of the original code, then a MotionLoRA on camera-motion clips that starts from the
fine-tune's registered version. Two short one-worker runs, sharing one shard set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_train_config, write_latent_shards

from animatediff import motion_lora as ml
from trainer import run_training

CAMERA = "data.camera_motion=zoom_in"


@pytest.fixture(scope="module")
def work(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("motion_lora")
    write_latent_shards(tiny_train_config(root, CAMERA))  # a zoom_in training set
    return root


def _original_train_py_checkpoint(cfg, path: Path) -> dict[str, torch.Tensor]:
    """What the original train.py saves: {"global_step", "state_dict": the whole UNet's
    state_dict()}, motion modules without position tables (persistent=False there)."""
    import dataclasses

    from animatediff.base_model import load_base_model
    from animatediff.training import new_motion_modules_for

    unet2d = load_base_model(cfg.model.base).unet
    motion_cfg = dataclasses.replace(cfg.model.motion, zero_init_out=False)
    modules = new_motion_modules_for(unet2d, motion_cfg)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    motion = {k: v for k, v in modules.state_dict().items() if not k.endswith("pos_encoder.pe")}
    torch.save({"global_step": 500, "state_dict": {**unet2d.state_dict(), **motion}}, path)
    return motion


@pytest.fixture(scope="module")
def fine_tune(work):
    cfg = tiny_train_config(
        work,
        CAMERA,
        f"train.init_from={work / 'checkpoint-epoch-3.ckpt'}",
        "train.num_workers=1",  # what trains, not how ranks split it (2 workers: ~20 s more)
        "train.max_steps=2",
        "train.run_name=fine-tune",
        "train.validation_prompts=[]",
    )
    start = _original_train_py_checkpoint(cfg, work / "checkpoint-epoch-3.ckpt")
    return run_training(cfg), cfg, start


def test_fine_tuning_starts_from_a_checkpoint_of_the_original_code(fine_tune):
    from mlflow import MlflowClient

    outcome, cfg, start = fine_tune
    weights = load_file(str(outcome.motion_dir / "motion_module.safetensors"))
    assert set(start) < set(weights)  # the position tables were recomputed
    moved = [k for k in start if not torch.equal(weights[k], start[k])]
    assert moved and len(moved) > len(start) // 2  # trained from there, with a fresh optimizer
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.data.params["train.init_from.source"] == cfg.train.init_from
    version = client.get_model_version(cfg.mlflow.registered_model, outcome.model_version)
    assert version.tags["init_from"] == cfg.train.init_from


def test_motion_lora_from_the_registered_module_trains_exports_and_registers(fine_tune, work):
    from mlflow import MlflowClient

    from animatediff.config import ConfigError
    from tracking.registry import (
        MotionSource,
        apply_motion_loras,
        load_motion,
        load_motion_lora,
        resolve_motion_lora,
    )
    from trainer.driver import resolve_init_from

    module_outcome, module_cfg, _ = fine_tune
    name = module_cfg.mlflow.registered_model
    cfg = tiny_train_config(
        work,
        CAMERA,
        "train.stage=motion_lora",
        f"train.init_from=models:/{name}@candidate",
        "train.lora.rank=2",
        "train.lora.name=zoom_in",
        "train.lr=0.01",
        "train.num_workers=1",
        "train.max_steps=2",
        "train.run_name=zoom-in-lora",
    )
    outcome = run_training(cfg)
    export = outcome.export_path
    assert export.name == "motion_lora"
    assert {ml.ORIGINAL_FILE, ml.DIFFUSERS_FILE, ml.META_FILE} <= {p.name for p in export.iterdir()}
    lora = ml.read_motion_lora(export)
    assert lora.metadata["name"] == "zoom_in" and lora.rank == 2
    assert all(up.abs().sum() > 0 for _, up in lora.pairs.values())  # the adapters trained
    # The frozen module was pinned and copied beside the run's checkpoints.
    pinned = Path(cfg.train.storage_path) / "zoom-in-lora.init_from"
    record = json.loads((pinned / "source.json").read_text())
    assert record == {"ref": cfg.train.init_from, "pinned": f"models:/{name}/1"}
    assert (
        load_file(str(pinned / "motion_module.safetensors")).keys()
        == load_file(str(module_outcome.motion_dir / "motion_module.safetensors")).keys()
    )

    client = MlflowClient(cfg.mlflow.tracking_uri)
    registered = f"{name}-motion_lora-zoom_in"
    version = client.get_model_version_by_alias(registered, "candidate")
    assert str(version.version) == outcome.model_version == "1"
    assert version.tags["stage"] == "motion_lora"
    assert version.tags["init_from"] == f"models:/{name}/1"
    assert any(a.path == "samples" for a in client.list_artifacts(outcome.run_id))

    # Serving's path: the bare name resolves (no champion yet: the latest version), loads, merges.
    source = resolve_motion_lora("zoom_in", cfg, scale=0.5)
    assert (source.uri, source.version) == (f"models:/{registered}/1", "1")
    loaded = load_motion_lora(source)
    assert loaded.pairs.keys() == lora.pairs.keys()
    assert all(torch.equal(loaded.pairs[k][1], lora.pairs[k][1]) for k in lora.pairs)
    modules, _ = load_motion(MotionSource(f"models:/{name}/1", "1", source.tracking_uri), cfg)
    merged = apply_motion_loras(modules, [source])
    key = next(iter(lora.pairs))
    expected = dict(modules.named_parameters())[key] + 0.5 * lora.delta(key)
    torch.testing.assert_close(dict(merged.named_parameters())[key], expected)

    # A re-run of the same run keeps its pinned module; another reference is refused.
    again, _ = resolve_init_from(cfg)
    assert again.train.init_from == str(pinned)
    other = tiny_train_config(
        work,
        CAMERA,
        "train.stage=motion_lora",
        f"train.init_from=models:/{name}/1",
        "train.lora.rank=2",
        "train.lora.name=zoom_in",
        "train.run_name=zoom-in-lora",
    )
    with pytest.raises(ConfigError, match="started from"):
        resolve_init_from(other)
