"""``train:``: motion-module training on Ray Train + DeepSpeed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from animatediff.config.errors import check

LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""MotionLoRA names: they end registered model names and are what requests send."""


@dataclass(frozen=True)
class LoraTrainConfig:
    rank: int = 0
    """Rank of the LoRA adapters; 0 trains the stage's parameters in full instead."""
    alpha: float = 0.0
    """LoRA scale numerator (the update is ``alpha / rank * up @ down``); 0 means ``rank``."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Linear layers that get adapters, by the end of their module name (attention projections
    by default: in the motion modules, the q/k/v/out of both temporal attentions of every module,
    mid block included)."""
    name: str = ""
    """A MotionLoRA's name (``train.stage=motion_lora``, e.g. ``zoom_in``): it is registered as
    ``<mlflow.registered_model>-motion_lora-<name>``, and requests ask for it by this name."""

    def __post_init__(self) -> None:
        check(self.rank >= 0, "train.lora.rank", "must be >= 0 (0: no LoRA)")
        check(self.alpha >= 0, "train.lora.alpha", "must be >= 0 (0: the rank)")
        check(bool(self.target_modules), "train.lora.target_modules", "must not be empty")
        check(
            not self.name or LORA_NAME.match(self.name) is not None,
            "train.lora.name",
            f"letters, digits, '_', '.' and '-' only, got {self.name!r}",
        )

    @property
    def scale_alpha(self) -> float:
        """The alpha in effect."""
        return self.alpha or float(self.rank)


