"""Pure parts of training (no Ray, no DeepSpeed): config, schedule, batches, loss, promotion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from train_helpers import tiny_train_config

from animatediff.config import ConfigError, SampleConfig, load_config
from animatediff.training import (
    Batch,
    batch_loss,
    build_training_model,
    collate,
    deepspeed_config,
    learning_rate,
    lr_multiplier,
    step_generator,
    validation_loss,
)
from tracking.registry import _requests, should_promote


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.zero_stage=1", "train.zero_stage"),
        ("train.mixed_precision=fp16", "train.mixed_precision"),
        ("train.lr_schedule=linear", "train.lr_schedule"),
        ("train.max_failures=-2", "train.max_failures"),
        ("train.betas=[0.9, 1.5]", "train.betas"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps"),
        ("train.bogus=1", "train.bogus"),
        ("mlflow.champion_alias=candidate", "mlflow.champion_alias"),
    ],
)
def test_invalid_train_options_name_the_option(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_precision_is_bf16_on_gpu_and_fp32_on_cpu() -> None:
    assert load_config(None, ["train.use_gpu=false"]).train.precision == "fp32"
    assert load_config(None, ["train.use_gpu=true"]).train.precision == "bf16"


def test_lr_warms_up_linearly_then_holds_or_decays_to_zero() -> None:
    assert [lr_multiplier(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    cosine = [lr_multiplier(s, 2, 10, "cosine") for s in range(11)]
    assert cosine[:3] == [0.5, 1.0, 1.0]
    assert cosine[6] == pytest.approx(0.5)  # halfway through the decay
    assert cosine[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))
    cfg = load_config(None, ["train.lr=0.001", "train.warmup_steps=0"])
    assert learning_rate(123, cfg.train) == 0.001


def test_deepspeed_config_follows_train_options() -> None:
    cfg = load_config(
        None,
        [
            "train.zero_stage=3",
            "train.batch_size=2",
            "train.grad_accum_steps=3",
            "train.grad_clip=0.5",
            "train.zero_bucket_size=20000000",
        ],
    )
    ds = deepspeed_config(cfg.train, world_size=4)
    zero = ds["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 20_000_000
    assert zero["stage3_prefetch_bucket_size"] == 2_000_000
    assert zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == 40_000_000
    assert ds["train_batch_size"] == 24
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False
    assert zero["contiguous_gradients"] is False  # only an extra copy on the CPU
    assert "optimizer" not in ds  # a torch AdamW over the motion parameters is passed instead
    offload = deepspeed_config(
        load_config(None, ["train.offload_optimizer=true", "train.use_gpu=true"]).train, 1
    )
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert offload["bf16"]["enabled"] is True
    assert offload["zero_optimization"]["contiguous_gradients"] is True


def test_step_generators_are_reproducible_and_distinct() -> None:
    draw = lambda *key: torch.rand(4, generator=step_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 5, 0, 1), draw(0, 5, 0, 1))
    keys = [(0, 5, 0, 1), (1, 5, 0, 1), (0, 6, 0, 1), (0, 5, 1, 1), (0, 5, 0, 0)]
    values = [draw(*key) for key in keys]
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


def test_collate_builds_batches_and_names_missing_columns() -> None:
    columns = {
        "caption": np.array(["a", "b"], dtype=object),
        "latent_mean": np.zeros((2, 4, 3, 2, 2), np.float16),
        "latent_std": np.ones((2, 4, 3, 2, 2), np.float16),
    }
    batch = collate(columns)
    assert batch.captions == ["a", "b"] and batch.latent_mean.shape == (2, 4, 3, 2, 2)
    assert batch.text_embedding is None
    del columns["latent_std"]
    with pytest.raises(ValueError, match="latent_std"):
        collate(columns)


@pytest.fixture(scope="module")
def model_and_cfg(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_train_config(tmp_path_factory.mktemp("unit"))
    return build_training_model(cfg), cfg


def _batch(cfg, size: int = 2, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    shape = (size, 4, cfg.data.num_frames, 4, 4)
    return Batch(
        captions=[f"clip {i}" for i in range(size)],
        latent_mean=torch.as_tensor(rng.normal(0, 3, shape).astype(np.float16)),
        latent_std=torch.as_tensor(rng.uniform(0.1, 0.2, shape).astype(np.float16)),
    )


def test_only_motion_modules_learn(model_and_cfg) -> None:
    model, cfg = model_and_cfg
    unet = model.unet
    frozen = {n: p.detach().clone() for n, p in unet.named_parameters() if not p.requires_grad}
    trainable = [p for p in unet.parameters() if p.requires_grad]
    motion = {id(p) for p in unet.motion_modules.parameters()}
    assert trainable and {id(p) for p in trainable} == motion
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = batch_loss(model, unet, _batch(cfg), cfg, step_generator(0, 0, 0, 0))
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))
    for name, param in unet.named_parameters():
        if not param.requires_grad:
            assert param.grad is None and torch.equal(param, frozen[name]), name
    optimizer.zero_grad(set_to_none=True)


def test_loss_is_a_function_of_the_generator(model_and_cfg) -> None:
    model, cfg = model_and_cfg
    batch = _batch(cfg, seed=3)
    with torch.no_grad():
        a = batch_loss(model, model.unet, batch, cfg, step_generator(0, 7, 0, 0))
        b = batch_loss(model, model.unet, batch, cfg, step_generator(0, 7, 0, 0))
        c = batch_loss(model, model.unet, batch, cfg, step_generator(0, 8, 0, 0))
    assert float(a) == float(b) and float(a) != float(c)
    first = validation_loss(model, model.unet, [batch], cfg)
    assert first == validation_loss(model, model.unet, [batch], cfg)


def test_dropped_captions_use_the_empty_prompt_embedding(model_and_cfg) -> None:
    model, _ = model_and_cfg
    conditioner = model.conditioner
    cached = torch.randn(2, 77, conditioner.empty.shape[-1])
    out = conditioner(["kept", ""], cached)
    assert torch.equal(out[0], cached[0]) and torch.equal(out[1], conditioner.empty)
    encoded = conditioner(["kept", ""], None)
    assert torch.allclose(encoded[1], conditioner.empty)
    assert not torch.allclose(encoded[0], conditioner.empty)


def test_promotion_needs_a_loss_not_worse_than_the_champion() -> None:
    assert should_promote(0.5, None).promote
    assert should_promote(0.5, 0.5).promote
    assert should_promote(0.4, 0.5).promote
    assert not should_promote(0.6, 0.5).promote
    assert not should_promote(None, 0.5).promote
    assert not should_promote(float("nan"), 0.5).promote


def test_predict_requests_accept_frames_lists_and_reject_bad_rows() -> None:
    import pandas as pd

    sample = SampleConfig(seed=40, num_frames=8)
    rows = _requests(pd.DataFrame({"prompt": ["a", "b"], "seed": [1, None]}), sample)
    # A row without a seed gets sample.seed + its row index, as in batch generation.
    assert [(r.prompt, r.seed, r.num_frames) for r in rows] == [("a", 1, 8), ("b", 41, 8)]
    (row,) = _requests(["x"], sample)
    assert (row.prompt, row.seed, row.guidance_scale) == ("x", 40, sample.guidance_scale)
    with pytest.raises(ValueError, match="prompt"):
        _requests([{"prompt": ""}], sample)
    with pytest.raises(ValueError, match="unknown columns"):
        _requests([{"prompt": "a", "steps": 3}], sample)


def test_gradient_checkpointing_gives_the_same_gradients(model_and_cfg) -> None:
    model, cfg = model_and_cfg
    unet = model.unet
    batch = _batch(cfg, seed=5)

    def grads() -> list[torch.Tensor]:
        unet.zero_grad(set_to_none=True)
        batch_loss(model, unet, batch, cfg, step_generator(0, 1, 0, 0)).backward()
        return [p.grad.clone() for p in unet.motion_modules.parameters()]

    plain = grads()
    unet.enable_gradient_checkpointing()
    try:
        recomputed = grads()
    finally:
        unet.disable_gradient_checkpointing()
        unet.zero_grad(set_to_none=True)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b)
