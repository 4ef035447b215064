"""``model:``: the frozen base, the motion module and the diffusion objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from animatediff.config.errors import check


@dataclass(frozen=True)
class LoraConfig:
    path: str
    """A LoRA ``.safetensors`` file (kohya/A1111 or diffusers/PEFT key style) merged into the base."""
    scale: float = 1.0
    """Multiplier of the LoRA update ``scale * up @ down``."""


@dataclass(frozen=True)
class BaseModelConfig:
    pretrained: str = "builtin:tiny"
    """Frozen SD 1.5 base: a diffusers pipeline directory, a hub id (machines with internet), or
    ``builtin:tiny`` (random weights built deterministically from ``tiny_seed``; offline, tests)."""
    single_file: str | None = None
    """Optional personalized checkpoint (a single-file SD ``.safetensors``, DreamBooth-style) whose
    UNet, VAE and text encoder replace the base's."""
    loras: tuple[LoraConfig, ...] = ()
    """LoRA weights merged into the frozen base, in order, before the motion module is injected."""
    tiny_seed: int = 0
    """Seed of the ``builtin:tiny`` random weights; every process builds the same model."""
    cache_dir: str = "~/.cache/animatediff"
    """Where ``builtin:tiny`` is materialised as a diffusers directory."""

    def __post_init__(self) -> None:
        check(bool(self.pretrained), "model.base.pretrained", "must not be empty")


@dataclass(frozen=True)
class MotionModuleConfig:
    num_layers: int = 1
    """Transformer blocks per motion module (the released v1/v2/v3 modules use 1)."""
    num_heads: int = 8
    """Attention heads of the temporal self-attention."""
    attention_blocks: int = 2
    """Temporal self-attention layers per transformer block (the original uses 2)."""
    max_frames: int = 32
    """Length of the sinusoidal position encoding (v1: 24, v2/v3: 32): the longest clip (or
    sliding window) the module sees at once. A loaded module whose table is shorter is resized to
    this length by ``model.motion.pe_resize`` (to fine-tune or sample 32-64+ frames)."""
    pe_resize: Literal["extend", "interpolate"] = "extend"
    """How a loaded position table is made longer. ``extend``: the sinusoid continues past the
    trained positions (the first rows stay as they are, so short clips are computed exactly as
    before). ``interpolate``: the trained table is stretched over the new length by linear
    interpolation along frames (half-sample centres, as ComfyUI-AnimateDiff-Evolved's
    ``interpolate_pe_to_length``): every frame keeps a position inside the trained range."""
    norm_groups: int = 32
    """GroupNorm groups at the module input."""
    norm_eps: float = 1e-6
    """GroupNorm epsilon."""
    cross_frame_norm: bool = False
    """False: GroupNorm per frame, as the original AnimateDiff. True: statistics span all frames of
    a clip, as diffusers' ``MotionAdapter`` (needed for bit-parity with diffusers)."""
    base_norm: Literal["auto", "per_frame", "across_frames"] = "auto"
    """The frozen base UNet's resnet and output GroupNorms. ``per_frame``: statistics of each frame
    (v2/v3, the original's ``use_inflated_groupnorm: true``, and diffusers). ``across_frames``:
    statistics over all frames of a clip (the original v1, ``use_inflated_groupnorm: false``).
    ``auto``: per frame, except for an original-layout file with the v1 signature (a 24-frame
    position table and no mid block), which loads as ``across_frames``."""
    mid_block: bool = True
    """Insert a motion module in the UNet mid block (v2 layout); False gives the v1/v3 layout."""
    ff_mult: int = 4
    """GEGLU feed-forward width multiplier."""
    zero_init_out: bool = True
    """Zero-initialise ``proj_out`` (weight and bias) so a fresh module is the identity."""
    gradient_checkpointing: bool = False
    """Recompute motion-module and UNet activations in the backward pass to save memory."""
    checkpoint_motion_modules: bool = True
    """With ``gradient_checkpointing``: True recomputes every resnet/attention/motion-module group
    (the least memory); False recomputes the frozen 2D layers only and keeps the motion modules'
    activations (what diffusers' ``UNetMotionModel`` does; more memory, less recomputation)."""
    checkpoint_saves: Literal["nothing", "matmuls"] = "nothing"
    """With ``gradient_checkpointing``: what a checkpointed group keeps from its forward pass.
    ``nothing``: only its input, everything is recomputed. ``matmuls``: also the outputs of its
    linear layers, convolutions and attention (torch's selective checkpointing), so the backward
    pass recomputes only norms, activations and element-wise ops. ``benchmarks/unet_step.py
    --budget`` measures what each costs at SD 1.5 size."""
    compile_motion_modules: bool = False
    """Compile each motion module's temporal transformer with ``torch.compile`` (regional: the
    frozen 2D layers stay eager, and the repeated modules compile once per width). Same outputs,
    up to float rounding. The first step pays the compilation (minutes on CPU); inductor caches
    it in ``TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_$USER``): point that at a
    persistent volume so later runs reuse it. ``benchmarks/unet_step.py --compile`` measures it."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "attention_blocks", "max_frames", "norm_groups"):
            check(getattr(self, name) >= 1, f"model.motion.{name}", "must be >= 1")
        check(self.ff_mult >= 1, "model.motion.ff_mult", "must be >= 1")
        check(self.norm_eps > 0, "model.motion.norm_eps", "must be > 0")


@dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    """Length of the training noise schedule."""
    beta_start: float = 0.00085
    """First beta of the schedule."""
    beta_end: float = 0.012
    """Last beta of the schedule (AnimateDiff trains with 0.012, SD 1.5 itself with 0.012 too)."""
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    """``linear`` (AnimateDiff's training setup) or ``scaled_linear`` (SD 1.5's)."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts, and so what the L2 loss compares against."""
    caption_dropout: float = 0.1
    """Probability that a training caption is replaced by the empty prompt (enables CFG)."""

    def __post_init__(self) -> None:
        check(self.num_train_timesteps >= 1, "model.diffusion.num_train_timesteps", "must be >= 1")
        check(
            0 < self.beta_start < self.beta_end < 1,
            "model.diffusion.beta_start",
            f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}",
        )
        check(
            0 <= self.caption_dropout <= 1, "model.diffusion.caption_dropout", "must be in [0, 1]"
        )


@dataclass(frozen=True)
class ModelConfig:
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    """The frozen Stable Diffusion base and its personalisation."""
    motion: MotionModuleConfig = field(default_factory=MotionModuleConfig)
    """The trainable motion module."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Noise schedule and training objective."""
