"""The AnimateDiff motion module: a temporal transformer inserted after the UNet's 2D layers.

Faithful to the original release (guoyww/AnimateDiff ``animatediff/models/motion_module.py``, v2):
GroupNorm (per frame by default) -> ``proj_in`` -> transformer blocks, each
``[LayerNorm -> temporal self-attention with sinusoidal position encoding] x attention_blocks`` then
``LayerNorm -> GEGLU feed-forward``, every sub-layer residual -> ``proj_out`` (zero-initialised) ->
residual add of the module input. Attention runs along frames only: every spatial position of every
clip is one sequence of ``frames`` tokens.

State-dict keys are the original ones (``temporal_transformer.transformer_blocks.0.attention_blocks.0
.to_q.weight`` ...), so ``MotionModules.state_dict()`` is the released checkpoint layout;
``to_diffusers_key`` maps it onto diffusers' ``MotionAdapter`` names.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from animatediff.config import MotionModuleConfig


def sinusoidal_position_encoding(max_frames: int, channels: int) -> torch.Tensor:
    """The original ``PositionalEncoding`` table: ``(1, max_frames, channels)``, sin on even
    channels, cos on odd ones (same formula as diffusers' ``SinusoidalPositionalEmbedding``)."""
    position = torch.arange(max_frames).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, max_frames, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def resize_position_table(table: torch.Tensor, length: int, method: str) -> torch.Tensor:
    """A ``(1, frames, channels)`` position table made ``length`` (>= frames) rows long.

    ``extend``: the table's rows are kept and the sinusoid continues after them (the rows a clip
    of at most ``frames`` frames uses do not change). ``interpolate``: the table is stretched,
    row ``i`` of the result sampling the old table at ``(i + 0.5) * frames / length - 0.5``
    (linear, clamped at the ends: ``F.interpolate(..., mode="bilinear", align_corners=False)``,
    the formula of ComfyUI-AnimateDiff-Evolved's ``interpolate_pe_to_length``)."""
    _, frames, channels = table.shape
    if length < frames:
        raise ValueError(f"position tables only grow: {frames} rows cannot become {length}")
    if length == frames:
        return table.clone()
    if method == "extend":
        tail = sinusoidal_position_encoding(length, channels)[:, frames:]
        return torch.cat([table, tail.to(table.dtype)], dim=1)
    if method == "interpolate":
        # (1, frames, channels) -> (1, 1, frames, channels): an image whose rows are positions.
        stretched = F.interpolate(
            table[None].float(), size=(length, channels), mode="bilinear", align_corners=False
        )
        return stretched[0].to(table.dtype)
    raise ValueError(f"model.motion.pe_resize: 'extend' or 'interpolate', got {method!r}")


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to ``(sequences, frames, channels)`` inputs."""

    def __init__(self, channels: int, max_frames: int) -> None:
        super().__init__()
        # Persistent (the released checkpoints carry ``pos_encoder.pe``), although the original
        # code now registers it with ``persistent=False``: its own state dicts have no tables and
        # ``animatediff.checkpoints`` recomputes them.
        self.register_buffer("pe", sinusoidal_position_encoding(max_frames, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (sequences, frames, channels) -> same shape."""
        # .to: DeepSpeed casts parameters to bf16 but keeps buffers in fp32.
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(nn.Module):
    """The original ``VersatileAttention`` in ``Temporal`` mode, self-attention only."""

    def __init__(self, channels: int, num_heads: int, max_frames: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pos_encoder = PositionalEncoding(channels, max_frames)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        # A list so the key is ``to_out.0`` as in the original (which follows it with Dropout(0)).
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (sequences, frames, channels), already normalised -> same shape."""
        sequences, frames, channels = x.shape
        x = self.pos_encoder(x)
        head_dim = channels // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (sequences, heads, frames, head_dim)
            return t.view(sequences, frames, self.num_heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        )
        out = out.transpose(1, 2).reshape(sequences, frames, channels)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """``proj`` to twice the width, then ``value * gelu(gate)`` (exact GELU, as diffusers)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward; ``net`` indices match the original keys (``net.0.proj``, ``net.2``)."""

    def __init__(self, channels: int, mult: int) -> None:
        super().__init__()
        inner = channels * mult
        self.net = nn.Sequential(
            GEGLU(channels, inner), nn.Dropout(0.0), nn.Linear(inner, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemporalTransformerBlock(nn.Module):
    """``attention_blocks`` pre-norm temporal self-attentions, then a pre-norm feed-forward."""

    def __init__(self, channels: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalSelfAttention(channels, cfg.num_heads, cfg.max_frames)
            for _ in range(cfg.attention_blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(cfg.attention_blocks))
        self.ff = FeedForward(channels, cfg.ff_mult)
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch*height*width, frames, channels) -> same shape."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3D(nn.Module):
    """The original ``TemporalTransformer3DModel``: norm, ``proj_in``, blocks, ``proj_out``, residual."""

    def __init__(self, channels: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        self.cross_frame_norm = cfg.cross_frame_norm
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, cfg) for _ in range(cfg.num_layers)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``hidden``: (batch*frames, channels, height, width) -> same shape."""
        batch_frames, channels, height, width = hidden.shape
        batch = batch_frames // num_frames
        if self.cross_frame_norm:
            # diffusers' variant: one set of statistics per clip, over all its frames.
            normed = hidden.reshape(batch, num_frames, channels, height, width).transpose(1, 2)
            normed = self.norm(normed).transpose(1, 2)
        else:
            normed = self.norm(hidden).view(batch, num_frames, channels, height, width)
        # (batch, frames, C, H, W) -> (batch*H*W, frames, C): one sequence per spatial position.
        x = normed.permute(0, 3, 4, 1, 2).reshape(batch * height * width, num_frames, channels)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.proj_out(x)
        x = x.view(batch, height, width, num_frames, channels).permute(0, 3, 4, 1, 2)
        return x.reshape(batch_frames, channels, height, width) + hidden


class MotionModule(nn.Module):
    """One motion module (the original ``VanillaTemporalModule``) for ``channels`` feature maps.

    ``forward(hidden: (batch*frames, channels, height, width), num_frames) -> same shape``; frames
    are consecutive in the folded batch (``(b f)`` order). With ``cfg.zero_init_out`` a fresh module
    is the identity."""

    def __init__(self, channels: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        if channels % cfg.norm_groups:
            raise ValueError(
                f"model.motion.norm_groups={cfg.norm_groups} must divide the channels ({channels})"
            )
        if channels % cfg.num_heads:
            raise ValueError(
                f"model.motion.num_heads={cfg.num_heads} must divide the channels ({channels})"
            )
        if channels % 2:
            raise ValueError(
                f"motion module channels must be even for the position encoding, got {channels}"
            )
        self.channels = channels
        self.max_frames = cfg.max_frames
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.temporal_transformer = TemporalTransformer3D(channels, cfg)
        if cfg.zero_init_out:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``hidden``: (batch*frames, channels, height, width) -> same shape."""
        if hidden.ndim != 4 or hidden.shape[1] != self.channels:
            raise ValueError(
                f"expected (batch*frames, {self.channels}, height, width), got {tuple(hidden.shape)}"
            )
        if num_frames < 1 or hidden.shape[0] % num_frames:
            raise ValueError(
                f"num_frames={num_frames} does not divide the folded batch of {hidden.shape[0]}"
            )
        if num_frames > self.max_frames:
            raise ValueError(
                f"{num_frames} frames exceed the position encoding length "
                f"model.motion.max_frames={self.max_frames}; use sliding context windows"
            )
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.temporal_transformer, hidden, num_frames, use_reentrant=False)
        return self.temporal_transformer(hidden, num_frames)


class BlockMotionModules(nn.Module):
    """The motion modules of one UNet block, under the key ``motion_modules``."""

    def __init__(self, channels: int, count: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        self.motion_modules = nn.ModuleList(MotionModule(channels, cfg) for _ in range(count))


class MotionModules(nn.Module):
    """All motion modules of one UNet: the trainable unit that checkpoints store.

    Keys: ``down_blocks.{i}.motion_modules.{j}`` (``j < layers_per_block``), ``up_blocks.{i}.
    motion_modules.{j}`` (``j < layers_per_block + 1``; up block ``i`` has the channels of
    ``reversed(block_out_channels)[i]``) and ``mid_block.motion_modules.0`` when ``cfg.mid_block``.
    """

    def __init__(
        self, block_out_channels: tuple[int, ...], layers_per_block: int, cfg: MotionModuleConfig
    ) -> None:
        super().__init__()
        if not block_out_channels or layers_per_block < 1:
            raise ValueError(
                f"need block_out_channels and layers_per_block >= 1, got {block_out_channels}, "
                f"{layers_per_block}"
            )
        self.block_out_channels = tuple(block_out_channels)
        self.layers_per_block = layers_per_block
        self.cfg = cfg
        self.down_blocks = nn.ModuleList(
            BlockMotionModules(c, layers_per_block, cfg) for c in block_out_channels
        )
        self.mid_block = (
            BlockMotionModules(block_out_channels[-1], 1, cfg) if cfg.mid_block else None
        )
        self.up_blocks = nn.ModuleList(
            BlockMotionModules(c, layers_per_block + 1, cfg) for c in reversed(block_out_channels)
        )

    def modules_list(self) -> list[MotionModule]:
        """Every ``MotionModule``, in state-dict order."""
        return [m for m in self.modules() if isinstance(m, MotionModule)]

    def resize_position_tables(self, length: int, method: str) -> None:
        """Make every position table ``length`` rows long (``resize_position_table``), in place;
        the modules then accept clips of up to ``length`` frames."""
        for module in self.modules_list():
            for encoder in module.modules():
                if isinstance(encoder, PositionalEncoding):
                    encoder.pe = resize_position_table(encoder.pe, length, method)
            module.max_frames = length
        self.cfg = dataclasses.replace(self.cfg, max_frames=length, pe_resize=method)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each module's activations in the backward pass (saves its input only)."""
        for module in self.modules_list():
            module.gradient_checkpointing = enabled

    def forward(self, *args, **kwargs):  # noqa: D102 - a container, like diffusers' MotionAdapter
        raise TypeError("MotionModules is a container; run it inside animatediff.unet.VideoUNet")


_DIFFUSERS_RENAMES = (
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
)
_POS_ENCODER = re.compile(r"\.attention_blocks\.(\d+)\.pos_encoder\.pe$")


def to_diffusers_key(key: str) -> str | None:
    """Map an original-layout key (``MotionModules`` or ``MotionModule`` state dict) to diffusers'
    ``MotionAdapter`` name; None for keys diffusers does not store.

    diffusers shares ONE position table per transformer block (``transformer_blocks.{k}.pos_embed.pe``,
    used by both attentions), so ``attention_blocks.0.pos_encoder.pe`` maps there and the other
    attention blocks' tables map to None (all tables are the same deterministic sinusoid).
    Only the 2-attention-block layout exists in diffusers (``attn1``/``attn2``)."""
    key = "." + key
    match = _POS_ENCODER.search(key)
    if match:
        if match.group(1) != "0":
            return None
        key = key[: match.start()] + ".pos_embed.pe"
    elif re.search(r"\.attention_blocks\.([2-9]|\d\d+)\.", key):
        raise ValueError(f"diffusers has no equivalent of more than 2 attention blocks: {key[1:]}")
    key = key.replace(".temporal_transformer.", ".")
    for old, new in _DIFFUSERS_RENAMES:
        key = key.replace(old, new)
    return key[1:]
