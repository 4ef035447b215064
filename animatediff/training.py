"""The pure parts of motion-module training: model assembly, the loss of one batch, the schedule.

No Ray, DeepSpeed or MLflow here (``jobs/train.py`` wraps these), so every piece runs in a plain
PyTorch loop too (the benchmark's baseline, the tests).

Randomness of a step (latent sample, timesteps, noise, caption dropout) comes from a generator
seeded by ``(seed, step, micro_batch, rank)``, never from global RNG state: a resumed run draws
exactly what an uninterrupted run draws at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from animatediff.base_model import tokenize
from animatediff.config import Config, ConfigError, MotionModuleConfig, TrainConfig
from animatediff.diffusion import (
    add_noise,
    alphas_cumprod,
    diffusion_loss,
    drop_captions,
    make_betas,
    sample_latents,
    sample_timesteps,
    training_target,
)
from animatediff.motion_module import MotionModules

# Columns of the latent shards that training reads (see the shard schema in the data pipeline).
BATCH_COLUMNS = ("caption", "latent_mean", "latent_std")
OPTIONAL_BATCH_COLUMNS = ("text_embedding",)


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Factor on the peak lr for optimizer step ``step`` (0-based: the step about to be taken).

    Linear warm-up ``(step + 1) / warmup_steps`` (the first step already moves), then ``constant``
    or ``cosine`` decay reaching 0 at ``max_steps``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.lr_schedule: must be 'constant' or 'cosine', got {schedule!r}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The lr of optimizer step ``step``."""
    return cfg.lr * lr_multiplier(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict of a run (the optimizer is a torch AdamW passed separately)."""
    bucket = cfg.zero_bucket_size
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
        # On a GPU, copying each gradient into one buffer as it is produced avoids fragmenting
        # device memory (DeepSpeed's default). On the CPU it is only an extra copy per parameter
        # per step: +5% step time for the tiny benchmark model (benchmarks/train.py).
        "contiguous_gradients": cfg.use_gpu,
    }
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        # Never gather the 16-bit model into one file at save: the native export does that.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        # Scaled with the bucket in DeepSpeed's own default ratios (5e7, 1e9, 1e9 and 1e5 at 5e8).
        # The reuse distance matters most: a parameter needed again within it stays gathered from
        # the forward to the backward pass, so at 1e9 a small model is never released at all.
        # Parameters no larger than the persistence threshold stay whole on every rank: at 1e5,
        # all of a tiny model's (590 of 590; 1 at 20). DeepSpeed also scans the modules within the reuse distance once per
        # module on the first traced step: 21 s of a tiny ZeRO-3 run's second step at 1e9, 4 s at
        # 2e5 (train.zero_bucket_size=100000).
        zero["stage3_prefetch_bucket_size"] = max(1, bucket // 10)
        zero["stage3_max_live_parameters"] = 2 * bucket
        zero["stage3_max_reuse_distance"] = 2 * bucket
        zero["stage3_param_persistence_threshold"] = max(1, bucket // 5000)
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def step_generator(seed: int, step: int, micro_batch: int, rank: int) -> torch.Generator:
    """A CPU generator owned by one micro-batch of one rank at one step."""
    entropy = np.random.SeedSequence([seed, step, micro_batch, rank]).generate_state(2)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One micro-batch of clips.

    latent_mean, latent_std: ``(batch, 4, frames, height/8, width/8)`` (float16 from the shards);
    text_embedding: ``(batch, 77, dim)`` when the shards cache it, else None (encode captions)."""

    captions: list[str]
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    text_embedding: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)


def collate(columns: Mapping[str, np.ndarray]) -> Batch:
    """numpy batch (as Ray Data yields it) -> ``Batch`` on the CPU."""
    missing = [name for name in BATCH_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"latent shards lack columns {missing} (have {sorted(columns)})")
    embedding = columns.get("text_embedding")
    return Batch(
        captions=[str(c) for c in columns["caption"]],
        latent_mean=torch.as_tensor(np.asarray(columns["latent_mean"])),
        latent_std=torch.as_tensor(np.asarray(columns["latent_std"])),
        text_embedding=None if embedding is None else torch.as_tensor(np.asarray(embedding)),
    )


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class TextConditioner:
    """Frozen CLIP text conditioning: cached embeddings from the shards, or the text encoder.

    Dropped captions (classifier-free guidance) always use the encoder's empty-prompt embedding,
    the same one the sampler uses as the unconditional input."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.empty = self.encode([""])[0]

    @torch.no_grad()
    def encode(self, captions: list[str]) -> torch.Tensor:
        """``(batch, 77, dim)`` last hidden states of the text encoder, on its device."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokenize(self.tokenizer, captions).to(device))[0]

    def __call__(self, captions: list[str], cached: torch.Tensor | None) -> torch.Tensor:
        """Embeddings for ``captions`` where ``""`` marks a dropped caption, on the device of
        ``empty`` (the UNet's: the encoder itself may stay on the CPU)."""
        if cached is None:
            return self.encode(captions).to(self.empty.device)
        embeddings = cached.to(self.empty.device, self.empty.dtype).clone()
        for index, caption in enumerate(captions):
            if caption == "":
                embeddings[index] = self.empty
        return embeddings


