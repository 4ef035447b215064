"""The motion module against the original AnimateDiff formulation and diffusers' implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animatediff.config import MotionModuleConfig
from animatediff.motion_module import (
    MotionModule,
    MotionModules,
    resize_position_table,
    sinusoidal_position_encoding,
    to_diffusers_key,
)

TINY = dict(norm_groups=8, num_heads=4)


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def _original_forward(module: MotionModule, video: torch.Tensor) -> torch.Tensor:
    """The released AnimateDiff code path, written out with its own layouts.

    ``video``: (batch, channels, frames, height, width), as the original module receives it."""
    tt = module.temporal_transformer
    b, c, f, h, w = video.shape
    x = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # "b c f h w -> (b f) c h w"
    residual = x
    x = tt.norm(x)  # per frame
    x = x.permute(0, 2, 3, 1).reshape(b * f, h * w, c)
    x = tt.proj_in(x)
    for block in tt.transformer_blocks:
        for attention, norm in zip(block.attention_blocks, block.norms):
            y = norm(x)
            # VersatileAttention: "(b f) d c -> (b d) f c", then the position encoding
            y = y.reshape(b, f, h * w, c).transpose(1, 2).reshape(b * h * w, f, c)
            y = y + attention.pos_encoder.pe[:, :f]
            heads = attention.num_heads
            q, k, v = (
                t.reshape(b * h * w, f, heads, c // heads).transpose(1, 2)
                for t in (attention.to_q(y), attention.to_k(y), attention.to_v(y))
            )
            scores = (q @ k.transpose(-1, -2)) * (c // heads) ** -0.5
            y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b * h * w, f, c)
            y = attention.to_out[0](y)
            y = y.reshape(b, h * w, f, c).transpose(1, 2).reshape(b * f, h * w, c)  # back
            x = y + x
        x = block.ff(block.ff_norm(x)) + x
    x = tt.proj_out(x)
    x = x.reshape(b * f, h, w, c).permute(0, 3, 1, 2) + residual
    return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def test_state_dict_keys_are_the_original_layout():
    module = MotionModule(32, MotionModuleConfig(**TINY))
    keys = set(module.state_dict())
    p = "temporal_transformer."
    block = p + "transformer_blocks.0."
    expected = {p + "norm.weight", p + "norm.bias", p + "proj_in.weight", p + "proj_in.bias"}
    expected |= {p + "proj_out.weight", p + "proj_out.bias"}
    for a in (0, 1):
        att = f"{block}attention_blocks.{a}."
        expected |= {att + n + ".weight" for n in ("to_q", "to_k", "to_v")}
        expected |= {att + "to_out.0.weight", att + "to_out.0.bias", att + "pos_encoder.pe"}
        expected |= {f"{block}norms.{a}.weight", f"{block}norms.{a}.bias"}
    expected |= {block + s for s in ("ff.net.0.proj.weight", "ff.net.0.proj.bias")}
    expected |= {block + s for s in ("ff.net.2.weight", "ff.net.2.bias")}
    expected |= {block + "ff_norm.weight", block + "ff_norm.bias"}
    assert keys == expected
    assert module.state_dict()[block + "attention_blocks.0.pos_encoder.pe"].shape == (1, 32, 32)


def test_fresh_module_is_identity_and_zero_init_covers_weight_and_bias():
    module = MotionModule(32, MotionModuleConfig(**TINY))
    proj_out = module.temporal_transformer.proj_out
    assert torch.count_nonzero(proj_out.weight) == 0 and torch.count_nonzero(proj_out.bias) == 0
    x = torch.randn(2 * 4, 32, 3, 5)
    assert torch.equal(module(x, 4), x)
    assert (
        torch.count_nonzero(
            MotionModule(
                32, MotionModuleConfig(**TINY, zero_init_out=False)
            ).temporal_transformer.proj_out.weight
        )
        > 0
    )


def test_matches_the_original_formulation_per_frame_norm():
    module = MotionModule(32, MotionModuleConfig(**TINY))
    _randomize(module)
    video = torch.randn(2, 32, 6, 3, 5)
    folded = video.permute(0, 2, 1, 3, 4).reshape(12, 32, 3, 5)
    ours = module(folded, 6).reshape(2, 6, 32, 3, 5).permute(0, 2, 1, 3, 4)
    reference = _original_forward(module, video)
    assert (ours - reference).abs().max() <= 1e-5


def test_matches_diffusers_transformer_with_cross_frame_norm():
    from diffusers import MotionAdapter

    cfg = MotionModuleConfig(**TINY, cross_frame_norm=True)
    ours = MotionModules((32, 64), 2, cfg)
    _randomize(ours, seed=1)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_norm_num_groups=8,
        motion_num_attention_heads=4,
    )
    converted = {to_diffusers_key(k): v for k, v in ours.state_dict().items()}
    converted.pop(None)
    adapter.load_state_dict(converted, strict=True)
    x = torch.randn(2 * 5, 64, 3, 3)
    a = ours.up_blocks[0].motion_modules[2](x, 5)
    b = adapter.up_blocks[0].motion_modules[2](x, num_frames=5)
    assert (a - b).abs().max() <= 1e-5
    # The original per-frame norm is a different function (statistics per frame, not per clip).
    for module in ours.modules():
        if hasattr(module, "cross_frame_norm"):
            module.cross_frame_norm = False
    assert (ours.up_blocks[0].motion_modules[2](x, 5) - b).abs().max() > 1e-3


def test_to_diffusers_key():
    prefix = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0."
    assert (
        to_diffusers_key(prefix + "attention_blocks.1.to_out.0.weight")
        == "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_out.0.weight"
    )
    assert to_diffusers_key(prefix + "norms.0.bias").endswith("transformer_blocks.0.norm1.bias")
    assert to_diffusers_key(prefix + "ff_norm.weight").endswith("transformer_blocks.0.norm3.weight")
    assert to_diffusers_key(prefix + "ff.net.0.proj.weight").endswith(
        "blocks.0.ff.net.0.proj.weight"
    )
    assert to_diffusers_key(prefix + "attention_blocks.0.pos_encoder.pe").endswith(
        "motion_modules.0.transformer_blocks.0.pos_embed.pe"
    )
    assert to_diffusers_key(prefix + "attention_blocks.1.pos_encoder.pe") is None
    assert to_diffusers_key("mid_block.motion_modules.0.temporal_transformer.proj_in.bias") == (
        "mid_block.motion_modules.0.proj_in.bias"
    )
    assert to_diffusers_key("temporal_transformer.norm.weight") == "norm.weight"


def test_too_many_frames_and_bad_shapes_are_clear_errors():
    module = MotionModule(32, MotionModuleConfig(**TINY, max_frames=4))
    with pytest.raises(ValueError, match="max_frames=4"):
        module(torch.randn(5, 32, 2, 2), 5)
    with pytest.raises(ValueError, match="does not divide"):
        module(torch.randn(5, 32, 2, 2), 2)
    with pytest.raises(ValueError, match="norm_groups"):
        MotionModule(36, MotionModuleConfig(norm_groups=8))
    with pytest.raises(ValueError, match="num_heads"):
        MotionModule(40, MotionModuleConfig(norm_groups=8, num_heads=16))


def test_gradient_checkpointing_same_outputs_and_grads():
    results = []
    for enabled in (False, True):
        module = MotionModule(32, MotionModuleConfig(**TINY, gradient_checkpointing=enabled))
        _randomize(module, seed=3)
        x = torch.randn(
            2 * 4, 32, 3, 3, generator=torch.Generator().manual_seed(4), requires_grad=True
        )
        out = module(x, 4)
        F.mse_loss(out, torch.zeros_like(out)).backward()
        results.append((out.detach(), x.grad, [p.grad for p in module.parameters()]))
    (out0, xg0, g0), (out1, xg1, g1) = results
    assert torch.allclose(out0, out1, atol=1e-6)
    assert torch.allclose(xg0, xg1, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


@pytest.mark.parametrize("mid_block, expected", [(True, 453_209_280), (False, 417_137_600)])
def test_parameter_counts_match_the_released_sd15_modules(mid_block, expected):
    with torch.device("meta"):
        modules = MotionModules((320, 640, 1280, 1280), 2, MotionModuleConfig(mid_block=mid_block))
    assert sum(p.numel() for p in modules.parameters()) == expected


def _stretched_reference(table: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling with half-sample centres, written out: row i samples the old table at
    (i + 0.5) * old / new - 0.5, clamped to the ends (ComfyUI-AnimateDiff-Evolved's rule)."""
    old = table.shape[0]
    out = np.empty((length, table.shape[1]), dtype=np.float64)
    for i in range(length):
        x = min(max((i + 0.5) * old / length - 0.5, 0.0), old - 1)
        lo = int(np.floor(x))
        hi = min(lo + 1, old - 1)
        out[i] = (1 - (x - lo)) * table[lo] + (x - lo) * table[hi]
    return out


