"""``reproduce:``: the Moving Digits miniature reproduction (``python -m jobs.reproduce``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from animatediff.config.errors import check


@dataclass(frozen=True)
class ReproduceConfig:
    canvas: int = 64
    """Frame size in pixels; a multiple of 32 (decord mis-decodes some other widths)."""
    digit_size: int = 16
    """Side of the upscaled 8x8 digit, in pixels."""
    speed: int = 3
    """Pixels per frame a digit moves."""
    frames: int = 8
    """Frames per clip (the motion module's training length)."""
    directions: tuple[str, ...] = ("left", "right", "up", "down")
    """Directions of motion (``left``, ``right``, ``up``, ``down`` and the diagonals
    ``up-left``, ...)."""
    heldout_fraction: float = 0.25
    """Share of the 1,797 digit images held out of all training (evaluation digits)."""
    train_clips: int = 1600
    """Training clips rendered from the training digits (plain style)."""
    heldout_clips: int = 64
    """Clips rendered from held-out digits: the held-out denoising loss."""
    stills: int = 1600
    """Still frames of training digits that train the base (the image stage)."""
    style_stills: int = 400
    """Still frames in the personal style that train the base's LoRA."""
    base_captions: Literal["digit", "clip"] = "digit"
    """Captions of the base's stills: ``digit`` (``the digit 3``) or ``clip`` (a still of a clip
    with its clip's caption, ``the digit 3 moving left``)."""
    still_position: Literal["anywhere", "clip_start"] = "anywhere"
    """Where the base's stills place the digit: ``anywhere`` on the canvas (the position says
    nothing about the caption's direction), or ``clip_start``: the first frame of a clip moving
    the way the caption names, so the position carries the direction (needs
    ``base_captions: clip``)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Canvas colour of the plain style (RGB in [0, 1])."""
    foreground: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Digit colour of the plain style."""
    style_background: tuple[float, float, float] = (0.10, 0.15, 0.55)
    """Canvas colour of the personal style (what the LoRA learns; the motion module never sees
    it)."""
    style_foreground: tuple[float, float, float] = (1.0, 0.85, 0.10)
    """Digit colour of the personal style."""
    vae_channels: tuple[int, ...] = (32, 64, 64)
    """Block widths of the experiment's VAE (downsampling 2 ** (len - 1))."""
    vae_steps: int = 1500
    """VAE training steps (trained here, before preprocessing needs it)."""
    vae_batch_size: int = 32
    """VAE training batch."""
    vae_lr: float = 1e-3
    """VAE learning rate."""
    classifier_steps: int = 1500
    """Digit-classifier training steps."""
    unet_channels: tuple[int, ...] = (32, 64)
    """Block widths of the base UNet."""
    unet_layers: int = 1
    """Resnets per UNet block."""
    unet_head_channels: int | None = None
    """Channels per attention head of the base UNet: each level of width ``w`` gets ``w // n``
    heads. None: 8 heads at every level, as SD 1.5's ``attention_head_dim=8`` (whose heads are
    40-160 channels wide; at a width of 32 they are 4 wide, and attention over such thin heads is
    most of a CPU step's attention time)."""
    text_width: int = 32
    """Hidden size of the frozen CLIP text encoder (random weights)."""
    text_layers: int = 2
    """Layers of the frozen CLIP text encoder."""
    clip_bpe: str = ""
    """OpenAI's CLIP BPE merges (``bpe_simple_vocab_16e6.txt.gz``, e.g. from the
    ``open_clip_torch`` wheel: ``make reproduce`` fetches it); empty: a byte-level tokenizer."""
    base_train: tuple[str, ...] = ()
    """Overrides of the image stage that trains the base (e.g. ``train.max_steps=800``)."""
    motion_train: tuple[str, ...] = ()
    """Overrides of the motion-module training."""
    lora_train: tuple[str, ...] = ()
    """Overrides of the LoRA training on the personal style."""
    ablation: tuple[str, ...] = ("model.motion.zero_init_out=false",)
    """Overrides of the ablation's motion-module training (condition d), on top of
    ``motion_train``."""
    eval_seed: int = 100_000
    """First seed of the evaluation videos (training never used these)."""
    eval_repeats: int = 1
    """Videos per (digit, direction) prompt in each condition."""
    eval_digits: int = 10
    """Digits 0 .. n-1 prompted in each condition."""
    seed: int = 0
    """Seed of the split, the rendering and the experiment's own training."""

    def __post_init__(self) -> None:
        check(self.canvas % 32 == 0, "reproduce.canvas", "must be a multiple of 32")
        check(
            0 < self.digit_size + self.speed * (self.frames - 1) <= self.canvas,
            "reproduce.speed",
            "the digit must stay on the canvas for the whole clip",
        )
        check(0 < self.heldout_fraction < 1, "reproduce.heldout_fraction", "must be in (0, 1)")
        check(
            self.still_position == "anywhere" or self.base_captions == "clip",
            "reproduce.still_position",
            "clip_start needs reproduce.base_captions=clip (a still's direction is its caption's)",
        )
        check(
            self.unet_head_channels is None
            or (
                self.unet_head_channels >= 1
                and all(width % self.unet_head_channels == 0 for width in self.unet_channels)
            ),
            "reproduce.unet_head_channels",
            f"must divide every reproduce.unet_channels width {list(self.unet_channels)}",
        )
        check(1 <= self.eval_digits <= 10, "reproduce.eval_digits", "must be in [1, 10]")
        for name in ("train_clips", "heldout_clips", "stills", "style_stills", "frames"):
            check(getattr(self, name) >= 1, f"reproduce.{name}", "must be >= 1")
        known = {"left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right"}
        check(
            bool(self.directions) and set(self.directions) <= known,
            "reproduce.directions",
            f"must be among {sorted(known)}",
        )
