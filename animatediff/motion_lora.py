"""MotionLoRA: low-rank updates of the motion modules' temporal attention projections (AnimateDiff
v2's camera-motion adapters), their two file formats, and merging them into motion-module weights.

    lora = from_adapters(training_model.motion_modules)     # trained LoraLinear adapters
    save_motion_lora(lora, "out/motion_lora", metadata)     # both formats + motion_lora.json
    lora = read_motion_lora("v2_lora_ZoomIn.ckpt")          # either format, file or directory
    merged = merge_motion_loras(modules, [(lora, 0.8)])     # a copy with W += 0.8 * up @ down

A ``MotionLora`` holds, per motion-module weight key (the original layout:
``down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight``),
the pair ``(down (rank, in), up (out, rank))`` whose product ``up @ down`` is the update at scale 1.

The two formats:

- **original** (guoyww/AnimateDiff's released ``v2_lora_*.ckpt``, read by
  ComfyUI-AnimateDiff-Evolved and the A1111 extension): ``<block>.processor.<proj>_lora.down.weight``
  and ``.up.weight``, ``<block>`` an attention block's key path and ``<proj>`` one of ``to_q``,
  ``to_k``, ``to_v``, ``to_out`` (the weight ``to_out.0``). Their loaders strip ``processor.``,
  ``_lora``, ``down.``/``up.``, map ``to_out.`` to ``to_out.0.`` and add
  ``strength * up @ down``: no alpha, and no other key may be in the file (A1111 asserts that every
  key maps; Evolved keeps only keys containing ``temporal``).
- **diffusers** (``AnimateDiffPipeline.load_lora_weights``): PEFT keys
  ``unet.<module>.lora_A.weight`` (down) and ``.lora_B.weight`` (up), ``<module>`` the
  ``UNetMotionModel`` name (``down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q``);
  without alphas, diffusers uses ``lora_alpha = rank``, i.e. scale 1.

A trained adapter computes ``alpha / rank * up @ down``: the factor is folded into ``up`` when the
pairs are taken, so both files hold the exact update, read back as the same pairs, and a file read
and written again is the same file.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from animatediff.lora import LoraError, LoraLinear

ORIGINAL_FILE = "motion_lora.safetensors"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
"""diffusers' default ``weight_name``: ``load_lora_weights(<directory>)`` finds it."""
META_FILE = "motion_lora.json"
FORMAT_NAME = "animatediff-ray.motion-lora"

_MODULE = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+"
_WEIGHT = re.compile(
    rf"^(?P<block>{_MODULE}\.temporal_transformer\.transformer_blocks\.\d+"
    r"\.attention_blocks\.\d+)\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.weight$"
)
_ORIGINAL = re.compile(
    r"^(?P<block>.+\.attention_blocks\.\d+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)"
    r"_lora\.(?P<part>down|up)\.weight$"
)
_DIFFUSERS = re.compile(
    rf"^(?:unet\.)?(?P<module>{_MODULE})\.transformer_blocks\.(?P<block>\d+)\.attn(?P<attn>[12])"
    r"\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.lora_(?P<part>A|B)\.weight$"
)