def test_position_tables_extend_the_sinusoid_or_stretch_the_trained_table():
    table = sinusoidal_position_encoding(24, 32)
    extended = resize_position_table(table, 64, "extend")
    assert extended.shape == (1, 64, 32)
    assert torch.allclose(extended, sinusoidal_position_encoding(64, 32), atol=1e-6)
    assert torch.equal(extended[:, :24], table)  # the rows a 24-frame clip uses are untouched

    trained = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(0))
    stretched = resize_position_table(trained, 64, "interpolate")
    expected = _stretched_reference(trained[0].double().numpy(), 64)
    assert np.abs(stretched[0].double().numpy() - expected).max() < 1e-6
    assert torch.equal(resize_position_table(trained, 24, "interpolate"), trained)
    with pytest.raises(ValueError, match="only grow"):
        resize_position_table(trained, 16, "extend")
    with pytest.raises(ValueError, match="pe_resize"):
        resize_position_table(trained, 32, "repeat")


def test_extended_modules_run_longer_clips_and_keep_short_ones():
    cfg = MotionModuleConfig(**TINY, max_frames=8)
    modules = MotionModules((32, 64), 1, cfg)
    _randomize(modules, seed=5)
    module = modules.down_blocks[0].motion_modules[0]
    short = torch.randn(2 * 6, 32, 3, 3, generator=torch.Generator().manual_seed(6))
    before = module(short, 6)
    with pytest.raises(ValueError, match="max_frames=8"):
        module(torch.randn(20, 32, 3, 3), 20)
    modules.resize_position_tables(20, "extend")
    assert torch.equal(module(short, 6), before)
    assert module(torch.randn(20, 32, 3, 3), 20).shape == (20, 32, 3, 3)
    assert modules.cfg.max_frames == 20
    modules.resize_position_tables(40, "interpolate")
    assert not torch.equal(module(short, 6), before)  # positions moved: a stretched table
