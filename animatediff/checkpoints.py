"""Motion-module checkpoints in the three formats people have, with exact round trips.

- **native**: a directory with ``motion_module.safetensors`` (original AnimateDiff key layout) and
  ``motion_module.json`` (every ``MotionModuleConfig`` field, the UNet layout, a format version).
  Local paths, ``file://`` or ``s3://`` (``animatediff.storage``).
- **original**: the released AnimateDiff files (``mm_sd_v15.ckpt``, ``mm_sd_v15_v2.ckpt``,
  ``v3_sd15_mm.ckpt``) or their ``.safetensors`` conversions. ``.ckpt`` is only ever read with
  ``torch.load(weights_only=True)``. These files carry no config: layout, ``num_layers``,
  ``attention_blocks``, ``max_frames``, ``ff_mult`` and the mid block are inferred from the keys and
  shapes; what shapes cannot tell (``num_heads``, ``norm_groups``, ``norm_eps``, the norm semantics)
  comes from ``defaults`` (the released modules use 8 heads, 32 groups, eps 1e-6, per-frame norm).
  Our own ``.safetensors`` exports also store the config in the header metadata. State dicts saved
  by the original code itself (``train.py`` checkpoints, whole UNets: pass
  ``ignore_non_motion_keys``) have no ``pos_encoder.pe`` keys (it registers the table with
  ``persistent=False``): the tables are recomputed (the sinusoid, ``defaults.max_frames`` long).
  ``base_norm: auto`` resolves from the file: the v1 signature (24-frame tables, no mid block)
  means the original v1's ``use_inflated_groupnorm: false`` (the base UNet's GroupNorms across
  frames); a file without tables does not tell, and keeps ``auto`` (per frame).
- **diffusers**: a ``MotionAdapter`` directory (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) that ``diffusers.MotionAdapter.from_pretrained`` loads.

Norm semantics with diffusers: the weights are identical, but diffusers' temporal GroupNorm takes its
statistics over all frames of a clip, where the original normalises each frame. A directory gives no
hint which semantics its weights were trained with, so a foreign diffusers directory is imported with
``cross_frame_norm=True``: the imported module computes exactly what that directory computes in
diffusers (the only behaviour the file is known to have). Pass ``cross_frame_norm=False`` to run a
converted original release (e.g. ``guoyww/animatediff-motion-adapter-v1-5-2``) as AnimateDiff
trained it. Our exports record the full config under the private ``_animatediff_motion`` key of
``config.json`` (diffusers ignores ``_``-prefixed keys), so native -> diffusers -> native keeps the
setting it had; diffusers itself always runs the module with cross-frame statistics. The same holds
for ``base_norm``: diffusers normalises the base UNet per frame, so a foreign directory imports
with that (a converted v1 release runs as the original v1 with ``base_norm=across_frames``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from animatediff.config import ConfigError, MotionModuleConfig, from_dict
from animatediff.storage import Location, exists, locate, read_bytes, write_atomic

FORMAT_NAME = "animatediff-ray.motion-module"
FORMAT_VERSION = 1
NATIVE_WEIGHTS = "motion_module.safetensors"
NATIVE_CONFIG = "motion_module.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"
_PRIVATE_CONFIG_KEY = "_animatediff_motion"

Format = Literal["native", "original", "diffusers"]


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe or does not match the motion-module layout."""


