"""Load the frozen Stable Diffusion 1.5 components that the motion module animates.

``load_base_model(cfg.model.base)`` returns UNet, VAE, text encoder, tokenizer and the scheduler
config from a diffusers directory, a hub id (machines with internet) or ``builtin:tiny``.
All returned modules are frozen (``requires_grad=False``) and in eval mode.

Personalisation, applied in this order before any motion module is injected:

1. ``single_file``: a community single-file SD ``.safetensors`` (original LDM/A1111 key layout).
   Its UNet, and its VAE and text encoder when the file has them (``first_stage_model.*``,
   ``cond_stage_model.transformer.*``), replace the base's. The base directory provides the
   architecture configs, so nothing is downloaded for a local base.
2. ``loras``: each LoRA file merged into the UNet and text-encoder weights, in order
   (``animatediff.lora``).

``load_vae`` and ``load_text_encoder`` apply the same personalisation, so cached latents and text
embeddings come from the weights that training and sampling use.

The loaders may be called from several threads of one process (``jobs.reproduce`` preprocesses
collections at once): they take turns, because diffusers and transformers load a model by patching
``torch.nn.Module`` for the whole process (accelerate's ``init_empty_weights``), and two loads at
once undo each other's patch, leaving later models' weights on the meta device.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animatediff.config import BaseModelConfig

BUILTIN_TINY = "builtin:tiny"
_LOADING = threading.RLock()
"""Held while a loader runs (module docstring); re-entrant: ``load_base_model`` calls the others."""


def _one_load_at_a_time(loader):
    @functools.wraps(loader)
    def locked(*args, **kwargs):
        with _LOADING:
            return loader(*args, **kwargs)

    return locked


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


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _single_file_keys(cfg: BaseModelConfig) -> list[str]:
    from safetensors import safe_open

    path = Path(cfg.single_file).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(
            f"model.base.single_file: {path} must be a .safetensors file (pickled .ckpt files "
            "are not loaded: they can run code)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model.base.single_file: {path} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _from_single_file(cls, cfg: BaseModelConfig, source: str, subfolder: str):
    """A diffusers model converted from ``cfg.single_file`` with the base's ``subfolder`` config."""
    _single_file_keys(cfg)  # validates the path first: clear errors, never a pickle
    return cls.from_single_file(
        str(Path(cfg.single_file).expanduser()),
        config=source,
        subfolder=subfolder,
        local_files_only=_is_local(source),
    )


def _single_file_text_encoder(cfg: BaseModelConfig, text_encoder, keys: list[str]):
    """Load the ``cond_stage_model.transformer.*`` tensors into ``text_encoder`` (strictly)."""
    from safetensors import safe_open

    prefix = "cond_stage_model.transformer."
    own = text_encoder.state_dict()
    state = {}
    with safe_open(str(Path(cfg.single_file).expanduser()), framework="pt") as handle:
        for key in keys:
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            # transformers >= 5.6 flattened CLIPTextModel; checkpoints still say text_model.*
            if name not in own and name.removeprefix("text_model.") in own:
                name = name.removeprefix("text_model.")
            # position_ids is a constant buffer, stored by some exports (sometimes corrupted as
            # floats in merged models) and omitted by others: keep the base's own.
            if not name.endswith("position_ids"):
                state[name] = handle.get_tensor(key)
    state.update({k: v for k, v in own.items() if k.endswith("position_ids")})
    missing, unexpected = text_encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"model.base.single_file: text encoder keys do not match the base's "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return text_encoder


def _merge_loras(cfg: BaseModelConfig, models: dict[str, torch.nn.Module]) -> None:
    """Merge ``cfg.loras`` in order into ``models`` (each call merges the parts for its models)."""
    from animatediff.lora import LoraError, merge_lora

    for i, lora in enumerate(cfg.loras):
        try:
            merge_lora(models, lora.path, lora.scale)
        except LoraError as error:
            raise LoraError(f"model.base.loras[{i}]: {error}") from error


def _freeze(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    module.requires_grad_(False)
    # Cast only when needed: diffusers warns on every `.to(dtype)` of a loaded model.
    if any(p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype=dtype)
    return module.eval()


@_one_load_at_a_time
def load_vae(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32):
    """Only the VAE (the preprocessing stage needs nothing else)."""
    from diffusers import AutoencoderKL

    source = resolve_pretrained(cfg)
    if cfg.single_file and any(k.startswith("first_stage_model.") for k in _single_file_keys(cfg)):
        return _freeze(_from_single_file(AutoencoderKL, cfg, source, "vae"), dtype)
    return _freeze(AutoencoderKL.from_pretrained(source, subfolder="vae"), dtype)


@_one_load_at_a_time
def load_text_encoder(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32):
    """The CLIP tokenizer and text encoder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    source = resolve_pretrained(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    if cfg.single_file:
        keys = _single_file_keys(cfg)
        if any(k.startswith("cond_stage_model.transformer.") for k in keys):
            text_encoder = _single_file_text_encoder(cfg, text_encoder, keys)
    _merge_loras(cfg, {"text_encoder": text_encoder})
    return tokenizer, _freeze(text_encoder, dtype)


@_one_load_at_a_time
def load_base_model(cfg: BaseModelConfig, dtype: torch.dtype = torch.float32) -> BaseComponents:
    """All frozen components of the base."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    source = resolve_pretrained(cfg)
    if cfg.single_file:
        unet = _from_single_file(UNet2DConditionModel, cfg, source, "unet")
    else:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    _merge_loras(cfg, {"unet": unet})
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


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """CLIP token ids ``(batch, model_max_length)``, padded and truncated as SD's text encoder expects."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
