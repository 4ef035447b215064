"""What a stage exports: the trained part of the model, in the format people load.

- ``motion``: ``motion_module/``, the native motion-module directory;
- ``image``: ``unet/``, a diffusers ``UNet2DConditionModel`` (the driver assembles a whole
  StableDiffusion directory around it: ``model.base.pretrained=<dir>`` loads that);
- ``image`` with ``train.lora.rank``: ``lora.safetensors`` in the kohya layout
  (``model.base.loras`` merges it);
- ``motion_lora``: ``motion_lora/``, the MotionLoRA in the original layout (ComfyUI-AnimateDiff-
  Evolved, the A1111 extension) and diffusers' (``load_lora_weights``), with ``motion_lora.json``
  (``animatediff.motion_lora``).

Gathering is collective under ZeRO-3 (every rank calls ``gather``); only rank 0 writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from animatediff.config import Config, TrainConfig

MOTION_EXPORT = "motion_module"
UNET_EXPORT = "unet"
LORA_EXPORT = "lora.safetensors"
MOTION_LORA_EXPORT = "motion_lora"
MOTION_STAGES = ("motion", "motion_lora")
"""Stages that train (part of) the motion modules."""


def export_name(train: TrainConfig) -> str:
    """The file or directory name of the stage's export."""
    if train.stage == "motion":
        return MOTION_EXPORT
    if train.stage == "motion_lora":
        return MOTION_LORA_EXPORT
    return LORA_EXPORT if train.lora.rank else UNET_EXPORT


def _trained_module(engine: Any, train: TrainConfig) -> torch.nn.Module:
    """The module whose weights the stage exports: the motion modules or the 2D UNet."""
    unet = engine.module
    return unet.motion_modules if train.stage in MOTION_STAGES else unet.unet2d


def gather(engine: Any, train: TrainConfig) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of the exported module's trained parameters (every parameter for full
    training; the adapters for LoRA) and its buffers, named relative to that module."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = _trained_module(engine, train)
    state = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)  # the fp32 master copy (None without ZeRO/bf16)
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    if train.stage == "motion":
        for name, buffer in module.named_buffers():
            state[name] = buffer.detach().float().cpu().clone()
    return state


@dataclass
class Export:
    """A gathered export: the state and the config it belongs to."""

    state: dict[str, torch.Tensor]
    cfg: Config
    template: torch.nn.Module
    """The engine's module (its architecture and config; its weights may be partitioned)."""

    @classmethod
    def of(cls, engine: Any, cfg: Config) -> Export:
        return cls(gather(engine, cfg.train), cfg, engine.module)

    def motion_modules(self) -> torch.nn.Module:
        from animatediff.training import new_motion_modules

        modules = new_motion_modules(self.template, self.cfg.model.motion)
        modules.load_state_dict(self.state)
        return modules

    def unet2d(self) -> torch.nn.Module:
        """A CPU copy of the trained 2D UNet (full training: the gathered weights; LoRA: the
        base's weights with the adapters merged)."""
        unet2d = self.template.unet2d
        copy = type(unet2d).from_config(unet2d.config)
        if self.cfg.train.lora.rank:
            from animatediff.base_model import load_base_model
            from animatediff.lora import lora_pairs, merge_pairs

            copy = load_base_model(self.cfg.model.base).unet
            merge_pairs({"unet": copy}, lora_pairs(self._kohya()), "the trained LoRA")
        else:
            copy.load_state_dict(self.state)
        return copy.eval()

    def motion_lora(self) -> Any:
        """The trained MotionLoRA (``animatediff.motion_lora.MotionLora``)."""
        from animatediff.motion_lora import from_adapters

        lora = from_adapters(self.template.motion_modules, self.state)
        train = self.cfg.train
        lora.metadata = {
            "name": train.lora.name,
            "motion_module": train.init_from,
            "trained": {"rank": train.lora.rank, "alpha": train.lora.scale_alpha},
            "targets": list(train.lora.target_modules),
        }
        return lora

    def _kohya(self) -> dict[str, torch.Tensor]:
        from animatediff.lora import kohya_state_dict

        return kohya_state_dict(self.template.unet2d, "unet", self.state)

    def write(self, directory: Path) -> Path:
        """Write the export under ``directory``; returns its path."""
        from animatediff.checkpoints import save_motion_modules

        path = directory / export_name(self.cfg.train)
        if self.cfg.train.stage == "motion":
            save_motion_modules(self.motion_modules(), self.cfg.model.motion, path)
        elif self.cfg.train.stage == "motion_lora":
            from animatediff.motion_lora import save_motion_lora

            lora = self.motion_lora()
            save_motion_lora(lora, path, lora.metadata)
        elif self.cfg.train.lora.rank:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(self._kohya(), str(path), metadata={"format": "pt"})
        else:
            self.unet2d().save_pretrained(path)
        return path

    def sampler(self, device: str | None = None) -> Any:
        """A ``TextToVideo`` over the trained weights (validation samples)."""
        from animatediff.sampling import TextToVideo

        if self.cfg.train.stage == "motion":
            return TextToVideo(self.cfg, self.motion_modules(), device=device)
        if self.cfg.train.stage == "motion_lora":
            from animatediff.motion_lora import merge_motion_loras
            from animatediff.training import initial_motion_modules

            frozen, _ = initial_motion_modules(self.cfg)  # not partitioned, unlike the engine's
            merged = merge_motion_loras(frozen, [(self.motion_lora(), 1.0)])
            return TextToVideo(self.cfg, merged, device=device)
        from animatediff.base_model import load_base_model

        base = load_base_model(self.cfg.model.base)
        base.unet = self.unet2d()
        return TextToVideo(self.cfg, base=base, device=device)
