"""Load the frozen Stable Diffusion 1.5 components that the motion module animates.

``load_base_model(cfg.model.base)`` returns UNet, VAE, text encoder, tokenizer and the scheduler
config from a diffusers directory, a hub id (machines with internet) or ``builtin:tiny``.
All returned modules are frozen (``requires_grad=False``) and in eval mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animatediff.config import BaseModelConfig

BUILTIN_TINY = "builtin:tiny"


@dataclass
class BaseComponents:
    """The frozen image model. ``scheduler_config`` is the base's noise-scheduler config."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]
    source: str
    """The resolved pretrained path or hub id."""


def resolve_pretrained(cfg: BaseModelConfig) -> str:
    """The path or hub id that ``from_pretrained`` should read; materialises ``builtin:tiny``."""
    if cfg.pretrained == BUILTIN_TINY:
        from animatediff.tiny import save_tiny_base

        directory = Path(cfg.cache_dir).expanduser() / f"tiny-seed{cfg.tiny_seed}"
        return str(save_tiny_base(directory, seed=cfg.tiny_seed))
    return cfg.pretrained


def _freeze(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.to(dtype=dtype).eval()


def load_vae(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32):
    """Only the VAE (the preprocessing stage needs nothing else)."""
    from diffusers import AutoencoderKL

    return _freeze(AutoencoderKL.from_pretrained(resolve_pretrained(cfg), subfolder="vae"), dtype)


def load_text_encoder(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32):
    """The CLIP tokenizer and text encoder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    source = resolve_pretrained(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    return tokenizer, _freeze(text_encoder, dtype)


def load_base_model(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32) -> BaseComponents:
    """All frozen components of the base."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    source = resolve_pretrained(cfg)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    tokenizer, text_encoder = load_text_encoder(cfg, dtype)
    scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler"))
    return BaseComponents(
        unet=_freeze(unet, dtype),
        vae=load_vae(cfg, dtype),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=source,
    )


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, dtypes, bytes): identifies weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
