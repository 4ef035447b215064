"""Pure parts of training (no Ray, no DeepSpeed): config, schedule, batches, loss, promotion."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy-sized tensors gain nothing from threads, and on a shared 2-core machine spinning
    OpenMP workers make the training steps here many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        ("train.placement_strategy=spread", "train.placement_strategy"),
        ("train.worker_resources.trainer=0", r"train\.worker_resources\.trainer: must be > 0"),
        ("train.worker_resources.CPU=2", r"train\.worker_resources\.CPU: set CPUs with"),
        ("train.worker_resources=[trainer]", "train.worker_resources: expected a mapping"),
        ("train.health_check_interval_s=0", "train.health_check_interval_s"),
    ],
)
def test_invalid_train_options_name_the_option(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_precision_is_bf16_on_gpu_and_fp32_on_cpu() -> None:
    assert load_config(None, ["train.use_gpu=false"]).train.precision == "fp32"
    assert load_config(None, ["train.use_gpu=true"]).train.precision == "bf16"


def test_workers_reserve_custom_resources_and_follow_the_placement_strategy() -> None:
    from trainer.driver import scaling_config

    train = load_config(
        None,
        [
            "train.cpus_per_worker=0.5",
            "train.worker_resources={trainer: 1}",
            "train.placement_strategy=STRICT_SPREAD",
        ],
    ).train
    scaling = scaling_config(train)
    assert scaling.resources_per_worker == {"CPU": 0.5, "trainer": 1.0}
    assert scaling.placement_strategy == "STRICT_SPREAD" and scaling.num_workers == 2
    default = scaling_config(load_config(None).train)
    assert default.resources_per_worker == {"CPU": 1.0} and default.placement_strategy == "PACK"


def test_the_poll_interval_reaches_ray_trains_controller_only_during_the_fit(monkeypatch) -> None:
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from trainer.driver import _controller_env

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    with _controller_env(load_config(None, ["train.health_check_interval_s=0.25"]).train):
        # What fit() hands to the controller actor it starts.
        assert get_env_vars_to_propagate()[name] == "0.25"
    assert name not in get_env_vars_to_propagate()
    monkeypatch.setenv(name, "5")
    with _controller_env(load_config(None).train):  # empty: the user's variable stands
        assert get_env_vars_to_propagate()[name] == "5"
    with _controller_env(load_config(None, ["train.health_check_interval_s=1"]).train):
        assert get_env_vars_to_propagate()[name] == "1.0"
    assert get_env_vars_to_propagate()[name] == "5"


def test_trainings_at_once_share_the_poll_interval_until_the_last_ends(monkeypatch) -> None:
    """Trainings started from threads (the reproduction's) see one process environment: the
    first to start sets the interval, the last to end restores the user's."""
    from trainer.driver import _controller_env

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.setenv(name, "5")
    fast = load_config(None, ["train.health_check_interval_s=0.25"]).train
    with _controller_env(fast):
        with _controller_env(fast):
            assert os.environ[name] == "0.25"
        assert os.environ[name] == "0.25"  # the first is still starting its controller
        slow = load_config(None, ["train.health_check_interval_s=1"]).train
        with pytest.raises(ConfigError, match="train.health_check_interval_s"):
            with _controller_env(slow):
                pass
        assert os.environ[name] == "0.25"
    assert os.environ[name] == "5"


def test_checkpoint_paths_on_s3_are_reported_as_s3_uris() -> None:
    from trainer.driver import checkpoint_uri

    ray_path = "runs/ray/tiny/checkpoint_00000006"  # what Ray's Checkpoint.path is on S3
    assert checkpoint_uri("s3://runs/ray", ray_path) == f"s3://{ray_path}"
    assert checkpoint_uri("s3://runs/ray", f"s3://{ray_path}") == f"s3://{ray_path}"
    assert (
        checkpoint_uri("/data/ray", "/data/ray/tiny/checkpoint_6") == "/data/ray/tiny/checkpoint_6"
    )


def test_lr_warms_up_linearly_then_holds_or_decays_to_zero() -> None:
    assert [lr_multiplier(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    cosine = [lr_multiplier(s, 2, 10, "cosine") for s in range(11)]
    assert cosine[:3] == [0.5, 1.0, 1.0]
    assert cosine[6] == pytest.approx(0.5)  # halfway through the decay
    assert cosine[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))
    cfg = load_config(None, ["train.lr=0.001", "train.warmup_steps=0"])
    assert learning_rate(123, cfg.train) == 0.001


def test_zero3_partitions_the_parameters_the_bucket_size_allows(tmp_path) -> None:
    """DeepSpeed keeps every parameter of at most its persistence threshold whole on every rank;
    at its default (1e5) that is all of the tiny UNet's, so ZeRO-3 would partition none. Scaled
    with ``train.zero_bucket_size``, the threshold DeepSpeed reads from our config partitions
    them (an engine built on it kept 1 of the 590 whole, measured). No engine here: DeepSpeed's
    process groups outlive the one a test can create and destroy."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    def threshold(*overrides: str) -> int:
        cfg = tiny_train_config(tmp_path, "train.zero_stage=3", *overrides)
        zero = deepspeed_config(cfg.train, world_size=2)["zero_optimization"]
        return DeepSpeedZeroConfig(**zero).param_persistence_threshold

    sizes = [p.numel() for p in build_training_model(tiny_train_config(tmp_path)).unet.parameters()]
    assert sum(size <= threshold() for size in sizes) == len(sizes)
    small = threshold("train.zero_bucket_size=100000")
    assert sum(size <= small for size in sizes) < len(sizes) // 10


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
    assert zero["stage3_param_persistence_threshold"] == 4_000
    # At DeepSpeed's default bucket, its defaults.
    default = deepspeed_config(load_config(None, ["train.zero_stage=3"]).train, world_size=1)
    assert default["zero_optimization"]["stage3_param_persistence_threshold"] == 100_000
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


# ---------------------------------------------------------------------------------------------
# The loss against a hand-written forward process, with a UNet that records what it is given
# ---------------------------------------------------------------------------------------------

# Written out here, not taken from animatediff.diffusion: the linear schedule of the tiny preset.
T, BETA_START, BETA_END = 1000, 0.00085, 0.012


def linear_alphas_cumprod() -> np.ndarray:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` with ``beta_s`` evenly spaced from BETA_START to
    BETA_END over T steps, float64."""
    betas = np.array([BETA_START + (BETA_END - BETA_START) * s / (T - 1) for s in range(T)])
    return np.cumprod(1.0 - betas)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: records each call's inputs and predicts zeros. After
    ``loss.backward()`` the target is read back from the prediction's gradient: for
    ``mean((pred - target)^2)`` over n elements it is ``2 (pred - target) / n``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # batch_loss reads the device from it
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, sample, timestep, context):
        pred = torch.zeros_like(sample, dtype=torch.float32, requires_grad=True)
        self.calls.append(
            {
                "sample": sample.detach().double(),
                "timestep": timestep.detach().clone(),
                "context": context.detach().clone(),
                "pred": pred,
            }
        )
        return pred

    def target(self, call: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = call["pred"]
        return (pred.detach() - pred.grad * pred.numel() / 2).double()


def _recorded_loss(model, cfg, batch, seed: int = 0) -> tuple[RecordingUNet, dict]:
    """One ``batch_loss`` through a ``RecordingUNet``, backward done; returns the UNet and its call."""
    unet = RecordingUNet()
    stubbed = dataclasses.replace(model, unet=unet)
    batch_loss(stubbed, unet, batch, cfg, step_generator(seed, 0, 0, 0)).backward()
    (call,) = unet.calls
    return unet, call


def _coefficients(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` of the hand-written schedule, ``(batch, 1, 1, 1, 1)``."""
    abar = torch.from_numpy(linear_alphas_cumprod()[timesteps.long().numpy()]).view(-1, 1, 1, 1, 1)
    return abar.sqrt(), (1.0 - abar).sqrt()


def _assert_standard_normal(x: torch.Tensor, what: str) -> None:
    """Mean 0 and std 1 within 6 standard errors of n independent N(0, 1) draws (the std of a
    sample std is about 1/sqrt(2n))."""
    n = x.numel()
    assert abs(float(x.mean())) < 6 / math.sqrt(n), (what, float(x.mean()))
    assert abs(float(x.std()) - 1.0) < 6 / math.sqrt(2 * n), (what, float(x.std()))


def _exact_batch(cfg, size: int = 8) -> Batch:
    """Posteriors with std 0: the clean latent is ``mean * scaling_factor``, known exactly."""
    batch = _batch(cfg, size=size, seed=11)
    return dataclasses.replace(batch, latent_std=torch.zeros_like(batch.latent_std))


def test_the_unet_sees_the_forward_process_and_learns_to_predict_the_noise(model_and_cfg) -> None:
    model, cfg = model_and_cfg
    diffusion = cfg.model.diffusion
    assert (diffusion.num_train_timesteps, diffusion.beta_start, diffusion.beta_end) == (
        T,
        BETA_START,
        BETA_END,
    )
    assert (diffusion.beta_schedule, diffusion.prediction_type) == ("linear", "epsilon")
    batch = _exact_batch(cfg)
    unet, call = _recorded_loss(model, cfg, batch)
    timesteps = call["timestep"]
    assert timesteps.shape == (len(batch),) and timesteps.dtype == torch.int64
    assert 0 <= int(timesteps.min()) and int(timesteps.max()) < T
    assert len(set(timesteps.tolist())) > 1  # drawn per sample
    z = batch.latent_mean.double() * 0.18215  # the tiny VAE's scaling factor, as SD 1.5's
    eps = unet.target(call)  # epsilon prediction: the target is the noise itself
    _assert_standard_normal(eps, "noise")
    signal, sigma = _coefficients(timesteps)
    torch.testing.assert_close(call["sample"], signal * z + sigma * eps, atol=1e-5, rtol=1e-5)


def test_v_prediction_targets_the_velocity(model_and_cfg, tmp_path) -> None:
    model, _ = model_and_cfg
    cfg = tiny_train_config(tmp_path, "model.diffusion.prediction_type=v_prediction")
    batch = _exact_batch(cfg)
    unet, call = _recorded_loss(model, cfg, batch)
    z = batch.latent_mean.double() * 0.18215
    signal, sigma = _coefficients(call["timestep"])
    eps = (call["sample"] - signal * z) / sigma  # the noise the UNet input was made with
    _assert_standard_normal(eps, "noise")
    torch.testing.assert_close(unet.target(call), signal * eps - sigma * z, atol=1e-4, rtol=1e-4)


def test_the_clean_latent_is_a_fresh_draw_from_the_stored_posterior(model_and_cfg) -> None:
    model, cfg = model_and_cfg
    batch = _batch(cfg, size=8, seed=12)
    batch = dataclasses.replace(batch, latent_std=(batch.latent_std.float() * 8).half())  # ~1
    unet, call = _recorded_loss(model, cfg, batch)
    eps = unet.target(call)
    signal, sigma = _coefficients(call["timestep"])
    z = (call["sample"] - sigma * eps) / signal  # the clean latent the UNet input was made from
    # z = (mean + std * u) * scaling_factor with u ~ N(0, 1), drawn apart from the noise.
    u = (z / 0.18215 - batch.latent_mean.double()) / batch.latent_std.double()
    _assert_standard_normal(u, "posterior draw")
    correlation = float(torch.corrcoef(torch.stack([u.flatten(), eps.flatten()]))[0, 1])
    assert abs(correlation) < 6 / math.sqrt(u.numel())


def test_caption_dropout_replaces_the_configured_share_by_the_empty_prompt(
    model_and_cfg, tmp_path
) -> None:
    model, _ = model_and_cfg
    share = 0.25  # not the default (0.1), so a hard-coded share would show
    cfg = tiny_train_config(tmp_path, f"model.diffusion.caption_dropout={share}")
    empty = model.conditioner.empty
    size, steps = 50, 40
    dropped = 0
    for step in range(steps):
        batch = _batch(cfg, size=size, seed=step)
        cached = torch.randn(size, *empty.shape, generator=torch.Generator().manual_seed(step))
        batch = dataclasses.replace(batch, text_embedding=cached)
        unet = RecordingUNet()
        with torch.no_grad():
            batch_loss(
                dataclasses.replace(model, unet=unet),
                unet,
                batch,
                cfg,
                step_generator(0, step, 0, 0),
            )
        (call,) = unet.calls
        for row, context in enumerate(call["context"]):
            if torch.equal(context, empty):
                dropped += 1
            else:
                assert torch.equal(context, cached[row])  # a kept caption keeps its embedding
    n = size * steps
    # Binomial(n, share): 4 standard deviations either side of the mean.
    tolerance = 4 * math.sqrt(n * share * (1 - share))
    assert abs(dropped - n * share) < tolerance, (dropped, n * share, tolerance)


def test_loss_falls_on_a_fixed_batch(model_and_cfg) -> None:
    """A few dozen AdamW steps on the motion modules of a copy of the tiny model, the same batch
    and the same noise every step: the loss must fall well below where it started."""
    model, cfg = model_and_cfg
    trained = dataclasses.replace(model, unet=copy.deepcopy(model.unet))
    unet = trained.unet
    batch = _batch(cfg, size=2, seed=21)
    optimizer = torch.optim.AdamW(trained.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = batch_loss(
            trained, unet, batch, cfg, step_generator(0, 0, 0, 0), caption_dropout=0.0
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(value) for value in losses)
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


def test_dropped_captions_use_the_empty_prompt_embedding(model_and_cfg) -> None:
    model, _ = model_and_cfg
    conditioner = model.conditioner
    cached = torch.randn(2, 77, conditioner.empty.shape[-1])
    out = conditioner(["kept", ""], cached)
    assert torch.equal(out[0], cached[0]) and torch.equal(out[1], conditioner.empty)
    encoded = conditioner(["kept", ""], None)
    assert torch.allclose(encoded[1], conditioner.empty)
    assert not torch.allclose(encoded[0], conditioner.empty)


@pytest.mark.parametrize("cached", [False, True])
def test_the_text_encoder_leaves_the_cpu_only_when_the_shards_lack_embeddings(
    tmp_path, cached: bool
) -> None:
    """``meta`` stands in for an accelerator: with ``data.cache_text_embeddings`` the encoder's
    weights stay on the CPU, and what it encodes still lands on the UNet's device."""
    cfg = tiny_train_config(tmp_path, f"data.cache_text_embeddings={str(cached).lower()}")
    model = build_training_model(cfg)
    assert model.text_encoder_on_device is not cached
    model.to("meta")
    assert next(model.unet.parameters()).device.type == "meta"
    assert model.conditioner.empty.device.type == "meta"
    encoder_device = next(model.conditioner.text_encoder.parameters()).device.type
    assert encoder_device == ("cpu" if cached else "meta")
    if cached:
        assert model.conditioner(["uncached caption", ""], None).device.type == "meta"


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
    """On a copy of the tiny model with random motion-module weights: a fresh module's zero
    ``proj_out`` would leave every gradient but ``proj_out``'s zero, and zeros always agree."""
    model, cfg = model_and_cfg
    unet = copy.deepcopy(model.unet)
    randomised = dataclasses.replace(model, unet=unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.motion_modules.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    batch = _batch(cfg, seed=5)

    def grads() -> dict[str, torch.Tensor]:
        unet.zero_grad(set_to_none=True)
        batch_loss(randomised, unet, batch, cfg, step_generator(0, 1, 0, 0)).backward()
        return {
            name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in unet.motion_modules.named_parameters()
        }

    plain = grads()
    unet.enable_gradient_checkpointing()
    try:
        recomputed = grads()
    finally:
        unet.disable_gradient_checkpointing()
    vanishing = [name for name, grad in plain.items() if not grad.abs().max() > 0]
    assert not vanishing, vanishing  # every motion-module tensor takes part
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, msg=lambda m, name=name: f"{name}: {m}")


def test_readers_of_an_s3_checkpoint_each_keep_their_directory_until_they_leave(s3, tmp_path):
    """Ray's ``Checkpoint.as_directory`` downloads into one directory per node that its readers
    share, and one reader's exit can delete it under another (two ranks resuming from S3 failed
    that way). ``local_directory`` gives each reader its own; a local checkpoint is read in place."""
    from ray.train import Checkpoint

    from animatediff.storage import locate
    from trainer.checkpoint import local_directory

    s3.create_bucket(Bucket="runs")
    s3.put_object(Bucket="runs", Key="run/checkpoint_1/trainer_state.json", Body=b"{}")
    where = locate("s3://runs/run/checkpoint_1")
    remote = Checkpoint(where.path, filesystem=where.fs)
    with local_directory(remote) as outer:
        with local_directory(remote) as inner:
            assert inner != outer
            assert (inner / "trainer_state.json").read_bytes() == b"{}"
        assert (outer / "trainer_state.json").read_bytes() == b"{}"  # left alone by inner's exit
    assert not outer.exists()  # removed when its reader left

    local = tmp_path / "checkpoint_1"
    local.mkdir()
    with local_directory(Checkpoint(str(local))) as directory:
        assert directory == local
    assert local.is_dir()