@dataclass(frozen=True)
class TrainConfig:
    stage: Literal["motion", "image", "motion_lora"] = "motion"
    """What trains. ``motion``: the motion modules on clips, the base frozen (AnimateDiff).
    ``image``: the base's 2D UNet on single frames drawn from the same clips (the original's
    ``image_finetune``; with ``train.lora.rank`` a LoRA of it), exported as a diffusers SD
    directory or a kohya LoRA file. ``motion_lora``: LoRA adapters (``train.lora``) on the
    temporal attention of the frozen motion module ``train.init_from`` (AnimateDiff v2's
    MotionLoRA, e.g. on ``data.camera_motion`` clips), exported in the original MotionLoRA and
    diffusers formats and registered under its own name (``train.lora.name``)."""
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    """LoRA adapters instead of full training (``image`` and ``motion_lora`` stages)."""
    init_from: str = ""
    """The motion module to start from: a checkpoint in any format (native directory, original
    ``.ckpt``/``.safetensors`` incl. the original ``train.py``'s whole-UNet checkpoints, diffusers
    ``MotionAdapter`` directory; local or ``s3://``) or ``models:/<name>@<alias>`` /
    ``models:/<name>/<version>`` (pinned on the driver). Training continues from its weights on
    this run's data with a fresh optimizer (resuming is re-running the same ``train.run_name``).
    Its config replaces ``model.motion`` (``model.motion.max_frames`` may lengthen its position
    tables, by ``model.motion.pe_resize``). ``motion_lora``: the frozen module the LoRA adapts."""
    data_uri: str = ""
    """Latent shards (Parquet directory, local path or ``s3://``) written by the data pipeline."""
    val_data_uri: str | None = None
    """Shards for the validation loss. None: hold out the ``train.val_max_clips`` clips of
    ``train.data_uri`` with the lowest clip-id hash; training never reads them."""
    val_max_clips: int = 8
    """Clips of the validation set used for the validation loss (fixed noise, fixed timesteps)."""
    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); False trains on CPU with the gloo backend."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per worker; keep some free for Ray Data on small machines."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker also reserves, e.g. ``{trainer: 1}`` to run workers only
    on nodes started with ``ray start --resources='{"trainer": 1}'`` (at most as many per node as
    the node has). CPUs and GPUs are ``train.cpus_per_worker`` and ``train.use_gpu``."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers on nodes: ``PACK`` (Ray's default: as few nodes as fit),
    ``SPREAD`` (across nodes where possible), ``STRICT_SPREAD`` (one worker per node: the run
    waits until there are ``train.num_workers`` nodes with room) or ``STRICT_PACK`` (all on one
    node)."""
    max_steps: int = 1000
    """Optimizer steps to train (the run ends there; resumed runs count from their checkpoint)."""
    batch_size: int = 1
    """Clips per worker per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (global batch = workers * batch * accum)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``train.lr`` over these optimizer steps."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: ``constant`` or ``cosine`` decay to 0 at ``train.max_steps``."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping threshold; 0 disables."""
    zero_stage: Literal[0, 2, 3] = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 2 (shard optimizer state and gradients) or
    3 (also parameters)."""
    offload_optimizer: bool = False
    """ZeRO optimizer state offload to CPU memory (stage 2/3; compiles DeepSpeed's CPUAdam)."""
    zero_bucket_size: int = 500_000_000
    """Elements per ZeRO communication bucket (``reduce_bucket_size``, ``allgather_bucket_size``;
    stage 3's prefetch, live-parameter, reuse-distance and parameter-persistence limits scale
    with it as in DeepSpeed's defaults). On a GPU gradient buckets are allocated at this size: smaller ones lower peak
    memory, larger ones overlap communication better. DeepSpeed's default is 5e8."""
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU. bf16 also runs on CPU (slowly on most CPUs; the tests
    use it to exercise the GPU recipe's bf16 path)."""
    seed: int = 0
    """Seeds model init, data shuffling and per-step noise: a run is reproducible."""
    shuffle_buffer: int = 0
    """Rows of the local shuffle buffer per worker (seeded per epoch); 0 keeps the shard order."""
    prefetch_batches: int = 2
    """Batches Ray Data prepares ahead of the training step."""
    cache_data_max_gib: float = 1.0
    """Latent shard sets of at most this many GiB (Parquet bytes in the manifest) are read once
    into Ray's object store and served from there every epoch; larger ones stream, and pay a
    restart of the read (seconds) at each epoch boundary. 0 always streams."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many optimizer steps (and at the end); 0: only at the end."""
    keep_last: int = 3
    """Checkpoints kept in storage (older ones are deleted)."""
    storage_path: str = "outputs/ray_results"
    """Where Ray Train keeps runs and checkpoints: a local path or ``s3://bucket/prefix``."""
    run_name: str = "animatediff-motion"
    """Ray Train run name; re-running with the same name and storage resumes from the latest
    checkpoint."""
    max_failures: int = 2
    """Worker-group restarts (from the latest checkpoint) before the run fails; -1: unlimited."""
    log_every: int = 1
    """Log metrics every this many optimizer steps."""
    health_check_interval_s: float | None = None
    """Seconds between Ray Train's polls of the workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
    for this run's controller): the end of training and a failed worker are noticed up to this
    late. Empty: Ray's default (2 s, or the variable where set). Each poll is one small task per
    worker. Short runs gain: 0.25 took 4-6 s off a two-step tiny fit on 2 cores."""
    system_metrics_interval_s: float = 10.0
    """Seconds between MLflow system-metrics samples (CPU, memory, disk, network, GPU), taken on
    one worker per node; 0 disables them."""
    validate_every: int = 0
    """Validation loss and sample GIFs every this many steps (and at the end); 0: only at the end."""
    validation_prompts: tuple[str, ...] = ("a corgi running on the beach",)
    """Fixed prompts rendered to GIFs at each validation (empty: no samples)."""
    validation_seed: int = 1234
    """Seed of validation noise, timesteps and samples."""
    validation_steps: int = 0
    """Denoising steps of validation samples; 0 uses ``sample.num_inference_steps``."""
    register: bool = True
    """Register the final motion module in the MLflow model registry (alias ``candidate``)."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "max_steps", "batch_size", "grad_accum_steps", "keep_last"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "prefetch_batches"):
            check(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        check(self.val_max_clips >= 1, "train.val_max_clips", "must be >= 1")
        check(self.shuffle_buffer >= 0, "train.shuffle_buffer", "must be >= 0")
        check(self.cache_data_max_gib >= 0, "train.cache_data_max_gib", "must be >= 0")
        check(self.validation_steps >= 0, "train.validation_steps", "must be >= 0")
        check(self.log_every >= 1, "train.log_every", "must be >= 1")
        check(
            self.health_check_interval_s is None or self.health_check_interval_s > 0,
            "train.health_check_interval_s",
            "must be > 0 (empty: Ray's default)",
        )
        check(
            self.system_metrics_interval_s >= 0,
            "train.system_metrics_interval_s",
            "must be >= 0 (0 disables)",
        )
        check(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
        for name, amount in self.worker_resources.items():
            check(
                name not in ("CPU", "GPU"),
                f"train.worker_resources.{name}",
                "set CPUs with train.cpus_per_worker and GPUs with train.use_gpu",
            )
            check(amount > 0, f"train.worker_resources.{name}", f"must be > 0, got {amount}")
        check(self.lr > 0, "train.lr", "must be > 0")
        check(
            all(0 <= b < 1 for b in self.betas),
            "train.betas",
            f"must be in [0, 1), got {self.betas}",
        )
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables)")
        check(self.zero_bucket_size >= 1, "train.zero_bucket_size", "must be >= 1")
        check(
            not (self.offload_optimizer and self.zero_stage == 0),
            "train.offload_optimizer",
            "needs train.zero_stage 2 or 3",
        )
        check(self.max_failures >= -1, "train.max_failures", "must be >= -1")
        check(bool(self.run_name), "train.run_name", "must not be empty")
        check(bool(self.storage_path), "train.storage_path", "must not be empty")
        check(
            self.lora.rank == 0 or self.stage in ("image", "motion_lora"),
            "train.lora.rank",
            f"LoRA training needs train.stage image or motion_lora (got {self.stage!r})",
        )
        check(
            not self.init_from or self.stage != "image",
            "train.init_from",
            "starts a motion module: train.stage motion or motion_lora",
        )
        if self.stage == "motion_lora":
            check(self.lora.rank >= 1, "train.lora.rank", "train.stage=motion_lora needs >= 1")
            check(
                bool(self.init_from),
                "train.init_from",
                "train.stage=motion_lora adapts a trained motion module: name it here",
            )
            check(
                bool(self.lora.name),
                "train.lora.name",
                "train.stage=motion_lora registers the LoRA by name: set one (e.g. zoom_in)",
            )

    @property
    def precision(self) -> str:
        """The resolved precision: ``bf16`` or ``fp32``."""
        if self.mixed_precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.mixed_precision
