"""LoRA: trainable low-rank adapters, their kohya export, and merging LoRA files into weights.

Training (``add_lora``) wraps target ``nn.Linear`` layers in ``LoraLinear``: the frozen layer plus
``alpha / rank * up(down(x))``, with ``up`` zero-initialised so a fresh adapter changes nothing.
``kohya_state_dict`` exports the adapters in the kohya/A1111 layout that community tools and
``model.base.loras`` read. Merging a file into frozen base weights:
``W += scale * alpha / rank * up @ down``.

Two key styles are read, both from ``.safetensors`` only:

- kohya/A1111 (what community sites share): ``lora_unet_<module>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``, and ``lora_te_<module>...`` for the text encoder, where
  ``<module>`` is the diffusers module path with dots written as underscores
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``).
- diffusers/PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (optionally ``.alpha``),
  the older ``<module>.lora.down/up.weight`` and ``processor.to_q_lora.down/up.weight`` forms, and
  ``text_encoder.<module>...``. Without an ``alpha`` the update is not rescaled (alpha = rank).

The merge is done here rather than through diffusers' ``fuse_lora`` so that it needs no adapter
bookkeeping and every key must land on a module: a key that matches no module (an SDXL LoRA on an
SD 1.5 base, LyCORIS variants, a typo) is an error naming the key, never silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class LoraError(ValueError):
    """A LoRA file does not fit the model it is merged into."""


@dataclass
class LoraPair:
    """One low-rank update of ``component``'s module ``module``."""

    component: str  # "unet" or "text_encoder"
    module: str  # dotted module path in that component (or kohya's underscored form)
    down: torch.Tensor | None = None  # (rank, in[, kh, kw])
    up: torch.Tensor | None = None  # (out, rank[, 1, 1])
    alpha: float | None = None
    key: str = ""  # one original key, for error messages


