"""Test helper: diffusers SD 1.x components -> one state dict in the original LDM/A1111 key layout.

This is the layout of single-file checkpoints shared on community model sites
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``). It is
the inverse of diffusers' single-file conversion, written independently so that loading the file
back through diffusers and comparing weights tests both directions.
"""

from __future__ import annotations

import re

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET[name]}.{tail}"


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """``UNet2DConditionModel`` (SD 1.x block types) -> ``model.diffusion_model.*`` keys."""
    layers = unet.config.layers_per_block
    has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    out = {}
    for key, value in unet.state_dict().items():
        m = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
        if key.startswith("time_embedding.linear_1."):
            new = "time_embed.0." + key.rsplit(".", 1)[1]
        elif key.startswith("time_embedding.linear_2."):
            new = "time_embed.2." + key.rsplit(".", 1)[1]
        elif key.startswith("conv_in."):
            new = "input_blocks.0.0." + key.split(".", 1)[1]
        elif key.startswith("conv_norm_out."):
            new = "out.0." + key.split(".", 1)[1]
        elif key.startswith("conv_out."):
            new = "out.2." + key.split(".", 1)[1]
        elif m:
            kind, i, sub, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            if kind == "down_blocks":
                index = 1 + i * (layers + 1) + j
                prefix = "input_blocks"
            else:
                index = i * (layers + 1) + j
                prefix = "output_blocks"
            if sub == "resnets":
                new = f"{prefix}.{index}.0.{_resnet(rest)}"
            else:
                new = f"{prefix}.{index}.1.{rest}"
        elif m := re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
        elif m := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            i = int(m[1])
            position = 2 if has_attention[i] else 1
            new = f"output_blocks.{i * (layers + 1) + layers}.{position}.conv.{m[2]}"
        elif m := re.match(r"^mid_block\.resnets\.(\d+)\.(.+)$", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"^mid_block\.attentions\.0\.(.+)$", key):
            new = f"middle_block.1.{m[1]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """``AutoencoderKL`` -> ``first_stage_model.*`` keys (attention weights as 1x1 convs)."""
    levels = len(vae.config.block_out_channels)
    attention = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        if m := re.match(
            r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key
        ):
            new = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        elif m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        new = new.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """``CLIPTextModel`` -> ``cond_stage_model.transformer.text_model.*`` keys."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return out


def to_ldm_checkpoint(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One A1111-style single-file state dict (contiguous copies, ready for safetensors)."""
    merged = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    return {key: value.detach().contiguous().clone() for key, value in merged.items()}