@dataclass
class TrainingModel:
    """What a training process holds: the UNet to train (a ``VideoUNet`` whose motion modules
    train, or a ``FrameUNet`` over the base's 2D UNet for the image stage), the frozen text
    conditioning and the diffusion constants."""

    unet: torch.nn.Module
    conditioner: TextConditioner
    alphas_cumprod: torch.Tensor
    """``(T,)`` float64."""
    scaling_factor: float
    """VAE latent scaling factor (0.18215 for SD 1.5)."""
    base_source: str
    """The resolved base model path or hub id."""
    stage: str = "motion"
    """``train.stage``: ``image`` trains on one frame drawn per clip."""
    text_encoder_on_device: bool = True
    """False when the shards cache the text embeddings (``data.cache_text_embeddings``): the
    encoder then stays on the CPU (it only encodes the empty prompt, and captions of shards
    without the cache), which frees its weights (0.49 GB for SD 1.5's) on the accelerator."""

    @property
    def motion_modules(self) -> MotionModules:
        return self.unet.motion_modules

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def to(self, device: torch.device | str) -> TrainingModel:
        """Move the UNet and the text conditioning to ``device`` (in place); the text encoder
        only when ``text_encoder_on_device``."""
        self.unet.to(device)
        if self.text_encoder_on_device:
            self.conditioner.text_encoder.to(device)
        self.conditioner.empty = self.conditioner.empty.to(device)
        return self