@dataclass
class MotionLora:
    """Low-rank updates by motion-module weight key: ``{key: (down, up)}``, update ``up @ down``."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, Any] = field(default_factory=dict)
    """What our exports record beside the weights (name, rank, the motion module it adapts)."""

    @property
    def rank(self) -> int:
        return max(down.shape[0] for down, _ in self.pairs.values())

    def delta(self, key: str) -> torch.Tensor:
        """``up @ down`` of ``key`` in float32."""
        down, up = self.pairs[key]
        return up.float() @ down.float()


def _checked(pairs: dict[str, dict[str, torch.Tensor]], source: str) -> MotionLora:
    """Pairs from ``{key: {"down": ..., "up": ...}}``, each complete and of one rank."""
    if not pairs:
        raise LoraError(f"{source}: no MotionLoRA weights found")
    out = {}
    for key, parts in sorted(pairs.items()):
        if set(parts) != {"down", "up"}:
            raise LoraError(f"{source}: {key} has only its {'/'.join(sorted(parts))} weight")
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraError(
                f"{source}: {key}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a "
                "low-rank pair"
            )
        out[key] = (down, up)
    return MotionLora(out)


# ---------------------------------------------------------------------------------------------
# From training adapters
# ---------------------------------------------------------------------------------------------


def from_adapters(
    motion_modules: nn.Module, state: Mapping[str, torch.Tensor] | None = None
) -> MotionLora:
    """The ``LoraLinear`` adapters of ``motion_modules`` (``animatediff.lora.add_lora`` on a
    ``MotionModules``) as a ``MotionLora``, ``alpha / rank`` folded into ``up``; float32 CPU
    copies. ``state`` (names relative to ``motion_modules``, e.g. gathered fp32 master weights)
    overrides the adapters' own tensors."""
    state = state or {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in motion_modules.named_modules():
        if not isinstance(module, LoraLinear):
            continue
        key = f"{name}.weight"
        if _WEIGHT.match(key) is None:
            raise LoraError(f"{name}: not a temporal attention projection of a motion module")
        down = state.get(f"{name}.down.weight", module.down.weight).detach().float().cpu()
        up = state.get(f"{name}.up.weight", module.up.weight).detach().float().cpu()
        scale = module.alpha / module.rank
        pairs[key] = {"down": down.clone(), "up": up * scale if scale != 1 else up.clone()}
    return _checked(pairs, "the motion modules' adapters")


# ---------------------------------------------------------------------------------------------
# The two formats
# ---------------------------------------------------------------------------------------------


def _parse_weight_key(key: str) -> tuple[str, str]:
    match = _WEIGHT.match(key)
    if match is None:
        raise LoraError(f"{key}: not a motion-module attention projection weight")
    return match["block"], match["proj"]


def to_original_state_dict(lora: MotionLora) -> dict[str, torch.Tensor]:
    """The original MotionLoRA keys (module docstring), contiguous CPU tensors."""
    out = {}
    for key, (down, up) in lora.pairs.items():
        block, proj = _parse_weight_key(key)
        prefix = f"{block}.processor.{proj.removesuffix('.0')}_lora"
        out[f"{prefix}.down.weight"] = down.contiguous()
        out[f"{prefix}.up.weight"] = up.contiguous()
    return out


def from_original_state_dict(state: Mapping[str, torch.Tensor], source: str) -> MotionLora:
    """Pairs from original MotionLoRA keys; any other key is an error naming it."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _ORIGINAL.match(key)
        weight = None
        if match is not None:
            proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]
            weight = f"{match['block']}.{proj}.weight"
        if weight is None or _WEIGHT.match(weight) is None:
            raise LoraError(f"{source}: {key!r} is not an original MotionLoRA key")
        pairs.setdefault(weight, {})[match["part"]] = value
    return _checked(pairs, source)


def _diffusers_module(key: str) -> str:
    """``...temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight`` ->
    ``...motion_modules.0.transformer_blocks.0.attn2.to_q`` (``motion_module.to_diffusers_key``)."""
    from animatediff.motion_module import to_diffusers_key

    return to_diffusers_key(key).removesuffix(".weight")


def to_diffusers_state_dict(lora: MotionLora) -> dict[str, torch.Tensor]:
    """PEFT keys under the ``unet.`` prefix that ``load_lora_weights`` reads."""
    out = {}
    for key, (down, up) in lora.pairs.items():
        _parse_weight_key(key)
        module = _diffusers_module(key)
        out[f"unet.{module}.lora_A.weight"] = down.contiguous()
        out[f"unet.{module}.lora_B.weight"] = up.contiguous()
    return out


def from_diffusers_state_dict(state: Mapping[str, torch.Tensor], source: str) -> MotionLora:
    """Pairs from diffusers/PEFT keys (with or without the ``unet.`` prefix)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _DIFFUSERS.match(key)
        if match is None:
            raise LoraError(f"{source}: {key!r} is not a diffusers motion-LoRA key")
        attention = int(match["attn"]) - 1
        weight = (
            f"{match['module']}.temporal_transformer.transformer_blocks.{match['block']}"
            f".attention_blocks.{attention}.{match['proj']}.weight"
        )
        pairs.setdefault(weight, {})["down" if match["part"] == "A" else "up"] = value
    return _checked(pairs, source)


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (and safetensors header metadata) of a ``.safetensors``, ``.ckpt``, ``.pt`` or
    ``.pth`` file; pickles are read with ``weights_only=True``."""
    import safetensors.torch

    source = str(path)
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        try:
            tensors = safetensors.torch.load(data)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        except Exception as error:  # safetensors raises several kinds for corrupt files
            raise LoraError(f"{source}: not a readable safetensors file ({error})") from error
        return tensors, header.get("__metadata__") or {}
    if path.suffix not in (".ckpt", ".pt", ".pth"):
        raise LoraError(f"{source}: expected .safetensors, .ckpt, .pt or .pth")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise LoraError(f"{source}: refused or unreadable torch file ({error})") from error
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # as the original loader does
    if not isinstance(obj, Mapping):
        raise LoraError(f"{source}: expected a dict of tensors")
    tensors = {k: v for k, v in obj.items() if k != "animatediff_config"}
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise LoraError(f"{source}: holds entries that are not tensors")
    return tensors, {}


def from_state_dict(state: Mapping[str, torch.Tensor], source: str = "MotionLoRA") -> MotionLora:
    """Either format, told apart by its keys."""
    if any(".lora_A." in key or ".lora_B." in key for key in state):
        return from_diffusers_state_dict(state, source)
    return from_original_state_dict(state, source)


def read_motion_lora(path: str | Path) -> MotionLora:
    """A MotionLoRA file in either format, or a directory holding one (our export: the original
    file and ``motion_lora.json``; a diffusers directory: ``pytorch_lora_weights.safetensors``)."""
    path = Path(path)
    metadata: dict[str, Any] = {}
    if path.is_dir():
        if (path / META_FILE).is_file():
            metadata = json.loads((path / META_FILE).read_text())
        for name in (ORIGINAL_FILE, DIFFUSERS_FILE):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise LoraError(f"{path}: holds neither {ORIGINAL_FILE} nor {DIFFUSERS_FILE}")
    if not path.is_file():
        raise LoraError(f"{path}: does not exist")
    tensors, _ = _load_file(path)
    lora = from_state_dict(tensors, str(path))
    lora.metadata = metadata
    return lora


def save_motion_lora(
    lora: MotionLora, directory: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``directory/motion_lora.safetensors`` (original keys), ``pytorch_lora_weights
    .safetensors`` (diffusers) and ``motion_lora.json`` (``metadata`` + format and rank)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt"}
    save_file(to_original_state_dict(lora), str(directory / ORIGINAL_FILE), metadata=header)
    save_file(to_diffusers_state_dict(lora), str(directory / DIFFUSERS_FILE), metadata=header)
    meta = {
        "format": FORMAT_NAME,
        "rank": lora.rank,
        "weights": len(lora.pairs),
        "files": {"original": ORIGINAL_FILE, "diffusers": DIFFUSERS_FILE},
        **dict(metadata or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def merge_motion_loras(
    modules: nn.Module, loras: Sequence[tuple[MotionLora, float]], names: Sequence[str] = ()
) -> nn.Module:
    """A copy of ``modules`` (a ``MotionModules``) with every ``(lora, scale)`` merged:
    ``W += scale * up @ down``, in order. ``modules`` itself is untouched, so one loaded motion
    module serves any set of LoRAs. Every key must name a weight of the right shape (a v2 LoRA
    with mid-block keys on a module without a mid block is an error, not a silent skip)."""
    if not loras:
        return modules
    merged = copy.deepcopy(modules)
    weights = dict(merged.named_parameters())
    updates = []
    for index, (lora, scale) in enumerate(loras):
        label = names[index] if index < len(names) else f"MotionLoRA {index}"
        for key in lora.pairs:
            weight = weights.get(key)
            if weight is None:
                raise LoraError(
                    f"{label}: {key} matches no weight of the motion module (a LoRA for another "
                    "layout, e.g. with a mid block the module does not have?)"
                )
            delta = lora.delta(key)
            if delta.shape != weight.shape:
                raise LoraError(
                    f"{label}: {key}: the update is {tuple(delta.shape)}, the weight "
                    f"{tuple(weight.shape)}"
                )
            updates.append((weight, scale * delta))
    for weight, delta in updates:
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return merged