_KOHYA = re.compile(r"^(lora_unet|lora_te1?)_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT_SUFFIXES = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
# diffusers' old attention-processor LoRA: ``<attn>.processor.to_out_lora.up.weight`` -> to_out.0
_PROCESSOR = re.compile(
    r"^(unet|text_encoder)\.(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"
)
_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder"}


def _parse_key(key: str) -> tuple[str, str, str]:
    """``key`` -> (component, module, part in {down, up, alpha}); raises for unknown keys."""
    match = _KOHYA.match(key)
    if match:
        part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[match[3]]
        return _COMPONENTS[match[1]], match[2], part
    match = _PROCESSOR.match(key)
    if match:
        target = match[3] + (".0" if match[3] == "to_out" else "")
        return match[1], f"{match[2]}.{target}", match[4]
    for component in ("unet", "text_encoder"):
        if key.startswith(component + "."):
            for suffix, part in _PEFT_SUFFIXES:
                if key.endswith(suffix):
                    return component, key[len(component) + 1 : -len(suffix)], part
    raise LoraError(
        f"{key!r}: not a LoRA key this loader understands (kohya lora_unet_*/lora_te_* "
        "lora_down/lora_up/alpha, or diffusers/PEFT unet.*/text_encoder.* lora_A/lora_B)"
    )


def read_lora(path: str | Path) -> list[LoraPair]:
    """The low-rank pairs of a LoRA ``.safetensors`` file, each with its down, up and alpha."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LoraError(f"{path}: LoRA files are read from .safetensors only (no pickles)")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several kinds for corrupt files
        raise LoraError(f"{path}: not a readable safetensors file ({error})") from error
    return lora_pairs(tensors, str(path))


def lora_pairs(tensors: Mapping[str, torch.Tensor], source: str = "LoRA") -> list[LoraPair]:
    """The low-rank pairs of a LoRA state dict (any supported key style)."""
    pairs: dict[tuple[str, str], LoraPair] = {}
    for key, tensor in tensors.items():
        try:
            component, module, part = _parse_key(key)
        except LoraError as error:
            raise LoraError(f"{source}: {error}") from error
        pair = pairs.setdefault((component, module), LoraPair(component, module, key=key))
        if part == "alpha":
            pair.alpha = float(tensor.float().item())
        else:
            setattr(pair, part, tensor)
    for pair in pairs.values():
        if pair.down is None or pair.up is None:
            raise LoraError(f"{source}: {pair.key!r} has no matching lora up/down weight")
        if pair.down.shape[0] != pair.up.shape[1]:
            raise LoraError(
                f"{source}: {pair.key!r}: down {tuple(pair.down.shape)} and up "
                f"{tuple(pair.up.shape)} disagree on the rank"
            )
    return list(pairs.values())


def _module_index(component: str, model: nn.Module) -> dict[str, nn.Module]:
    """Dotted and kohya-underscored names of every Linear/Conv2d of ``model``.

    Text encoders are also indexed with a ``text_model.`` prefix: LoRA files name the CLIP
    modules that way, while transformers >= 5.6 flattened ``CLIPTextModel`` and dropped it."""
    index: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        names = [name]
        if component == "text_encoder" and not name.startswith("text_model."):
            names.append("text_model." + name)
        for dotted in names:
            index[dotted] = module
            index[dotted.replace(".", "_")] = module
    return index


def lora_delta(pair: LoraPair, weight_shape: torch.Size) -> torch.Tensor:
    """``alpha / rank * up @ down`` shaped like the target weight, in float32."""
    rank = pair.down.shape[0]
    alpha = rank if pair.alpha is None else pair.alpha
    delta = pair.up.flatten(1).float() @ pair.down.flatten(1).float()
    if delta.numel() != weight_shape.numel():
        raise LoraError(
            f"{pair.key!r}: LoRA update {tuple(pair.up.shape)} @ {tuple(pair.down.shape)} does not "
            f"fit the weight {tuple(weight_shape)} of {pair.component}.{pair.module}"
        )
    return delta.reshape(weight_shape) * (alpha / rank)


@torch.no_grad()
def merge_lora(models: dict[str, nn.Module], path: str | Path, scale: float = 1.0) -> list[str]:
    """Merge one LoRA file's updates for the components in ``models`` (``{"unet": ...,
    "text_encoder": ...}``, either or both) in place; parts for other components are left to
    the call that loads those (the UNet and text encoder are loaded separately).

    Every pair is resolved before any weight changes, so a bad file leaves the models untouched.
    Returns the merged ``component.module`` names."""
    return merge_pairs(models, read_lora(path), str(path), scale)


@torch.no_grad()
def merge_pairs(
    models: dict[str, nn.Module], pairs: list[LoraPair], source: str, scale: float = 1.0
) -> list[str]:
    """``merge_lora`` for pairs already read (``lora_pairs``)."""
    indexes = {name: _module_index(name, model) for name, model in models.items()}
    updates = []
    for pair in pairs:
        if pair.component not in indexes:
            continue
        module = indexes[pair.component].get(pair.module)
        if module is None:
            raise LoraError(
                f"{source}: {pair.key!r} matches no module of the {pair.component} "
                f"(looked for {pair.module!r}; is this LoRA for another base architecture?)"
            )
        updates.append((pair, module, lora_delta(pair, module.weight.shape)))
    for _, module, delta in updates:
        weight = module.weight
        weight.copy_((weight.float() + scale * delta).to(weight.dtype))
    return [f"{pair.component}.{pair.module}" for pair, _, _ in updates]


# ---------------------------------------------------------------------------------------------
# Training adapters
# ---------------------------------------------------------------------------------------------


class LoraLinear(nn.Module):
    """``base(x) + alpha / rank * up(down(x))`` around a frozen ``nn.Linear``.

    ``down``: (rank, in) Kaiming-uniform as in the LoRA paper's reference code; ``up``: (out, rank)
    zeros, so training starts from the base model exactly."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        base.requires_grad_(False)
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * (self.alpha / self.rank)


def add_lora(
    model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float
) -> dict[str, LoraLinear]:
    """Wrap every ``nn.Linear`` of ``model`` whose dotted name ends with one of ``targets`` (e.g.
    ``to_q``, ``to_out.0``) in a ``LoraLinear``; returns them by module name. Every other
    parameter of ``model`` is frozen, so the adapters are all that trains."""
    model.requires_grad_(False)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in targets)
    ]
    if not names:
        raise LoraError(f"train.lora.target_modules: {list(targets)} match no linear layer")
    adapters = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapters[name] = LoraLinear(getattr(parent, child), rank, alpha)
        setattr(parent, child, adapters[name])
    return adapters


def kohya_state_dict(
    model: nn.Module,
    component: str = "unet",
    state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The ``LoraLinear`` adapters of ``model`` as kohya keys
    (``lora_unet_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``),
    float32 on the CPU.

    Module names are relative to ``model`` and name the wrapped layer (``...attn1.to_q``), which
    is what ``merge_lora`` resolves against the plain base. ``state`` (names relative to
    ``model``, e.g. gathered fp32 master weights) overrides the modules' own tensors."""
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te"}[component]
    state = state or {}
    exported = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLinear):
            continue
        key = f"{prefix}_{name.replace('.', '_')}"
        for part, layer in (("lora_down", module.down), ("lora_up", module.up)):
            tensor = state.get(f"{name}.{part.removeprefix('lora_')}.weight", layer.weight)
            exported[f"{key}.{part}.weight"] = tensor.detach().float().cpu().contiguous()
        exported[f"{key}.alpha"] = torch.tensor(module.alpha)
    if not exported:
        raise LoraError("the model has no LoRA adapters to export")
    return exported