def _image_stage_unet(unet2d: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """The base's 2D UNet, trainable in full or through LoRA adapters (``train.lora``)."""
    from animatediff.lora import add_lora
    from animatediff.unet import FrameUNet

    lora = cfg.train.lora
    if lora.rank:
        add_lora(unet2d, lora.target_modules, lora.rank, lora.scale_alpha)
    else:
        unet2d.requires_grad_(True)
    if cfg.model.motion.gradient_checkpointing:
        unet2d.enable_gradient_checkpointing()
    return FrameUNet(unet2d.train())


def initial_motion_modules(cfg: Config) -> tuple[MotionModules, MotionModuleConfig]:
    """``train.init_from``'s weights and the config they train with under ``model.motion``
    (``checkpoints.adapt_to``: the file's architecture and norms, the user's run-time settings,
    position tables lengthened to ``model.motion.max_frames``). A whole-UNet checkpoint of the
    original ``train.py`` gives its motion modules."""
    from animatediff.checkpoints import adapt_to, load_any

    modules, loaded = load_any(
        cfg.train.init_from, defaults=cfg.model.motion, ignore_non_motion_keys=True
    )
    return modules, adapt_to(modules, loaded, cfg.model.motion)


def with_init_from_config(cfg: Config) -> Config:
    """``cfg`` with ``model.motion`` replaced by the config ``train.init_from`` trains with (the
    driver calls it once, so the run logs, checkpoints and exports the real config)."""
    if not cfg.train.init_from:
        return cfg
    _, motion_cfg = initial_motion_modules(cfg)
    return cfg.with_motion(motion_cfg)


def _video_unet(unet2d: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """The inflated UNet of the motion stages: fresh motion modules, or ``train.init_from``'s;
    for ``motion_lora`` frozen, with LoRA adapters on their attention projections."""
    from animatediff.lora import add_lora
    from animatediff.unet import VideoUNet

    modules = None
    if cfg.train.init_from:
        modules, motion_cfg = initial_motion_modules(cfg)
        if motion_cfg != cfg.model.motion:
            raise ConfigError(
                f"model.motion: {cfg.model.motion} is not the config train.init_from trains with "
                f"({motion_cfg}); start runs through trainer.run_training, which sets it"
            )
    unet = VideoUNet.from_unet2d(unet2d, cfg.model.motion, modules)  # checks the layout fits
    if cfg.train.stage == "motion_lora":
        lora = cfg.train.lora
        add_lora(unet.motion_modules, lora.target_modules, lora.rank, lora.scale_alpha)
    return unet  # checkpointing as model.motion says (VideoUNet.__init__)


def build_training_model(cfg: Config, seed: int | None = None) -> TrainingModel:
    """Load the frozen base and make the stage's trainable UNet (seeded, so every rank builds
    identical weights): ``motion`` inflates the base UNet with fresh motion modules (or
    ``train.init_from``'s), ``motion_lora`` adds LoRA adapters to ``train.init_from``'s frozen
    modules, ``image`` trains the base UNet itself (or LoRA adapters on it). Gradient
    checkpointing per ``model.motion.gradient_checkpointing``."""
    from animatediff.base_model import load_base_model

    base = load_base_model(cfg.model.base)
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    if cfg.train.stage == "image":
        unet = _image_stage_unet(base.unet, cfg)
    else:
        unet = _video_unet(base.unet, cfg)
        trainable = {id(p) for p in unet.parameters() if p.requires_grad}
        motion = {id(p) for p in unet.motion_modules.parameters()}
        if not trainable or not trainable <= motion:
            raise RuntimeError("only motion-module parameters may be trainable in the VideoUNet")
    return TrainingModel(
        unet=unet,
        conditioner=TextConditioner(base.tokenizer, base.text_encoder),
        alphas_cumprod=alphas_cumprod(make_betas(cfg.model.diffusion)),
        scaling_factor=float(base.vae.config.scaling_factor),
        base_source=base.source,
        stage=cfg.train.stage,
        text_encoder_on_device=not cfg.data.cache_text_embeddings,
    )


def new_motion_modules(unet: torch.nn.Module, motion_cfg: MotionModuleConfig) -> MotionModules:
    """An empty CPU ``MotionModules`` shaped like ``unet``'s (target of the native export)."""
    mm = unet.motion_modules
    return MotionModules(mm.block_out_channels, mm.layers_per_block, motion_cfg)


def new_motion_modules_for(
    unet2d: torch.nn.Module, motion_cfg: MotionModuleConfig
) -> MotionModules:
    """An empty ``MotionModules`` for a 2D UNet's layout."""
    config = unet2d.config
    return MotionModules(tuple(config.block_out_channels), config.layers_per_block, motion_cfg)


def one_frame_per_clip(batch: Batch, generator: torch.Generator) -> Batch:
    """The image stage's batch: one uniformly drawn frame of each clip, shaped
    ``(batch, channels, 1, height, width)``."""
    frames = batch.latent_mean.shape[2]
    index = torch.randint(0, frames, (len(batch),), generator=generator)
    rows = torch.arange(len(batch))
    return Batch(
        captions=batch.captions,
        latent_mean=batch.latent_mean[rows, :, index].unsqueeze(2),
        latent_std=batch.latent_std[rows, :, index].unsqueeze(2),
        text_embedding=batch.text_embedding,
    )


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def batch_loss(
    model: TrainingModel,
    unet: torch.nn.Module,
    batch: Batch,
    cfg: Config,
    generator: torch.Generator,
    caption_dropout: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The epsilon (or v) L2 loss of one micro-batch.

    ``unet`` is the module to call: ``model.unet`` itself or a DeepSpeed engine wrapping it.
    The image stage first draws one frame per clip. A fresh latent is drawn from the stored
    posterior ``N(mean, std^2)`` each time; then uniform timesteps, Gaussian noise and caption
    dropout, all from ``generator`` in that order."""
    device = next(model.unet.parameters()).device
    if model.stage == "image":
        batch = one_frame_per_clip(batch, generator)
    dropout = cfg.model.diffusion.caption_dropout if caption_dropout is None else caption_dropout
    latents = sample_latents(batch.latent_mean, batch.latent_std, generator, model.scaling_factor)
    timesteps = sample_timesteps(
        len(batch), cfg.model.diffusion.num_train_timesteps, generator=generator
    )
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    captions = drop_captions(batch.captions, dropout, generator)
    noisy = add_noise(latents, noise, timesteps, model.alphas_cumprod)
    target = training_target(
        latents, noise, timesteps, model.alphas_cumprod, cfg.model.diffusion.prediction_type
    )
    context = model.conditioner(captions, batch.text_embedding)
    pred = unet(
        noisy.to(device, dtype), timesteps.to(device), context.to(device, dtype)
    )  # (batch, channels, frames, height, width)
    return diffusion_loss(pred, target.to(device))


def validation_loss(
    model: TrainingModel,
    unet: torch.nn.Module,
    batches: list[Batch],
    cfg: Config,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean loss over fixed batches with fixed noise (``train.validation_seed``) and no caption
    dropout: comparable between steps, runs and model versions on the same validation set."""
    if not batches:
        raise ValueError("validation needs at least one batch")
    total, count = 0.0, 0
    with torch.no_grad():
        for index, batch in enumerate(batches):
            generator = step_generator(cfg.train.validation_seed, 0, index, 0)
            loss = batch_loss(model, unet, batch, cfg, generator, caption_dropout=0.0, dtype=dtype)
            total += float(loss) * len(batch)
            count += len(batch)
    return total / count