@dataclasses.dataclass(frozen=True)
class UNetLayout:
    """Where a UNet has motion modules: its ``block_out_channels`` and resnets per down block."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int


# ---------------------------------------------------------------------------------------------
# Storage: local paths and s3:// through animatediff.storage.
# ---------------------------------------------------------------------------------------------


def _at(location: str | Path, name: str | None = None) -> Location:
    found = locate(location)
    return found.join(name) if name else found


def _read(location: str | Path, name: str | None = None) -> bytes:
    target = _at(location, name)
    try:
        return read_bytes(target)
    except (FileNotFoundError, OSError) as error:
        raise CheckpointError(f"{target.uri}: cannot read ({error})") from error


def _write(location: str | Path, name: str, data: bytes) -> None:
    write_atomic(_at(location, name), data)


def _file_info(location: str | Path, name: str | None = None):
    """``pyarrow.fs.FileInfo`` of ``location[/name]`` (type NotFound when absent)."""
    target = _at(location, name)
    return target.fs.get_file_info(target.path)


def _exists(location: str | Path, name: str | None = None) -> bool:
    return exists(_at(location, name))


# ---------------------------------------------------------------------------------------------
# The original AnimateDiff key layout: parsing, config inference and validation.
# ---------------------------------------------------------------------------------------------

_MODULE_KEY = re.compile(
    r"^(?P<block>down_blocks\.(?P<down>\d+)|up_blocks\.(?P<up>\d+)|mid_block)"
    r"\.motion_modules\.(?P<index>\d+)\.(?P<rest>temporal_transformer\..+)$"
)
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.attention_blocks\.(\d+)\.")
_PE = re.compile(r"\.attention_blocks\.(\d+)\.pos_encoder\.pe$")


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict of a loaded checkpoint: descends into ``state_dict`` and drops ``module.``."""
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    tensors = {}
    for key, value in obj.items():
        if key == "animatediff_config":  # the original's loader drops it too (non-tensor metadata)
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        tensors[str(key).removeprefix("module.")] = value
    return tensors


def _load_ckpt(data: bytes, source: str) -> Any:
    import pickle

    try:
        # weights_only: a .ckpt is a pickle and pickles from the internet can run code.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{source}: refused to load: it is not a plain tensor checkpoint "
            f"(weights_only unpickling rejected it: {str(error).splitlines()[0]})"
        ) from error
    except Exception as error:  # corrupt zips raise many kinds
        raise CheckpointError(f"{source}: not a readable torch checkpoint ({error})") from error


