"""The inflated video UNet: a frozen diffusers ``UNet2DConditionModel`` plus AnimateDiff motion modules.

Frames are folded into the batch (``b c f h w -> (b f) c h w``) for every 2D layer; a motion module
follows every resnet/attention pair at every resolution level of the down and up paths, and the
attention of the mid block when the motion config asks for it (v2 layout). The forward re-runs the
diffusers blocks' loops (resnets, attentions, down/upsamplers) so the motion modules slot in exactly
where diffusers' ``UNetMotionModel`` puts them.

The base's GroupNorms normalise each frame (v2/v3, diffusers). ``model.motion.base_norm:
across_frames`` reproduces the original v1 (``use_inflated_groupnorm: false``), which applies the
frozen UNet's resnet and output ``nn.GroupNorm`` to the 5-D video tensor: one set of statistics per
clip and group, over all its frames (the 2D transformers' norms stay per frame, as there).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from animatediff.config import MotionModuleConfig
from animatediff.motion_module import MotionModules, TemporalTransformer3D

_DOWN_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D"}
_UP_TYPES = {"CrossAttnUpBlock2D", "UpBlock2D"}
_MID_TYPE = "UNetMidBlock2DCrossAttn"

# One step of a layer group: ("resnet" | "attn" | "motion", module).
Step = tuple[str, nn.Module]

_aten = torch.ops.aten
# What ``checkpoint_saves="matmuls"`` keeps: the ops whose recomputation costs the most.
_MATMUL_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
    _aten.convolution.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _save_matmuls(_ctx, op, *_args, **_kwargs) -> CheckpointPolicy:
    """Selective-checkpointing policy: keep matmul, convolution and attention outputs, recompute
    the rest (norms, activations, element-wise ops)."""
    return CheckpointPolicy.MUST_SAVE if op in _MATMUL_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _check_supported(unet2d: nn.Module) -> None:
    """Refuse UNet features this forward does not implement, instead of silently ignoring them."""
    config = unet2d.config
    problems = []
    if not set(config.down_block_types) <= _DOWN_TYPES:
        problems.append(
            f"down_block_types {tuple(config.down_block_types)} (supported: {_DOWN_TYPES})"
        )
    if not set(config.up_block_types) <= _UP_TYPES:
        problems.append(f"up_block_types {tuple(config.up_block_types)} (supported: {_UP_TYPES})")
    if config.mid_block_type != _MID_TYPE or len(unet2d.mid_block.attentions) != 1:
        problems.append(
            f"mid_block_type {config.mid_block_type!r} (supported: {_MID_TYPE} with 1 attention)"
        )
    if not isinstance(config.layers_per_block, int):
        problems.append(f"per-block layers_per_block {config.layers_per_block}")
    if unet2d.class_embedding is not None or config.addition_embed_type is not None:
        problems.append("class / addition embeddings")
    if unet2d.encoder_hid_proj is not None:
        problems.append("encoder_hid_proj")
    if problems:
        raise ValueError(
            "VideoUNet cannot inflate this UNet2DConditionModel: " + "; ".join(problems)
        )


def group_norm_across_frames(
    norm: nn.GroupNorm, hidden: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """``norm`` with the original v1's statistics: ``hidden`` (batch*frames, C, H, W) is
    normalised per clip and group over all frames, as ``nn.GroupNorm`` on (batch, C, frames, H, W)."""
    batch_frames, channels, height, width = hidden.shape
    # (b f) c h w -> b c f h w
    video = hidden.view(batch_frames // num_frames, num_frames, channels, height, width)
    video = F.group_norm(video.transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps)
    return video.transpose(1, 2).reshape(batch_frames, channels, height, width)


def resnet_forward(
    resnet: nn.Module,
    hidden: torch.Tensor,
    emb: torch.Tensor,
    norm: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """diffusers' ``ResnetBlock2D.forward`` (SD's ``time_embedding_norm="default"``, no resampling
    inside the block) with its two GroupNorms computed by ``norm(module, x)``."""
    x = resnet.nonlinearity(norm(resnet.norm1, hidden))
    x = resnet.conv1(x)
    if resnet.time_emb_proj is not None:
        t = emb if resnet.skip_time_act else resnet.nonlinearity(emb)
        x = x + resnet.time_emb_proj(t)[:, :, None, None]
    x = resnet.nonlinearity(norm(resnet.norm2, x))
    x = resnet.conv2(resnet.dropout(x))
    shortcut = hidden if resnet.conv_shortcut is None else resnet.conv_shortcut(hidden)
    return (shortcut + x) / resnet.output_scale_factor


def _check_norm_across_frames_supported(unet2d: nn.Module) -> None:
    from diffusers.models.resnet import ResnetBlock2D

    for name, module in unet2d.named_modules():
        if isinstance(module, ResnetBlock2D) and (
            module.time_embedding_norm != "default"
            or module.upsample is not None
            or module.downsample is not None
        ):
            raise ValueError(
                f"model.motion.base_norm=across_frames: resnet {name} uses "
                f"time_embedding_norm={module.time_embedding_norm!r} or resamples inside the block "
                "(only SD 1.x resnets are supported)"
            )


class VideoUNet(nn.Module):
    """A frozen 2D UNet (``.unet2d``, the caller's modules, shared not copied) and trainable
    ``.motion_modules``.

    ``forward(sample: (batch, channels, frames, height, width), timestep: () or (batch,),
    encoder_hidden_states: (batch, tokens, dim)) -> (batch, out_channels, frames, height, width)``.
    """

    def __init__(
        self, unet2d: nn.Module, motion_modules: MotionModules, motion_cfg: MotionModuleConfig
    ) -> None:
        super().__init__()
        _check_supported(unet2d)
        config = unet2d.config
        expected = (tuple(config.block_out_channels), config.layers_per_block, motion_cfg.mid_block)
        found = (
            motion_modules.block_out_channels,
            motion_modules.layers_per_block,
            motion_modules.mid_block is not None,
        )
        if expected != found:
            raise ValueError(
                "motion modules do not fit this UNet: (block_out_channels, layers_per_block, "
                f"model.motion.mid_block) is {expected} for the UNet/config but {found} for the modules"
            )
        if motion_cfg.base_norm == "across_frames":
            _check_norm_across_frames_supported(unet2d)
        unet2d.requires_grad_(False)
        self.unet2d = unet2d
        self.motion_modules = motion_modules
        self.motion_cfg = motion_cfg
        self.base_norm_across_frames = motion_cfg.base_norm == "across_frames"
        self.gradient_checkpointing = False
        self.checkpoint_motion_modules = True
        self.checkpoint_saves = "nothing"
        if motion_cfg.gradient_checkpointing:
            self.enable_gradient_checkpointing(
                motion_cfg.checkpoint_motion_modules, motion_cfg.checkpoint_saves
            )
        if motion_cfg.compile_motion_modules:
            self.compile_motion_modules()

    @classmethod
    def from_unet2d(
        cls,
        unet2d: nn.Module,
        motion_cfg: MotionModuleConfig,
        motion_modules: MotionModules | None = None,
    ) -> VideoUNet:
        """Inflate ``unet2d`` (its modules are reused and frozen in place). Without
        ``motion_modules`` fresh ones are built on the UNet's device and dtype (identity at start
        when ``motion_cfg.zero_init_out``)."""
        if motion_modules is None:
            with torch.device(unet2d.device):
                motion_modules = MotionModules(
                    tuple(unet2d.config.block_out_channels),
                    unet2d.config.layers_per_block,
                    motion_cfg,
                )
            motion_modules.to(dtype=unet2d.dtype)
        return cls(unet2d, motion_modules, motion_cfg)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The motion-module parameters that train (all of them, or a MotionLoRA's adapters)."""
        return [p for p in self.motion_modules.parameters() if p.requires_grad]

    def compile_motion_modules(self) -> None:
        """``torch.compile`` each motion module's temporal transformer in place
        (``model.motion.compile_motion_modules``); parameter names and state dicts stay as
        they are."""
        for module in self.motion_modules.modules():
            if isinstance(module, TemporalTransformer3D):
                module.compile()

    def enable_gradient_checkpointing(
        self, motion_modules: bool = True, saves: str = "nothing"
    ) -> None:
        """Recompute activations in the backward pass (``model.motion.checkpoint_*``).

        ``motion_modules=True`` (the default): every resnet/attention/motion-module group, the
        upsamplers and the output head are checkpointed; the least memory. ``False``: only
        the 2D layers are recomputed and the motion modules keep their activations (what diffusers'
        ``UNetMotionModel`` does outside its mid block): more memory, less recomputation.
        ``saves``: ``nothing`` (a group keeps its input only) or ``matmuls`` (also its matmul,
        convolution and attention outputs: only the cheap ops are recomputed)."""
        if saves not in ("nothing", "matmuls"):
            raise ValueError(
                f"model.motion.checkpoint_saves: 'nothing' or 'matmuls', got {saves!r}"
            )
        self.gradient_checkpointing = True
        self.checkpoint_motion_modules = motion_modules
        self.checkpoint_saves = saves
        # The groups already cover the motion modules; checkpointing them again would recompute twice.
        self.motion_modules.set_gradient_checkpointing(False)

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False
        self.motion_modules.set_gradient_checkpointing(False)

    # -- forward ------------------------------------------------------------------------------

    def _checkpointed(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return fn(*args)
        if self.checkpoint_saves == "matmuls":
            context = partial(create_selective_checkpoint_contexts, _save_matmuls)
            return checkpoint(fn, *args, use_reentrant=False, context_fn=context)
        return checkpoint(fn, *args, use_reentrant=False)

    def _group(
        self,
        steps: list[Step],
        hidden: torch.Tensor,
        emb: torch.Tensor,
        text: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """Run resnet / cross-attention / motion-module steps on (batch*frames, C, H, W)."""

        across = partial(group_norm_across_frames, num_frames=num_frames)

        def run(steps: list[Step], hidden: torch.Tensor, emb: torch.Tensor, text: torch.Tensor):
            for kind, module in steps:
                if kind == "resnet" and self.base_norm_across_frames:
                    hidden = resnet_forward(module, hidden, emb, across)
                elif kind == "resnet":
                    hidden = module(hidden, emb)
                elif kind == "attn":
                    hidden = module(hidden, encoder_hidden_states=text, return_dict=False)[0]
                else:
                    hidden = module(hidden, num_frames)
            return hidden

        if self.checkpoint_motion_modules:
            return self._checkpointed(partial(run, steps), hidden, emb, text)
        # Checkpoint each run of consecutive 2D steps; motion modules keep their activations.
        segment: list[Step] = []
        for step in steps + [("end", None)]:
            if step[0] in ("motion", "end"):
                if segment:
                    hidden = self._checkpointed(partial(run, segment), hidden, emb, text)
                    segment = []
                if step[0] == "motion":
                    hidden = run([step], hidden, emb, text)
            else:
                segment.append(step)
        return hidden

    def _time_embedding(
        self, timestep: torch.Tensor | float | int, sample: torch.Tensor
    ) -> torch.Tensor:
        """(batch, time_embed_dim) from a scalar, () or (batch,) timestep."""
        unet, batch = self.unet2d, sample.shape[0]
        if not torch.is_tensor(timestep):
            dtype = torch.float32 if isinstance(timestep, float) else torch.int64
            timestep = torch.tensor(timestep, dtype=dtype, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep[None]
        if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
            raise ValueError(
                f"timestep must be a scalar or have shape ({batch},), got {tuple(timestep.shape)}"
            )
        t_emb = unet.time_proj(timestep.to(sample.device).expand(batch)).to(sample.dtype)
        emb = unet.time_embedding(t_emb)
        return emb if unet.time_embed_act is None else unet.time_embed_act(emb)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """``sample``: (batch, channels, frames, height, width); ``timestep``: () or (batch,);
        ``encoder_hidden_states``: (batch, tokens, dim) -> (batch, out_channels, frames, height, width)."""
        if sample.ndim != 5:
            raise ValueError(
                f"sample must be (batch, channels, frames, height, width), got {tuple(sample.shape)}"
            )
        batch, channels, frames, height, width = sample.shape
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states must be ({batch}, tokens, dim), got "
                f"{tuple(encoder_hidden_states.shape)}"
            )
        if frames > self.motion_cfg.max_frames:
            raise ValueError(
                f"{frames} frames exceed model.motion.max_frames={self.motion_cfg.max_frames}; "
                "use sliding context windows"
            )
        unet, mm = self.unet2d, self.motion_modules

        # Fold frames into the batch; every per-clip input is repeated per frame in (b f) order.
        hidden = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        emb = self._time_embedding(timestep, sample).repeat_interleave(frames, dim=0)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)
        if unet.config.center_input_sample:
            hidden = 2 * hidden - 1.0
        # Sizes that are not multiples of the total upsampling must be forwarded to the upsamplers.
        forward_upsample_size = any(s % 2**unet.num_upsamplers for s in (height, width))

        hidden = unet.conv_in(hidden)
        skips = [hidden]
        for block, motion in zip(unet.down_blocks, mm.down_blocks):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, motion_module in zip(
                block.resnets, attentions, motion.motion_modules
            ):
                steps = [("resnet", resnet), ("attn", attn), ("motion", motion_module)]
                hidden = self._group(
                    [s for s in steps if s[1] is not None], hidden, emb, text, frames
                )
                skips.append(hidden)
            for downsampler in block.downsamplers or []:
                hidden = downsampler(hidden)
                skips.append(hidden)

        mid = unet.mid_block
        hidden = self._group([("resnet", mid.resnets[0])], hidden, emb, text, frames)
        steps = [("attn", mid.attentions[0])]
        if mm.mid_block is not None:  # after the attention, before the second resnet (as diffusers)
            steps.append(("motion", mm.mid_block.motion_modules[0]))
        hidden = self._group(steps + [("resnet", mid.resnets[1])], hidden, emb, text, frames)

        for index, (block, motion) in enumerate(zip(unet.up_blocks, mm.up_blocks)):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, motion_module in zip(
                block.resnets, attentions, motion.motion_modules
            ):
                hidden = torch.cat([hidden, skips.pop()], dim=1)
                steps = [("resnet", resnet), ("attn", attn), ("motion", motion_module)]
                hidden = self._group(
                    [s for s in steps if s[1] is not None], hidden, emb, text, frames
                )
            is_final = index == len(unet.up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and not is_final else None
            for upsampler in block.upsamplers or []:
                # partial, not a closure: the recomputation runs after the loop has moved on.
                hidden = self._checkpointed(partial(upsampler, output_size=upsample_size), hidden)

        hidden = self._checkpointed(partial(self._head, num_frames=frames), hidden)
        return hidden.reshape(batch, frames, -1, height, width).transpose(1, 2)

    def _head(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        unet = self.unet2d
        if unet.conv_norm_out is not None:
            if self.base_norm_across_frames:
                hidden = group_norm_across_frames(unet.conv_norm_out, hidden, num_frames)
            else:
                hidden = unet.conv_norm_out(hidden)
            hidden = unet.conv_act(hidden)
        return unet.conv_out(hidden)


class FrameUNet(nn.Module):
    """A 2D ``UNet2DConditionModel`` over video-shaped input, each frame on its own (the image
    stage trains the base this way on frames drawn from clips).

    ``forward(sample: (batch, channels, frames, height, width), timestep: () or (batch,),
    encoder_hidden_states: (batch, tokens, dim)) -> (batch, out_channels, frames, height, width)``.
    """

    def __init__(self, unet2d: nn.Module) -> None:
        super().__init__()
        self.unet2d = unet2d

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        batch, channels, frames, height, width = sample.shape
        # (batch, channels, frames, h, w) -> (batch*frames, channels, h, w)
        images = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 1:
            timestep = timestep.repeat_interleave(frames)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)
        out = self.unet2d(images, timestep, encoder_hidden_states=text, return_dict=False)[0]
        return out.reshape(batch, frames, -1, height, width).transpose(1, 2)
