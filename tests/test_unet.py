"""The inflated video UNet: harmless at init, real temporal mixing, parity with diffusers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.utils._python_dispatch import TorchDispatchMode

from animatediff.config import MotionModuleConfig
from animatediff.motion_module import MotionModules, TemporalTransformer3D, to_diffusers_key
from animatediff.tiny import tiny_unet_kwargs
from animatediff.unet import VideoUNet

TINY_MOTION = dict(norm_groups=8, num_heads=4)


@pytest.fixture(scope="module")
def unet2d() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_unet_kwargs()).eval()


def _inputs(batch=2, frames=4, height=8, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, height, width, generator=generator)
    text = torch.randn(batch, 7, 32, generator=generator)
    timestep = torch.tensor([10, 500][:batch])
    return sample, timestep, text


def _video_unet(unet2d, seed=1, **motion) -> VideoUNet:
    cfg = MotionModuleConfig(**{**TINY_MOTION, "zero_init_out": False, **motion})
    video = VideoUNet.from_unet2d(unet2d, cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in video.motion_modules.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return video


@pytest.mark.parametrize("size", [(8, 8), (7, 5)])
def test_fresh_motion_modules_equal_the_2d_unet_per_frame(unet2d, size):
    """(7, 5) is not a multiple of the downsampling: the upsample sizes must be forwarded."""
    sample, timestep, text = _inputs(height=size[0], width=size[1])
    before = {k: v.clone() for k, v in unet2d.state_dict().items()}
    video = VideoUNet.from_unet2d(unet2d, MotionModuleConfig(**TINY_MOTION))
    batch, channels, frames, height, width = sample.shape
    with torch.no_grad():
        ours = video(sample, timestep, text)
        per_frame = unet2d(
            sample.transpose(1, 2).reshape(batch * frames, channels, height, width),
            timestep.repeat_interleave(frames),
            text.repeat_interleave(frames, dim=0),
        ).sample
    per_frame = per_frame.reshape(batch, frames, channels, height, width).transpose(1, 2)
    assert ours.shape == sample.shape
    assert (ours - per_frame).abs().max() <= 1e-5
    # The 2D weights are the base's own tensors, untouched and frozen.
    after = dict(video.unet2d.state_dict())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert video.unet2d is unet2d
    assert not any(p.requires_grad for p in unet2d.parameters())


def test_temporal_mixing_and_only_motion_modules_get_grads(unet2d):
    video = _video_unet(unet2d)
    sample, timestep, text = _inputs()
    changed = sample.clone()
    changed[:, :, 0] += 1.0
    with torch.no_grad():
        a, b = video(sample, timestep, text), video(changed, timestep, text)
    for frame in range(1, sample.shape[2]):
        assert (a[:, :, frame] - b[:, :, frame]).abs().max() > 1e-3

    out = video(sample, timestep, text)
    F.mse_loss(out, torch.zeros_like(out)).backward()
    assert all(p.grad is None for p in unet2d.parameters())
    motion = dict(video.motion_modules.named_parameters())
    # Every motion module, at every level (incl. DownBlock2D/UpBlock2D and the mid block), is used.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in motion.values())
    assert {id(p) for p in video.trainable_parameters()} == {id(p) for p in motion.values()}
    assert {id(p) for p in video.parameters() if p.requires_grad} == {
        id(p) for p in motion.values()
    }


@pytest.mark.parametrize("mid_block", [True, False])
def test_parity_with_diffusers_unet_motion_model(unet2d, mid_block):
    from diffusers import MotionAdapter, UNetMotionModel

    video = _video_unet(unet2d, cross_frame_norm=True, mid_block=mid_block)
    assert (video.motion_modules.mid_block is not None) == mid_block
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_norm_num_groups=8,
        motion_num_attention_heads=4,
        use_motion_mid_block=mid_block,
    )
    converted = {to_diffusers_key(k): v for k, v in video.motion_modules.state_dict().items()}
    converted.pop(None)
    adapter.load_state_dict(converted, strict=True)
    reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    sample, timestep, text = _inputs(frames=5)
    with torch.no_grad():
        ours = video(sample, timestep, text)
        theirs = reference(sample, timestep, text.repeat_interleave(5, dim=0)).sample
    assert ours.abs().mean() > 0.1
    assert (ours - theirs).abs().max() <= 1e-4


def test_gradient_checkpointing_same_outputs_and_grads_and_fewer_saved_tensors(unet2d):
    sample, timestep, text = _inputs(batch=1)
    results = {}
    modes = {
        "off": {},
        "config": {"gradient_checkpointing": True},
        "2d-only": {"gradient_checkpointing": True, "checkpoint_motion_modules": False},
        "matmuls": {"gradient_checkpointing": True, "checkpoint_saves": "matmuls"},
    }
    for mode, options in modes.items():
        video = _video_unet(unet2d, **options)
        assert video.gradient_checkpointing == (mode != "off")
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = video(sample, timestep, text)
        with _CountMatmuls() as recomputed:
            F.mse_loss(out, torch.zeros_like(out)).backward()
        grads = [p.grad for p in video.trainable_parameters()]
        results[mode] = (out.detach(), grads, sum(saved), recomputed.calls)
    reference, reference_grads, saved_off, _ = results["off"]
    for mode in ("config", "2d-only", "matmuls"):
        out, grads, *_ = results[mode]
        assert torch.allclose(out, reference, atol=1e-6)
        assert all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, reference_grads)
        )
    # Everything checkpointed keeps group inputs only; 2D-only keeps the motion activations too.
    assert results["config"][2] < saved_off / 3
    assert results["config"][2] < results["2d-only"][2] < saved_off
    # The backward pass re-runs forward matmuls, convolutions and attention only when they were
    # not kept: never without checkpointing, and never with checkpoint_saves="matmuls" either.
    assert results["off"][3] == results["matmuls"][3] == 0
    assert results["config"][3] > results["2d-only"][3] > 0


@pytest.mark.slow  # inductor compiles on CPU: about a minute on 2 cores
def test_compiled_motion_modules_give_the_same_outputs_and_grads(unet2d, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    sample, timestep, text = _inputs(batch=1)
    results = {}
    for compiled in (False, True):
        video = _video_unet(unet2d, compile_motion_modules=compiled)
        out = video(sample, timestep, text)
        F.mse_loss(out, torch.zeros_like(out)).backward()
        grads = [p.grad for p in video.trainable_parameters()]
        results[compiled] = (out.detach(), grads, video)
    (eager, eager_grads, plain), (out, grads, video) = results[False], results[True]
    transformers = [
        m for m in video.motion_modules.modules() if isinstance(m, TemporalTransformer3D)
    ]
    assert transformers and all(m._compiled_call_impl is not None for m in transformers)
    assert video.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged
    assert torch.allclose(out, eager, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(grads, eager_grads))


# Forward-only ops (their backward passes are other ops): run during backward() only to recompute.
FORWARD_MATMULS = (
    {"convolution", "addmm"}
    | {f"_scaled_dot_product_{kind}_attention" for kind in ("flash", "efficient", "cudnn")}
    | {"_scaled_dot_product_flash_attention_for_cpu"}
)


class _CountMatmuls(TorchDispatchMode):
    """Counts convolution, biased-linear and attention forward ops (selective checkpointing keeps
    their outputs)."""

    def __enter__(self):
        self.calls = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.overloadpacket.__name__ in FORWARD_MATMULS
        return func(*args, **(kwargs or {}))


def test_scalar_timestep_broadcasts(unet2d):
    video = _video_unet(unet2d)
    sample, _, text = _inputs()
    with torch.no_grad():
        a = video(sample, 250, text)
        b = video(sample, torch.tensor(250), text)
        c = video(sample, torch.tensor([250, 250]), text)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_bad_inputs_are_clear_errors(unet2d):
    video = _video_unet(unet2d, max_frames=4)
    sample, timestep, text = _inputs(frames=5)
    with pytest.raises(ValueError, match="max_frames=4"):
        video(sample, timestep, text)
    sample, timestep, text = _inputs()
    with pytest.raises(ValueError, match="sample must be"):
        video(sample[:, :, 0], timestep, text)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        video(sample, timestep, text[:1])
    with pytest.raises(ValueError, match="timestep"):
        video(sample, torch.tensor([1, 2, 3]), text)
    other = MotionModules((32, 64), 1, MotionModuleConfig(**TINY_MOTION))
    with pytest.raises(ValueError, match="do not fit"):
        VideoUNet.from_unet2d(unet2d, MotionModuleConfig(**TINY_MOTION), other)
    no_mid = MotionModuleConfig(**TINY_MOTION, mid_block=False)
    with pytest.raises(ValueError, match="do not fit"):
        VideoUNet(unet2d, MotionModules((32, 64), 2, MotionModuleConfig(**TINY_MOTION)), no_mid)


def test_unsupported_unet_is_refused():
    kwargs = {**tiny_unet_kwargs(), "class_embed_type": "timestep"}
    with pytest.raises(ValueError, match="class / addition embeddings"):
        VideoUNet.from_unet2d(UNet2DConditionModel(**kwargs), MotionModuleConfig(**TINY_MOTION))


@pytest.mark.parametrize("mid_block", [True, False])
def test_sd15_trainable_parameters_are_the_motion_modules_alone(mid_block):
    """The released v2 (with mid block) and v1/v3 (without) layouts, built on the meta device:
    only the motion modules train (their released sizes are pinned in test_motion_module)."""
    motion = MotionModuleConfig(num_heads=8, mid_block=mid_block)
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768
        )
        expected = sum(
            p.numel() for p in MotionModules((320, 640, 1280, 1280), 2, motion).parameters()
        )
    video = VideoUNet.from_unet2d(unet, motion)
    assert (
        video.motion_modules.down_blocks[0]
        .motion_modules[0]
        .temporal_transformer.norm.weight.is_meta
    )
    assert sum(p.numel() for p in video.trainable_parameters()) == expected
    assert sum(p.numel() for p in video.parameters() if p.requires_grad) == expected


class _VideoGroupNorm(torch.nn.Module):
    """The original v1's base norm, written as it is there: ``nn.GroupNorm`` applied to the 5-D
    video tensor ``(batch, channels, frames, height, width)``."""

    def __init__(self, norm: torch.nn.GroupNorm, frames: int) -> None:
        super().__init__()
        self.norm, self.frames = norm, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        video = x.reshape(-1, self.frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.norm(video).permute(0, 2, 1, 3, 4).reshape(x.shape)


def _original_v1_unet2d(unet2d: UNet2DConditionModel, frames: int) -> UNet2DConditionModel:
    """A copy whose resnet norms and output norm are the original v1's (use_inflated_groupnorm:
    false in its ResnetBlock3D and UNet3DConditionModel.conv_norm_out)."""
    import copy

    from diffusers.models.resnet import ResnetBlock2D

    v1 = copy.deepcopy(unet2d)
    for module in v1.modules():
        if isinstance(module, ResnetBlock2D):
            module.norm1 = _VideoGroupNorm(module.norm1, frames)
            module.norm2 = _VideoGroupNorm(module.norm2, frames)
    v1.conv_norm_out = _VideoGroupNorm(v1.conv_norm_out, frames)
    return v1


@pytest.mark.parametrize("checkpointing", [False, True])
def test_v1_base_norm_across_frames_matches_the_original(unet2d, checkpointing):
    """``base_norm: across_frames`` computes what the original v1 computes; per-frame statistics
    (v2/v3, diffusers) give another function."""
    frames = 5
    sample, timestep, text = _inputs(frames=frames)
    ours = _video_unet(unet2d, base_norm="across_frames", mid_block=False, max_frames=24)
    if checkpointing:
        ours.enable_gradient_checkpointing()
    per_frame_cfg = MotionModuleConfig(**TINY_MOTION, mid_block=False, max_frames=24)
    reference = VideoUNet(_original_v1_unet2d(unet2d, frames), ours.motion_modules, per_frame_cfg)
    per_frame = VideoUNet(unet2d, ours.motion_modules, per_frame_cfg)
    with torch.set_grad_enabled(checkpointing):
        expected = reference(sample, timestep, text)
        got = ours(sample, timestep, text)
        other = per_frame(sample, timestep, text)
    assert (got - expected).abs().max() <= 1e-5
    assert (other - expected).abs().max() > 1e-2


def test_resnet_forward_is_diffusers_resnet_forward(unet2d):
    """The across-frames path re-runs ``ResnetBlock2D.forward``: with plain norms it must be that
    forward exactly (a guard against drifting from diffusers)."""
    from animatediff.unet import resnet_forward

    generator = torch.Generator().manual_seed(3)
    emb = torch.randn(6, unet2d.config.block_out_channels[0] * 4, generator=generator)
    for resnet in (unet2d.down_blocks[1].resnets[0], unet2d.up_blocks[0].resnets[2]):
        hidden = torch.randn(6, resnet.in_channels, 4, 4, generator=generator)
        with torch.no_grad():
            expected = resnet(hidden, emb)
            got = resnet_forward(resnet, hidden, emb, lambda norm, x: norm(x))
        assert torch.equal(got, expected)
