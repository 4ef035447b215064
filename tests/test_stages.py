"""The image stage and LoRA training without Ray: which parameters train, the batch it sees,
and that its exports load back through the base-model path (`model.base.pretrained`,
`model.base.loras`) computing what the trained model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from train_helpers import tiny_train_config

from animatediff.base_model import load_base_model
from animatediff.lora import LoraLinear, add_lora, kohya_state_dict, merge_lora
from animatediff.training import Batch, batch_loss, build_training_model, one_frame_per_clip
from animatediff.unet import VideoUNet


def _batch(size: int = 2, frames: int = 4, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    shape = (size, 4, frames, 4, 4)
    return Batch(
        captions=[f"clip {i}" for i in range(size)],
        latent_mean=torch.as_tensor(rng.normal(0, 3, shape).astype(np.float32)),
        latent_std=torch.as_tensor(rng.uniform(0.1, 0.2, shape).astype(np.float32)),
    )


def test_one_frame_per_clip_takes_a_whole_frame_of_each_clip():
    batch = _batch(size=3, frames=5)
    picked = one_frame_per_clip(batch, torch.Generator().manual_seed(0))
    assert picked.latent_mean.shape == (3, 4, 1, 4, 4) and picked.captions == batch.captions
    for row in range(3):
        matches = [
            f
            for f in range(5)
            if torch.equal(picked.latent_mean[row, :, 0], batch.latent_mean[row, :, f])
            and torch.equal(picked.latent_std[row, :, 0], batch.latent_std[row, :, f])
        ]
        assert len(matches) == 1, row
    drawn = {
        int(
            (one_frame_per_clip(batch, torch.Generator().manual_seed(s)).latent_mean[0, 0, 0, 0, 0])
            .eq(batch.latent_mean[0, 0, :, 0, 0])
            .nonzero()
        )
        for s in range(40)
    }
    assert drawn == set(range(5))  # every frame can be drawn


def test_image_stage_trains_the_whole_2d_unet_on_frames(tmp_path):
    cfg = tiny_train_config(tmp_path, "train.stage=image")
    model = build_training_model(cfg)
    unet2d = model.unet.unet2d
    assert all(p.requires_grad for p in unet2d.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in unet2d.parameters()}
    # The FrameUNet runs the 2D UNet on each frame: equal to calling it on the frames directly.
    sample = torch.randn(2, 4, 3, 4, 4)
    text = torch.randn(2, 77, 32)
    with torch.no_grad():
        video = model.unet(sample, torch.tensor([10, 500]), text)
        frame = unet2d(sample[:, :, 1], torch.tensor([10, 500]), encoder_hidden_states=text).sample
    torch.testing.assert_close(video[:, :, 1], frame, atol=1e-5, rtol=1e-5)
    loss = batch_loss(model, model.unet, _batch(), cfg, torch.Generator().manual_seed(0))
    loss.backward()
    without_grad = [name for name, p in unet2d.named_parameters() if p.grad is None]
    assert not without_grad
    assert sum(float(p.grad.abs().sum()) for p in unet2d.parameters()) > 0


def test_lora_stage_trains_only_the_adapters(tmp_path):
    cfg = tiny_train_config(tmp_path, "train.stage=image", "train.lora.rank=4")
    model = build_training_model(cfg)
    trainable = dict((name, p) for name, p in model.unet.named_parameters() if p.requires_grad)
    assert trainable and all(name.endswith((".down.weight", ".up.weight")) for name in trainable)
    adapters = [m for m in model.unet.modules() if isinstance(m, LoraLinear)]
    names = [n for n, m in model.unet.unet2d.named_modules() if isinstance(m, LoraLinear)]
    assert len(adapters) == len(names) > 0
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in names)


def test_kohya_export_merges_into_the_base_as_the_adapters_compute(tmp_path, tiny_base_dir):
    base = load_base_model(load_base_cfg(tiny_base_dir))
    adapted = base.unet
    add_lora(adapted, ("to_q", "to_v", "to_out.0"), rank=2, alpha=3.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in adapted.modules():
            if isinstance(module, LoraLinear):  # trained-looking adapters
                module.up.weight.copy_(
                    0.1 * torch.randn(module.up.weight.shape, generator=generator)
                )
    path = tmp_path / "lora.safetensors"
    save_file(kohya_state_dict(adapted), str(path))
    merged = load_base_model(load_base_cfg(tiny_base_dir)).unet
    names = merge_lora({"unet": merged}, path)
    assert len(names) == sum(isinstance(m, LoraLinear) for m in adapted.modules())
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = adapted(sample, 300, encoder_hidden_states=text).sample
        got = merged(sample, 300, encoder_hidden_states=text).sample
        plain = (
            load_base_model(load_base_cfg(tiny_base_dir))
            .unet(sample, 300, encoder_hidden_states=text)
            .sample
        )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapters do change the output


def load_base_cfg(directory):
    from animatediff.config import BaseModelConfig

    return BaseModelConfig(pretrained=str(directory))


def test_lora_needs_the_image_stage():
    from animatediff.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.lora.rank"):
        load_config(None, ["train.lora.rank=4"])


# ---------------------------------------------------------------------------------------------
# Starting from an existing motion module; MotionLoRA
# ---------------------------------------------------------------------------------------------


def _v1_like_file(tmp_path, cfg) -> tuple[str, dict]:
    """An original-layout .safetensors with the v1 signature (24-frame tables, no mid block)
    for the tiny base, random weights; returns its path and state dict."""
    import dataclasses

    from animatediff.checkpoints import save_original
    from animatediff.training import new_motion_modules_for

    v1 = dataclasses.replace(cfg.model.motion, max_frames=24, mid_block=False, zero_init_out=False)
    modules = new_motion_modules_for(load_base_model(cfg.model.base).unet, v1)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    path = tmp_path / "mm_v1.ckpt"
    save_original(modules, v1, path)
    return str(path), modules.state_dict()


def test_init_from_starts_from_the_files_weights_and_config(tmp_path):
    from animatediff.config import ConfigError
    from animatediff.training import with_init_from_config

    cfg = tiny_train_config(tmp_path)
    path, weights = _v1_like_file(tmp_path, cfg)
    wanted = tiny_train_config(tmp_path, f"train.init_from={path}", "model.motion.max_frames=40")
    resolved = with_init_from_config(wanted)
    motion = resolved.model.motion
    # The file decides the architecture and (v1 signature) the base norm; the table is lengthened.
    assert (motion.mid_block, motion.max_frames, motion.base_norm) == (False, 40, "across_frames")
    model = build_training_model(resolved)
    loaded = model.unet.motion_modules.state_dict()
    for key, value in weights.items():
        got = loaded[key][:, :24] if key.endswith(".pe") else loaded[key]
        assert torch.equal(got, value), key
    assert all(p.requires_grad for p in model.unet.motion_modules.parameters())
    assert model.unet.base_norm_across_frames
    loss = batch_loss(
        model, model.unet, _batch(frames=4), resolved, torch.Generator().manual_seed(0)
    )
    loss.backward()
    with pytest.raises(ConfigError, match="not the config train.init_from trains with"):
        build_training_model(wanted)  # model.motion must be the resolved one


def test_motion_lora_stage_trains_adapters_on_the_frozen_module(tmp_path):
    from animatediff.training import with_init_from_config

    base_cfg = tiny_train_config(tmp_path)
    path, weights = _v1_like_file(tmp_path, base_cfg)
    cfg = with_init_from_config(
        tiny_train_config(
            tmp_path,
            "train.stage=motion_lora",
            f"train.init_from={path}",
            "train.lora.rank=2",
            "train.lora.name=zoom_in",
        )
    )
    model = build_training_model(cfg)
    motion = model.unet.motion_modules
    trainable = {name for name, p in motion.named_parameters() if p.requires_grad}
    # q/k/v/out of both temporal attentions of every motion module, a down and an up each.
    assert len(trainable) == len(motion.modules_list()) * 2 * 4 * 2
    assert all(name.endswith((".down.weight", ".up.weight")) for name in trainable)
    assert {id(p) for p in model.trainable_parameters()} == {
        id(p) for p in motion.parameters() if p.requires_grad
    }
    sample, text = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 77, 32)
    plain = VideoUNet.from_unet2d(
        load_base_model(cfg.model.base).unet,
        cfg.model.motion,
        _plain_modules(cfg, weights),
    )
    with torch.no_grad():  # a fresh adapter (up = 0) changes nothing
        torch.testing.assert_close(model.unet(sample, 300, text), plain(sample, 300, text))
    loss = batch_loss(model, model.unet, _batch(frames=4), cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for n, p in motion.named_parameters() if n not in trainable)


def _plain_modules(cfg, weights):
    import dataclasses

    from animatediff.checkpoints import adapt_to, modules_from_state_dict

    file_cfg = dataclasses.replace(cfg.model.motion, max_frames=24)
    modules = modules_from_state_dict(weights, file_cfg)
    adapt_to(modules, file_cfg, cfg.model.motion)
    return modules


def test_motion_lora_export_writes_both_formats_and_samples(tmp_path):
    """The stage's export without Ray: the gathered adapters -> motion_lora/ (original +
    diffusers + json), and a sampler over the frozen module with the LoRA merged."""
    import json

    from animatediff import motion_lora as ml
    from animatediff.training import with_init_from_config
    from trainer.export import Export, export_name

    path, _ = _v1_like_file(tmp_path, tiny_train_config(tmp_path))
    cfg = with_init_from_config(
        tiny_train_config(
            tmp_path,
            "train.stage=motion_lora",
            f"train.init_from={path}",
            "train.lora.rank=2",
            "train.lora.alpha=4",
            "train.lora.name=pan_left",
        )
    )
    model = build_training_model(cfg)
    motion = model.unet.motion_modules
    state = {
        name: (0.2 * torch.ones_like(p) if name.endswith(".up.weight") else p.detach().clone())
        for name, p in motion.named_parameters()
        if p.requires_grad
    }
    export = Export(state, cfg, model.unet)
    written = export.write(tmp_path / "checkpoint")
    assert written.name == export_name(cfg.train) == "motion_lora"
    meta = json.loads((written / ml.META_FILE).read_text())
    assert meta["name"] == "pan_left" and meta["motion_module"] == path and meta["rank"] == 2
    lora = ml.read_motion_lora(written)
    diffusers = ml.read_motion_lora(written / ml.DIFFUSERS_FILE)
    for key, (down, up) in lora.pairs.items():
        name = key.removesuffix(".weight")
        assert torch.equal(down, state[f"{name}.down.weight"])
        assert torch.equal(up, state[f"{name}.up.weight"] * 2.0)  # alpha / rank folded in
        assert torch.equal(diffusers.pairs[key][1], up)
    video = export.sampler(device="cpu")("a ball", num_frames=4, num_inference_steps=1)
    assert video.shape == (4, 32, 32, 3)


def test_motion_lora_options_are_checked_together():
    from animatediff.config import ConfigError, load_config

    stage = ["train.stage=motion_lora", "train.lora.rank=2", "train.lora.name=zoom_in"]
    with pytest.raises(ConfigError, match="train.init_from"):
        load_config(None, stage)
    with pytest.raises(ConfigError, match="train.lora.name"):
        load_config(None, [*stage[:2], "train.init_from=x"])
    with pytest.raises(ConfigError, match="train.lora.rank"):
        load_config(None, [stage[0], stage[2], "train.init_from=x"])
    with pytest.raises(ConfigError, match="train.lora.name"):
        load_config(None, [*stage[:2], "train.init_from=x", "train.lora.name=zoom/in"])
    with pytest.raises(ConfigError, match="train.init_from"):
        load_config(None, ["train.stage=image", "train.init_from=x"])
    load_config(None, [*stage, "train.init_from=models:/m@champion"])