def _load_safetensors(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import safetensors
    import safetensors.torch

    try:
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (safetensors.SafetensorError, ValueError) as error:
        raise CheckpointError(f"{source}: not a readable safetensors file ({error})") from error
    return tensors, metadata


def infer_layout(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> UNetLayout:
    """The UNet layout that an original-layout motion state dict was made for."""
    down: dict[int, set[int]] = {}
    up: dict[int, set[int]] = {}
    for key in state_dict:
        match = _MODULE_KEY.match(key)
        if match is None:
            continue
        if match["down"] is not None:
            down.setdefault(int(match["down"]), set()).add(int(match["index"]))
        elif match["up"] is not None:
            up.setdefault(int(match["up"]), set()).add(int(match["index"]))
    if not down or sorted(down) != list(range(len(down))):
        raise CheckpointError(
            f"{source}: down_blocks.* motion modules missing or not numbered 0..n"
        )
    if sorted(up) != list(range(len(down))):
        raise CheckpointError(
            f"{source}: expected up_blocks.0..{len(down) - 1} motion modules, found {sorted(up)}"
        )
    layers = len(down[0])
    for i, indices in down.items():
        if indices != set(range(layers)):
            raise CheckpointError(
                f"{source}: down_blocks.{i} has motion modules {sorted(indices)}, "
                f"expected 0..{layers - 1} like down_blocks.0"
            )
    for i, indices in up.items():
        if indices != set(range(layers + 1)):
            raise CheckpointError(
                f"{source}: up_blocks.{i} has motion modules {sorted(indices)}, expected 0..{layers}"
            )
    channels = []
    for i in range(len(down)):
        key = f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight"
        if key not in state_dict:
            raise CheckpointError(f"{source}: missing key {key}")
        channels.append(int(state_dict[key].shape[0]))
    return UNetLayout(tuple(channels), layers)


V1_MAX_FRAMES = 24
"""The released v1 module's position-table length (v2 and v3: 32)."""


def has_position_tables(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(_PE.search(key) for key in state_dict)


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    defaults: MotionModuleConfig | None = None,
    source: str = "checkpoint",
    infer_base_norm: bool = True,
) -> MotionModuleConfig:
    """``defaults`` with the fields that the keys and shapes determine replaced by what they say.

    Without position tables (a state dict of the original code) ``max_frames`` stays the
    default's. ``infer_base_norm``: resolve ``base_norm: auto`` from the v1 signature (module
    docstring)."""
    defaults = defaults or MotionModuleConfig()
    prefix = "down_blocks.0.motion_modules.0.temporal_transformer."
    channels = infer_layout(state_dict, source).block_out_channels[0]
    blocks: set[int] = set()
    attentions: set[int] = set()
    for key in state_dict:
        if key.startswith(prefix):
            match = _BLOCK_KEY.search(key)
            if match:
                blocks.add(int(match[1]))
                attentions.add(int(match[2]))
    if not blocks:
        raise CheckpointError(f"{source}: no {prefix}transformer_blocks.*.attention_blocks.* keys")
    pe_key = f"{prefix}transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    ff_key = f"{prefix}transformer_blocks.0.ff.net.0.proj.weight"
    tables = has_position_tables(state_dict)
    for key in (pe_key, ff_key) if tables else (ff_key,):
        if key not in state_dict:
            raise CheckpointError(f"{source}: missing key {key}")
    ff = state_dict[ff_key]
    max_frames = defaults.max_frames
    if tables:
        pe = state_dict[pe_key]
        if pe.ndim != 3:
            raise CheckpointError(f"{source}: {pe_key} has shape {tuple(pe.shape)}, not 3-D")
        max_frames = int(pe.shape[1])
    if ff.ndim != 2 or ff.shape[0] % (2 * channels):
        raise CheckpointError(
            f"{source}: {ff_key} {tuple(ff.shape)} does not fit {channels} channels"
        )
    mid_block = any(key.startswith("mid_block.") for key in state_dict)
    base_norm = defaults.base_norm
    if infer_base_norm and base_norm == "auto" and tables:
        v1 = max_frames == V1_MAX_FRAMES and not mid_block
        base_norm = "across_frames" if v1 else "auto"
    try:
        return dataclasses.replace(
            defaults,
            num_layers=len(blocks),
            attention_blocks=len(attentions),
            max_frames=max_frames,
            ff_mult=int(ff.shape[0]) // (2 * channels),
            mid_block=mid_block,
            base_norm=base_norm,
        )
    except ConfigError as error:
        raise CheckpointError(f"{source}: inferred an invalid config: {error}") from error


def with_position_tables(
    state_dict: Mapping[str, torch.Tensor], layout: UNetLayout, cfg: MotionModuleConfig
) -> dict[str, torch.Tensor]:
    """``state_dict`` with every ``pos_encoder.pe`` recomputed (the sinusoid, ``cfg.max_frames``
    rows) when it has none at all; unchanged otherwise (a partial set stays a missing key)."""
    from animatediff.motion_module import sinusoidal_position_encoding

    if has_position_tables(state_dict):
        return dict(state_dict)
    completed = dict(state_dict)
    for key, shape in expected_shapes(layout, cfg).items():
        if _PE.search(key):
            completed[key] = sinusoidal_position_encoding(shape[1], shape[2])
    return completed


def expected_shapes(layout: UNetLayout, cfg: MotionModuleConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a ``MotionModules`` state dict (built on the meta device: no memory)."""
    from animatediff.motion_module import MotionModules

    with torch.device("meta"):
        modules = MotionModules(layout.block_out_channels, layout.layers_per_block, cfg)
    return {key: tuple(value.shape) for key, value in modules.state_dict().items()}


def validate_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layout: UNetLayout,
    cfg: MotionModuleConfig,
    source: str = "checkpoint",
) -> None:
    """Raise ``CheckpointError`` naming the first missing, unexpected or mis-shaped key."""
    expected = expected_shapes(layout, cfg)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all) for "
            f"layout {layout} and {cfg}"
        )
    if missing:
        raise CheckpointError(
            f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all) for layout "
            f"{layout} and {cfg}"
        )
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)}, expected {shape}"
            )


def modules_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    cfg: MotionModuleConfig,
    layout: UNetLayout | None = None,
    source: str = "checkpoint",
):
    """Validated ``MotionModules`` holding exactly ``state_dict``'s values (fp32 kept as is)."""
    from animatediff.motion_module import MotionModules

    layout = layout or infer_layout(state_dict, source)
    validate_state_dict(state_dict, layout, cfg, source)
    modules = MotionModules(layout.block_out_channels, layout.layers_per_block, cfg)
    modules.load_state_dict(dict(state_dict), strict=True)
    return modules


def _motion_state_dict(
    modules: torch.nn.Module, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Detached CPU copies, optionally cast (e.g. fp16 for distribution; round trips are exact
    in the module's own dtype)."""
    # Clones: safetensors refuses shared storage, and torch.save would store whole base tensors.
    return {
        key: value.detach().cpu().to(dtype or value.dtype).contiguous().clone()
        for key, value in modules.state_dict().items()
    }


# ---------------------------------------------------------------------------------------------
# Native format
# ---------------------------------------------------------------------------------------------


def save_motion_modules(
    modules: torch.nn.Module,
    cfg: MotionModuleConfig,
    directory: str | Path,
    block_out_channels: tuple[int, ...] | None = None,
    layers_per_block: int | None = None,
) -> str:
    """Write ``motion_module.safetensors`` + ``motion_module.json`` to ``directory`` (path or URI).

    The layout defaults to what the module's keys say; when given, it is checked against them."""
    import safetensors.torch

    state_dict = _motion_state_dict(modules)
    layout = infer_layout(state_dict, "modules")
    if block_out_channels is not None or layers_per_block is not None:
        given = UNetLayout(
            tuple(block_out_channels or layout.block_out_channels),
            layers_per_block if layers_per_block is not None else layout.layers_per_block,
        )
        if given != layout:
            raise CheckpointError(f"layout {given} given, but the modules have {layout}")
    validate_state_dict(state_dict, layout, cfg, "modules")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "motion": dataclasses.asdict(cfg),
        "block_out_channels": list(layout.block_out_channels),
        "layers_per_block": layout.layers_per_block,
    }
    _write(directory, NATIVE_WEIGHTS, safetensors.torch.save(state_dict, {"format": FORMAT_NAME}))
    # The config goes last: its presence marks a complete checkpoint.
    _write(directory, NATIVE_CONFIG, json.dumps(meta, indent=2).encode())
    return str(directory)


def _native_meta(directory: str | Path) -> tuple[MotionModuleConfig, UNetLayout]:
    source = _at(directory, NATIVE_CONFIG).uri
    try:
        meta = json.loads(_read(directory, NATIVE_CONFIG))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: invalid JSON ({error})") from error
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format_version {meta.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    try:
        cfg = from_dict(MotionModuleConfig, meta["motion"], prefix="motion")
        layout = UNetLayout(
            tuple(int(c) for c in meta["block_out_channels"]), int(meta["layers_per_block"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: bad config ({error})") from error
    return cfg, layout


def load_motion_modules(directory: str | Path):
    """``(MotionModules, MotionModuleConfig)`` from a native checkpoint directory (path or URI)."""
    cfg, layout = _native_meta(directory)
    source = _at(directory, NATIVE_WEIGHTS).uri
    state_dict, _ = _load_safetensors(_read(directory, NATIVE_WEIGHTS), source)
    return modules_from_state_dict(state_dict, cfg, layout, source), cfg


# ---------------------------------------------------------------------------------------------
# Original AnimateDiff files (.ckpt / .safetensors)
# ---------------------------------------------------------------------------------------------


def read_original_state_dict(
    path: str | Path, ignore_non_motion_keys: bool = False
) -> tuple[dict[str, torch.Tensor], MotionModuleConfig | None]:
    """The motion tensors of an original-layout file, and the config stored in our exports' header.

    ``ignore_non_motion_keys`` drops keys outside ``*.motion_modules.*`` (a full-UNet training
    checkpoint); otherwise they are an error like any unknown key."""
    source = str(path)
    data = _read(path)
    stored_cfg = None
    if source.endswith(".safetensors"):
        tensors, metadata = _load_safetensors(data, source)
        if metadata.get("format") == FORMAT_NAME and "motion_config" in metadata:
            stored_cfg = from_dict(
                MotionModuleConfig, json.loads(metadata["motion_config"]), prefix="motion"
            )
    else:
        tensors = _load_ckpt(data, source)
    tensors = _unwrap(tensors, source)
    if ignore_non_motion_keys:
        tensors = {k: v for k, v in tensors.items() if ".motion_modules." in k}
    stray = sorted(key for key in tensors if _MODULE_KEY.match(key) is None)
    if stray and all(".motion_modules." in k and "temporal_transformer" not in k for k in stray):
        raise CheckpointError(
            f"{source}: key {stray[0]!r} is a diffusers MotionAdapter name; load the adapter's "
            "directory (config.json + safetensors) instead of its weights file"
        )
    if stray:
        raise CheckpointError(
            f"{source}: key {stray[0]!r} is not a motion-module key ({len(stray)} such keys; "
            "a full-UNet checkpoint needs ignore_non_motion_keys=True)"
        )
    return tensors, stored_cfg


def load_original(
    path: str | Path,
    defaults: MotionModuleConfig | None = None,
    ignore_non_motion_keys: bool = False,
):
    """``(MotionModules, MotionModuleConfig)`` from an original AnimateDiff ``.ckpt``/``.safetensors``.

    Fields that shapes cannot tell come from ``defaults``, else from the config our own exports
    store in the safetensors header, else from ``MotionModuleConfig()``."""
    state_dict, stored_cfg = read_original_state_dict(path, ignore_non_motion_keys)
    # Our own exports say what they are: only foreign files get their base norm inferred.
    cfg = infer_config(state_dict, defaults or stored_cfg, str(path), stored_cfg is None)
    layout = infer_layout(state_dict, str(path))
    state_dict = with_position_tables(state_dict, layout, cfg)
    return modules_from_state_dict(state_dict, cfg, layout, source=str(path)), cfg


def save_original(
    modules: torch.nn.Module,
    cfg: MotionModuleConfig,
    path: str | Path,
    dtype: torch.dtype | None = None,
) -> str:
    """Export in the original layout: ``.ckpt`` (a plain tensor dict) or ``.safetensors``."""
    import safetensors.torch

    state_dict = _motion_state_dict(modules, dtype)
    validate_state_dict(state_dict, infer_layout(state_dict, "modules"), cfg, "modules")
    location, name = str(path).rstrip("/").rsplit("/", 1) if "/" in str(path) else (".", str(path))
    if name.endswith(".safetensors"):
        metadata = {"format": FORMAT_NAME, "motion_config": json.dumps(dataclasses.asdict(cfg))}
        data = safetensors.torch.save(state_dict, metadata)
    elif name.endswith((".ckpt", ".pt", ".pth")):
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        data = buffer.getvalue()
    else:
        raise CheckpointError(f"{path}: expected a .ckpt, .pt, .pth or .safetensors file name")
    _write(location, name, data)
    return str(path)


# ---------------------------------------------------------------------------------------------
# diffusers MotionAdapter directories
# ---------------------------------------------------------------------------------------------


def to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original layout -> ``MotionAdapter`` keys (``motion_module.to_diffusers_key``).

    diffusers keeps one position table per transformer block, shared by both attentions; the
    original stores one per attention. They are the same sinusoid, and a table that is not equal
    to its block's first one cannot be represented: that is an error, never a silent loss."""
    from animatediff.motion_module import to_diffusers_key

    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = to_diffusers_key(key)
        if target is not None:
            converted[target] = value
            continue
        first = _PE.sub(".attention_blocks.0.pos_encoder.pe", key)
        if first == key or not torch.equal(state_dict[first], value):
            raise CheckpointError(
                f"{key}: differs from {first}; a MotionAdapter has one position encoding per "
                "transformer block and cannot hold both"
            )
    return converted


def from_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layout: UNetLayout,
    cfg: MotionModuleConfig,
    source: str = "adapter",
) -> dict[str, torch.Tensor]:
    """``MotionAdapter`` keys -> original layout, by inverting ``to_diffusers_key`` over the keys
    that ``layout`` and ``cfg`` expect; shared position tables go to every attention block.

    A missing ``pos_embed.pe`` is recomputed, as diffusers itself does (diffusers' conversion of
    the released checkpoints drops the tables); any other missing weight stays an error."""
    from animatediff.motion_module import sinusoidal_position_encoding, to_diffusers_key

    expected = expected_shapes(layout, cfg)
    inverse = {to_diffusers_key(key): key for key in expected}
    inverse.pop(None, None)
    unexpected = sorted(set(state_dict) - set(inverse))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all) for "
            f"layout {layout} and {cfg}"
        )
    converted = {inverse[key]: value for key, value in state_dict.items()}
    for key, shape in expected.items():
        first = _PE.sub(".attention_blocks.0.pos_encoder.pe", key)
        if first == key:
            continue
        if first not in converted:
            converted[first] = sinusoidal_position_encoding(shape[1], shape[2])
        converted[key] = converted[first].clone()
    return converted


def _check_diffusers_compatible(cfg: MotionModuleConfig) -> None:
    problems = []
    if cfg.attention_blocks != 2:
        problems.append(f"attention_blocks={cfg.attention_blocks} (diffusers has exactly 2)")
    if cfg.ff_mult != 4:
        problems.append(f"ff_mult={cfg.ff_mult} (diffusers uses 4)")
    if cfg.norm_eps != 1e-6:
        problems.append(f"norm_eps={cfg.norm_eps} (diffusers uses 1e-6)")
    if problems:
        raise CheckpointError(
            "not representable as a diffusers MotionAdapter: " + "; ".join(problems)
        )


def save_diffusers(
    modules: torch.nn.Module,
    cfg: MotionModuleConfig,
    directory: str | Path,
    dtype: torch.dtype | None = None,
) -> str:
    """Write a ``MotionAdapter`` directory that ``MotionAdapter.from_pretrained`` loads."""
    import diffusers
    import safetensors.torch

    _check_diffusers_compatible(cfg)
    state_dict = _motion_state_dict(modules, dtype)
    layout = infer_layout(state_dict, "modules")
    validate_state_dict(state_dict, layout, cfg, "modules")
    config = {
        "_class_name": "MotionAdapter",
        "_diffusers_version": diffusers.__version__,
        "block_out_channels": list(layout.block_out_channels),
        "conv_in_channels": None,
        "motion_layers_per_block": layout.layers_per_block,
        "motion_max_seq_length": cfg.max_frames,
        "motion_mid_block_layers_per_block": 1,
        "motion_norm_num_groups": cfg.norm_groups,
        "motion_num_attention_heads": cfg.num_heads,
        "motion_transformer_layers_per_block": cfg.num_layers,
        "motion_transformer_layers_per_mid_block": cfg.num_layers,
        "use_motion_mid_block": cfg.mid_block,
        _PRIVATE_CONFIG_KEY: dataclasses.asdict(cfg),
    }
    weights = safetensors.torch.save(to_diffusers_state_dict(state_dict), {"format": "pt"})
    _write(directory, DIFFUSERS_WEIGHTS, weights)
    _write(directory, DIFFUSERS_CONFIG, json.dumps(config, indent=2).encode())
    return str(directory)


def _uniform(value: Any, option: str, source: str) -> int:
    """diffusers allows per-block tuples; our MotionModules need one value for every block."""
    values = value if isinstance(value, list | tuple) else [value]
    if not values or len(set(values)) != 1 or not isinstance(values[0], int):
        raise CheckpointError(
            f"{source}: {option}={value!r}: only one value for all blocks is supported"
        )
    return int(values[0])


def load_diffusers(directory: str | Path, cross_frame_norm: bool | None = None):
    """``(MotionModules, MotionModuleConfig)`` from a diffusers ``MotionAdapter`` directory.

    ``cross_frame_norm``: None keeps the setting our own exports recorded, else True (diffusers'
    semantics, see the module docstring)."""
    source = _at(directory, DIFFUSERS_CONFIG).uri
    try:
        config = json.loads(_read(directory, DIFFUSERS_CONFIG))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: invalid JSON ({error})") from error
    if config.get("_class_name") != "MotionAdapter":
        raise CheckpointError(
            f"{source}: _class_name is {config.get('_class_name')!r}, not MotionAdapter"
        )
    if config.get("conv_in_channels"):
        raise CheckpointError(
            f"{source}: conv_in_channels is set (a PIA/SparseCtrl adapter): unsupported"
        )
    if config.get("motion_mid_block_layers_per_block", 1) != 1:
        raise CheckpointError(f"{source}: motion_mid_block_layers_per_block must be 1")
    num_layers = _uniform(
        config.get("motion_transformer_layers_per_block", 1),
        "motion_transformer_layers_per_block",
        source,
    )
    if (
        config.get("use_motion_mid_block", True)
        and _uniform(
            config.get("motion_transformer_layers_per_mid_block", 1),
            "motion_transformer_layers_per_mid_block",
            source,
        )
        != num_layers
    ):
        raise CheckpointError(
            f"{source}: mid-block transformer layers differ from the other blocks'"
        )
    stored = config.get(_PRIVATE_CONFIG_KEY)
    base = (
        from_dict(MotionModuleConfig, stored, prefix="motion")
        if stored
        else MotionModuleConfig(cross_frame_norm=True)
    )
    try:
        cfg = dataclasses.replace(
            base,
            num_layers=num_layers,
            num_heads=_uniform(
                config.get("motion_num_attention_heads", 8), "motion_num_attention_heads", source
            ),
            attention_blocks=2,
            max_frames=int(config.get("motion_max_seq_length", 32)),
            norm_groups=int(config.get("motion_norm_num_groups", 32)),
            norm_eps=1e-6,
            mid_block=bool(config.get("use_motion_mid_block", True)),
            ff_mult=4,
            cross_frame_norm=base.cross_frame_norm
            if cross_frame_norm is None
            else cross_frame_norm,
        )
    except ConfigError as error:
        raise CheckpointError(f"{source}: {error}") from error
    layout = UNetLayout(
        tuple(int(c) for c in config.get("block_out_channels", (320, 640, 1280, 1280))),
        _uniform(config.get("motion_layers_per_block", 2), "motion_layers_per_block", source),
    )
    weights_source = _at(directory, DIFFUSERS_WEIGHTS).uri
    if not _exists(directory, DIFFUSERS_WEIGHTS):
        raise CheckpointError(
            f"{weights_source}: missing (only safetensors weights are read; .bin files are pickles)"
        )
    adapter_state, _ = _load_safetensors(_read(directory, DIFFUSERS_WEIGHTS), weights_source)
    state_dict = from_diffusers_state_dict(adapter_state, layout, cfg, weights_source)
    return modules_from_state_dict(state_dict, cfg, layout, weights_source), cfg


# ---------------------------------------------------------------------------------------------
# Any of the three
# ---------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> Format:
    """``native``/``diffusers`` for directories, ``original`` for ``.ckpt``/``.safetensors`` files."""
    import pyarrow.fs as pafs

    info = _file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise CheckpointError(f"{path}: does not exist")
    if info.type == pafs.FileType.Directory:
        if _exists(path, NATIVE_CONFIG):
            return "native"
        if _exists(path, DIFFUSERS_CONFIG):
            return "diffusers"
        raise CheckpointError(
            f"{path}: neither {NATIVE_CONFIG} nor a MotionAdapter {DIFFUSERS_CONFIG}"
        )
    if str(path).endswith((".ckpt", ".pt", ".pth", ".safetensors")):
        return "original"
    raise CheckpointError(
        f"{path}: unknown checkpoint kind (expected a directory, .ckpt or .safetensors)"
    )


def load_any(
    path: str | Path,
    defaults: MotionModuleConfig | None = None,
    ignore_non_motion_keys: bool = False,
):
    """``(MotionModules, MotionModuleConfig)`` from any of the three formats.

    ``defaults`` and ``ignore_non_motion_keys`` only matter for original files (fields the shapes
    do not determine; a whole-UNet checkpoint of the original ``train.py``)."""
    kind = detect_format(path)
    if kind == "native":
        return load_motion_modules(path)
    if kind == "diffusers":
        return load_diffusers(path)
    return load_original(path, defaults, ignore_non_motion_keys)


def adapt_to(modules, loaded: MotionModuleConfig, wanted: MotionModuleConfig) -> MotionModuleConfig:
    """The config a loaded module runs with under the user's ``wanted`` (``model.motion``).

    The file decides what its weights are: the architecture and both norm semantics. ``wanted``
    decides how they run: gradient checkpointing (and its policy), compilation, and the
    position-table length: a table shorter than ``wanted.max_frames`` is resized (in
    ``modules``, in place) by ``wanted.pe_resize``."""
    cfg = dataclasses.replace(
        loaded,
        pe_resize=wanted.pe_resize,
        gradient_checkpointing=wanted.gradient_checkpointing,
        checkpoint_motion_modules=wanted.checkpoint_motion_modules,
        checkpoint_saves=wanted.checkpoint_saves,
        compile_motion_modules=wanted.compile_motion_modules,
        zero_init_out=wanted.zero_init_out,
    )
    if wanted.max_frames > loaded.max_frames:
        modules.resize_position_tables(wanted.max_frames, wanted.pe_resize)
        cfg = dataclasses.replace(cfg, max_frames=wanted.max_frames)
    return cfg
