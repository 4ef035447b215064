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
