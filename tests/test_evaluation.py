"""Evaluation maths without Ray: fixed-timestep held-out loss and its frame-order check, the
scores of one video, the summary, promotion requirements, the saved frame classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import tiny_train_config

from animatediff.config import ConfigError
from animatediff.evaluation import (
    fixed_timesteps,
    frame_permutation,
    held_out_loss,
    score_video,
    summarize,
)
from animatediff.features import FrameClassifier, PixelFeatures, load_extractor
from animatediff.training import Batch, build_training_model
from tracking.registry import Requirement


def _moving_square(direction: tuple[int, int], frames: int = 8, size: int = 32) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        x, y = 12 + direction[0] * t, 12 + direction[1] * t
        video[t, y : y + 6, x : x + 6] = 255
    return video


def _batches(frames: int = 4, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    shape = (2, 4, frames, 4, 4)
    return [
        Batch(
            captions=["a", "b"],
            latent_mean=torch.as_tensor(rng.normal(0, 3, shape).astype(np.float32)),
            latent_std=torch.full(shape, 0.1),
        )
    ]


def test_fixed_timesteps_are_bin_centres():
    assert fixed_timesteps(10, 1000) == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert fixed_timesteps(1, 1000) == [500]


def test_frame_permutation_moves_every_frame_and_is_seeded():
    for frames in (2, 3, 8, 16):
        order = frame_permutation(frames, seed=3)
        assert sorted(order.tolist()) == list(range(frames))
        assert all(order[i] != i for i in range(frames))
        assert torch.equal(order, frame_permutation(frames, seed=3))


@pytest.fixture(scope="module")
def model_and_cfg(tmp_path_factory):
    cfg = tiny_train_config(tmp_path_factory.mktemp("eval"))
    model = build_training_model(cfg)
    model.unet.eval()
    return model, cfg


def test_order_check_is_zero_for_an_order_blind_module_and_not_for_a_trained_one(model_and_cfg):
    model, cfg = model_and_cfg
    steps = [100, 600]
    order = frame_permutation(4, seed=0)
    # A fresh module is the identity (zero proj_out): frames are denoised independently.
    plain = held_out_loss(model, _batches(), cfg, steps, seed=1)
    permuted = held_out_loss(model, _batches(), cfg, steps, seed=1, frame_order=order)
    for t in steps:
        assert permuted[t] == pytest.approx(plain[t], rel=1e-5)
    assert held_out_loss(model, _batches(), cfg, steps, seed=1) == plain  # deterministic
    # With weights that read the position encoding, the order matters.
    state = {k: v.clone() for k, v in model.unet.motion_modules.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for param in model.unet.motion_modules.parameters():
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
        moved = held_out_loss(model, _batches(), cfg, steps, seed=1)
        moved_permuted = held_out_loss(model, _batches(), cfg, steps, seed=1, frame_order=order)
    finally:
        model.unet.motion_modules.load_state_dict(state)
    assert any(abs(moved_permuted[t] - moved[t]) > 1e-3 * moved[t] for t in steps)


def test_a_video_is_scored_against_its_expectations():
    extractor = PixelFeatures()
    right = score_video(_moving_square((1, 0)), extractor, {"direction": "right"}, min_speed=0.5)
    assert right["direction"] == "right" and right["direction_correct"] is True
    assert right["displacement_per_frame"] == pytest.approx(1.0, abs=0.05)
    jumped = _moving_square((1, 0))
    jumped[4:] = np.roll(jumped[4:], 6, axis=1)  # 6 px down halfway: the line fits worse
    broken = score_video(jumped, extractor, min_speed=0.5)
    assert right["trajectory_residual"] == pytest.approx(0.0, abs=1e-9)
    assert broken["trajectory_residual"] > 1
    assert not right["static"] and right["motion_magnitude"] > 0
    static = np.repeat(_moving_square((0, 0))[:1], 8, axis=0)
    still = score_video(static, extractor, {"direction": "left"})
    assert still["static"] and still["direction_correct"] is False
    assert still["motion_magnitude"] == 0 and still["frame_consistency"] == pytest.approx(1.0)
    classifier = FrameClassifier(classes=10, size=16).extractor()
    labelled = score_video(_moving_square((0, 1)), classifier, {"label": 3, "direction": "down"})
    assert 0 <= labelled["label_share"] <= 1 and 0 < labelled["label_agreement"] <= 1
    summary = summarize([right, still])
    assert summary["direction_accuracy"] == 0.5 and summary["static_share"] == 0.5
    assert summary["moving_share"] == 0.5 and summary["videos"] == 2
    assert summarize([right, broken])["trajectory_residual"] == pytest.approx(
        broken["trajectory_residual"] / 2
    )


def test_frame_classifier_saves_and_loads_as_an_extractor(tmp_path):
    model = FrameClassifier(classes=10, size=16)
    frames = _moving_square((1, 1), frames=3)
    expected = model.extractor().classify(frames)
    loaded = load_extractor(f"classifier:{model.save(tmp_path / 'cls')}")
    assert torch.equal(loaded.classify(frames), expected)
    assert load_extractor("pixels")(frames).shape[0] == 3
    with pytest.raises(ValueError, match="evaluate.features"):
        load_extractor("resnet")


def test_promotion_requirements_parse_and_judge():
    loss = Requirement.parse("held_out_loss <= champion")
    assert loss.failure(0.4, 0.5) is None and loss.failure(0.4, None) is None
    assert "not <= the champion's 0.5" in loss.failure(0.6, 0.5)
    assert "no eval/held_out_loss" in loss.failure(None, 0.5)
    accuracy = Requirement.parse("direction_accuracy >= 0.8")
    assert accuracy.failure(0.85, None) is None and accuracy.failure(0.7, 0.9) is not None
    for bad in ("held_out_loss", "held_out_loss == 1", "held_out_loss <= best"):
        with pytest.raises(ConfigError, match="mlflow.promote_require"):
            Requirement.parse(bad)


def test_held_out_key_ignores_only_how_videos_are_sampled_scored_and_written(tmp_path):
    """Configs with equal keys share one held-out measurement in ``run_evaluations``: sampling,
    generation, scoring and output options leave the key alone; the module, the base, the
    held-out data and the loss's own options change it."""
    from pipelines.evaluate import held_out_key
    from tracking.registry import MotionSource

    source = MotionSource("models:/motion/1", "1", "sqlite:///mlflow.db")
    key = held_out_key(tiny_train_config(tmp_path), source)

    def key_with(*overrides: str, source: MotionSource = source) -> str:
        return held_out_key(tiny_train_config(tmp_path, *overrides), source)

    same = [
        key_with("sample.shared_noise=true", "sample.guidance_scale=2.0"),
        key_with("evaluate.output_subdir=elsewhere", "evaluate.features=classifier:x"),
        key_with("evaluate.min_speed=2.0", "mlflow.enabled=false", "output_dir=elsewhere"),
    ]
    assert same == [key] * len(same)
    different = [
        key_with("evaluate.timesteps=3"),
        key_with("evaluate.data_uri=other-shards"),
        key_with("train.batch_size=3"),
        key_with("model.diffusion.beta_end=0.02"),
        key_with(source=MotionSource("models:/motion/2", "2", "sqlite:///mlflow.db")),
        key_with(source=MotionSource("models:/motion/1", "1", "sqlite:///other.db")),
    ]
    assert key not in different and len(set(different)) == len(different)
