"""Typed, frozen configuration for every job, loaded from YAML presets with dotted overrides.

    cfg = load_config("configs/tiny.yaml", ["train.max_steps=20", "model.motion.num_layers=2"])

Each section is a frozen dataclass; every field carries a docstring (the string literal under it).
Validation lives in ``__post_init__`` and raises ``ConfigError`` naming the option, e.g.
``model.motion.num_heads: must divide ...``. Unknown keys are errors, never silently ignored.
Sections owned by later stages (data, train, serve, ...) are added to ``Config`` below in the same
style.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the option."""


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{option}: {message}")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


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
        _check(bool(self.pretrained), "model.base.pretrained", "must not be empty")


@dataclass(frozen=True)
class MotionModuleConfig:
    num_layers: int = 1
    """Transformer blocks per motion module (the released v1/v2/v3 modules use 1)."""
    num_heads: int = 8
    """Attention heads of the temporal self-attention."""
    attention_blocks: int = 2
    """Temporal self-attention layers per transformer block (the original uses 2)."""
    max_frames: int = 32
    """Length of the sinusoidal position encoding (v1: 24, v2/v3: 32)."""
    norm_groups: int = 32
    """GroupNorm groups at the module input."""
    norm_eps: float = 1e-6
    """GroupNorm epsilon."""
    cross_frame_norm: bool = False
    """False: GroupNorm per frame, as the original AnimateDiff. True: statistics span all frames of
    a clip, as diffusers' ``MotionAdapter`` (needed for bit-parity with diffusers)."""
    mid_block: bool = True
    """Insert a motion module in the UNet mid block (v2 layout); False gives the v1/v3 layout."""
    ff_mult: int = 4
    """GEGLU feed-forward width multiplier."""
    zero_init_out: bool = True
    """Zero-initialise ``proj_out`` (weight and bias) so a fresh module is the identity."""
    gradient_checkpointing: bool = False
    """Recompute motion-module and UNet activations in the backward pass to save memory."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "attention_blocks", "max_frames", "norm_groups"):
            _check(getattr(self, name) >= 1, f"model.motion.{name}", "must be >= 1")
        _check(self.ff_mult >= 1, "model.motion.ff_mult", "must be >= 1")
        _check(self.norm_eps > 0, "model.motion.norm_eps", "must be > 0")


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
        _check(self.num_train_timesteps >= 1, "model.diffusion.num_train_timesteps", "must be >= 1")
        _check(
            0 < self.beta_start < self.beta_end < 1,
            "model.diffusion.beta_start",
            f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}",
        )
        _check(
            self.beta_schedule in ("linear", "scaled_linear"),
            "model.diffusion.beta_schedule",
            f"must be 'linear' or 'scaled_linear', got {self.beta_schedule!r}",
        )
        _check(
            self.prediction_type in ("epsilon", "v_prediction"),
            "model.diffusion.prediction_type",
            f"must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}",
        )
        _check(
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


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    scheduler: str = "DDIMScheduler"
    """A diffusers scheduler class name (``DDIMScheduler``, ``EulerDiscreteScheduler``, ...)."""
    num_inference_steps: int = 25
    """Denoising steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale; 1.0 disables the unconditional pass."""
    num_frames: int = 16
    """Frames to generate; longer than ``context_frames`` uses sliding windows."""
    height: int = 256
    """Output height in pixels (multiple of 8)."""
    width: int = 256
    """Output width in pixels (multiple of 8)."""
    context_frames: int = 16
    """Sliding-window length over the frame axis (the training length)."""
    context_overlap: int = 4
    """Frames shared by neighbouring windows, blended with weights."""
    decode_chunk_frames: int = 8
    """Frames decoded by the VAE at once, bounding decode memory."""
    fps: int = 8
    """Frame rate of exported videos."""
    negative_prompt: str = ""
    """Default negative prompt."""
    seed: int = 42
    """Default seed; the same seed and inputs give the same video."""

    def __post_init__(self) -> None:
        for name in ("num_inference_steps", "num_frames", "context_frames", "decode_chunk_frames"):
            _check(getattr(self, name) >= 1, f"sample.{name}", "must be >= 1")
        for name in ("height", "width"):
            value = getattr(self, name)
            _check(
                value > 0 and value % 8 == 0,
                f"sample.{name}",
                f"must be a positive multiple of 8, got {value}",
            )
        _check(
            0 <= self.context_overlap < self.context_frames,
            "sample.context_overlap",
            "must be >= 0 and smaller than sample.context_frames",
        )
        _check(self.guidance_scale >= 1.0, "sample.guidance_scale", "must be >= 1.0")
        _check(self.fps >= 1, "sample.fps", "must be >= 1")


# ---------------------------------------------------------------------------------------------
# Training and experiment tracking
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    data_uri: str = ""
    """Latent shards (Parquet directory, local path or ``s3://``) written by the data pipeline."""
    val_data_uri: str | None = None
    """Shards for the validation loss; None reuses ``train.data_uri``."""
    val_max_clips: int = 8
    """Clips of the validation set used for the validation loss (fixed noise, fixed timesteps)."""
    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); False trains on CPU with the gloo backend."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per worker; keep some free for Ray Data on small machines."""
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
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 2 (shard optimizer state and gradients) or
    3 (also parameters)."""
    offload_optimizer: bool = False
    """ZeRO optimizer state offload to CPU memory (stage 2/3; compiles DeepSpeed's CPUAdam)."""
    zero_bucket_size: int = 500_000_000
    """Elements per ZeRO communication bucket (``reduce_bucket_size``, ``allgather_bucket_size``;
    stage 3's prefetch, live-parameter and reuse-distance limits scale with it as in DeepSpeed's
    defaults). On a GPU gradient buckets are allocated at this size: smaller ones lower peak
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
    fault_injection_step: int | None = None
    """Testing only: once this many steps are done, the last rank kills its own process (SIGKILL),
    on the first attempt only (single-node clusters), exercising ``train.max_failures``."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "max_steps", "batch_size", "grad_accum_steps", "keep_last"):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "prefetch_batches"):
            _check(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _check(self.val_max_clips >= 1, "train.val_max_clips", "must be >= 1")
        _check(self.shuffle_buffer >= 0, "train.shuffle_buffer", "must be >= 0")
        _check(self.cache_data_max_gib >= 0, "train.cache_data_max_gib", "must be >= 0")
        _check(self.validation_steps >= 0, "train.validation_steps", "must be >= 0")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(
            all(0 <= b < 1 for b in self.betas),
            "train.betas",
            f"must be in [0, 1), got {self.betas}",
        )
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables)")
        _check(
            self.zero_stage in (0, 2, 3),
            "train.zero_stage",
            f"must be 0, 2 or 3, got {self.zero_stage}",
        )
        _check(self.zero_bucket_size >= 1, "train.zero_bucket_size", "must be >= 1")
        _check(
            not (self.offload_optimizer and self.zero_stage == 0),
            "train.offload_optimizer",
            "needs train.zero_stage 2 or 3",
        )
        _check(
            self.lr_schedule in ("constant", "cosine"),
            "train.lr_schedule",
            f"must be 'constant' or 'cosine', got {self.lr_schedule!r}",
        )
        _check(
            self.mixed_precision in ("auto", "bf16", "fp32"),
            "train.mixed_precision",
            f"must be 'auto', 'bf16' or 'fp32', got {self.mixed_precision!r}",
        )
        _check(self.max_failures >= -1, "train.max_failures", "must be >= -1")
        _check(bool(self.run_name), "train.run_name", "must not be empty")
        _check(bool(self.storage_path), "train.storage_path", "must not be empty")
        _check(
            self.fault_injection_step is None or self.fault_injection_step >= 1,
            "train.fault_injection_step",
            "must be >= 1",
        )

    @property
    def precision(self) -> str:
        """The resolved precision: ``bf16`` or ``fp32``."""
        if self.mixed_precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.mixed_precision


@dataclass(frozen=True)
class MlflowConfig:
    enabled: bool = True
    """Track runs and register models in MLflow (rank 0 only)."""
    tracking_uri: str = ""
    """Tracking store; empty: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db``."""
    artifact_location: str = ""
    """Artifact root of a new experiment; empty: ``mlartifacts`` next to a SQLite store, the
    server's default with a tracking server."""
    experiment: str = "animatediff-motion"
    """Experiment name (created when missing)."""
    registered_model: str = "animatediff-motion-module"
    """Registry name of the trained motion module; new versions get alias ``candidate``."""
    candidate_alias: str = "candidate"
    """Alias set on every newly registered version."""
    champion_alias: str = "champion"
    """Alias that ``jobs.promote`` moves to a version that passes the check."""

    def __post_init__(self) -> None:
        for name in ("experiment", "registered_model", "candidate_alias", "champion_alias"):
            _check(bool(getattr(self, name)), f"mlflow.{name}", "must not be empty")
        _check(
            self.candidate_alias != self.champion_alias,
            "mlflow.champion_alias",
            "must differ from mlflow.candidate_alias",
        )


# ---------------------------------------------------------------------------------------------
# Serving and offline generation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeLimitsConfig:
    max_frames: int = 32
    """Largest ``num_frames`` a request may ask for."""
    max_steps: int = 50
    """Largest ``num_inference_steps`` a request may ask for."""
    max_height: int = 512
    """Largest ``height`` in pixels (requests must also use a multiple of 8)."""
    max_width: int = 512
    """Largest ``width`` in pixels (requests must also use a multiple of 8)."""
    max_prompt_chars: int = 1000
    """Longest prompt or negative prompt, in characters."""
    max_body_bytes: int = 16384
    """Largest JSON request body; bigger bodies are refused before parsing."""

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_steps", "max_prompt_chars", "max_body_bytes"):
            _check(getattr(self, name) >= 1, f"serve.limits.{name}", "must be >= 1")
        for name in ("max_height", "max_width"):
            value = getattr(self, name)
            _check(
                value >= 8 and value % 8 == 0,
                f"serve.limits.{name}",
                f"must be a positive multiple of 8, got {value}",
            )


@dataclass(frozen=True)
class ServeAutoscalingConfig:
    min_replicas: int = 1
    """Fewest generator replicas (min == max: a fixed pool)."""
    max_replicas: int = 1
    """Most generator replicas."""
    target_ongoing_requests: float = 2.0
    """Ongoing requests per replica the autoscaler aims for."""
    upscale_delay_s: float = 30.0
    """How long load must stay high before a replica is added."""
    downscale_delay_s: float = 600.0
    """How long load must stay low before a replica is removed (model loads are costly)."""

    def __post_init__(self) -> None:
        _check(self.min_replicas >= 0, "serve.autoscaling.min_replicas", "must be >= 0")
        _check(
            self.max_replicas >= max(1, self.min_replicas),
            "serve.autoscaling.max_replicas",
            "must be >= 1 and >= serve.autoscaling.min_replicas",
        )
        _check(
            self.target_ongoing_requests > 0,
            "serve.autoscaling.target_ongoing_requests",
            "must be > 0",
        )
        for name in ("upscale_delay_s", "downscale_delay_s"):
            _check(getattr(self, name) >= 0, f"serve.autoscaling.{name}", "must be >= 0")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    """Interface the HTTP proxy binds; loopback unless deliberately exposed (e.g. in a pod)."""
    port: int = 8000
    """HTTP port of the Serve proxy."""
    app_name: str = "animatediff"
    """Name of the Serve application."""
    route_prefix: str = "/"
    """URL prefix of the application."""
    model_name: str = ""
    """Registered MLflow model holding the motion-module versions; empty: ``mlflow.registered_model``."""
    model_alias: str = "champion"
    """Alias served when a request names no model (``models:/<model_name>@<alias>``)."""
    alias_ttl_s: float = 5.0
    """Seconds an alias -> version lookup is cached; an alias move reaches requests after this."""
    bases: dict[str, BaseModelConfig] = field(default_factory=dict)
    """Extra personalized bases by name (DreamBooth/LoRA on the same SD 1.5); ``model.base`` is
    always available as ``default``."""
    replica_cpus: float = 1.0
    """CPUs reserved per generator replica."""
    replica_gpus: float = 0.0
    """GPUs reserved per generator replica."""
    max_ongoing_requests: int = 4
    """Requests a generator replica works on at once (at least ``max_batch_size``)."""
    max_queued_requests: int = 8
    """Requests waiting for a generator replica; beyond this the server answers 503 at once."""
    max_batch_size: int = 4
    """Compatible requests (same model and shape) generated together in one batch."""
    batch_wait_timeout_s: float = 0.02
    """How long a replica waits to fill a batch; the latency cost of batching a lone request."""
    max_models_per_replica: int = 2
    """Motion-module versions x bases a replica keeps loaded (LRU beyond this)."""
    auth_token: str | None = None
    """Bearer token required on ``/v1/*``; None turns authentication off. Pass it as an override
    from a secret (``serve.auth_token=$TOKEN``) rather than writing it into a preset."""
    limits: ServeLimitsConfig = field(default_factory=ServeLimitsConfig)
    """Bounds on request parameters; violations are 422 naming the field."""
    autoscaling: ServeAutoscalingConfig = field(default_factory=ServeAutoscalingConfig)
    """Replica count bounds of the generator deployment."""

    def __post_init__(self) -> None:
        _check(bool(self.host), "serve.host", "must not be empty")
        _check(0 <= self.port <= 65535, "serve.port", f"must be in [0, 65535], got {self.port}")
        _check(self.route_prefix.startswith("/"), "serve.route_prefix", "must start with '/'")
        for name in ("app_name", "model_alias"):
            _check(bool(getattr(self, name)), f"serve.{name}", "must not be empty")
        _check("default" not in self.bases, "serve.bases", "'default' is reserved for model.base")
        _check(self.alias_ttl_s >= 0, "serve.alias_ttl_s", "must be >= 0")
        _check(self.replica_cpus >= 0, "serve.replica_cpus", "must be >= 0")
        _check(self.replica_gpus >= 0, "serve.replica_gpus", "must be >= 0")
        for name in ("max_batch_size", "max_models_per_replica", "max_queued_requests"):
            _check(getattr(self, name) >= 1, f"serve.{name}", "must be >= 1")
        _check(
            self.max_ongoing_requests >= self.max_batch_size,
            "serve.max_ongoing_requests",
            "must be >= serve.max_batch_size (else batches never fill)",
        )
        _check(self.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0")
        _check(
            self.auth_token is None or len(self.auth_token) >= 8,
            "serve.auth_token",
            "must be at least 8 characters (or null to disable auth)",
        )


@dataclass(frozen=True)
class GenerateConfig:
    prompts: str = "configs/prompts.txt"
    """Prompts file: one prompt per line, or JSON lines with ``prompt`` and optional
    ``negative_prompt``, ``seed``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``."""
    model: str = "champion"
    """Motion module: an alias or version number of ``serve.model_name``, a ``models:/`` URI, or a
    native motion-module directory."""
    output_subdir: str = "generate"
    """Videos and ``index.jsonl`` go to ``<output_dir>/<output_subdir>``."""
    output_format: Literal["gif", "mp4", "webp"] = "gif"
    """Container of the written videos."""
    num_workers: int = 1
    """Generator actors in the Ray Data pool."""
    worker_cpus: float = 1.0
    """CPUs per generator actor."""
    worker_gpus: float = 0.0
    """GPUs per generator actor."""
    batch_size: int = 2
    """Prompts handed to an actor at once."""

    def __post_init__(self) -> None:
        _check(bool(self.prompts), "generate.prompts", "must not be empty")
        _check(bool(self.model), "generate.model", "must not be empty")
        _check(
            self.output_format in ("gif", "mp4", "webp"),
            "generate.output_format",
            f"must be gif, mp4 or webp, got {self.output_format!r}",
        )
        for name in ("num_workers", "batch_size"):
            _check(getattr(self, name) >= 1, f"generate.{name}", "must be >= 1")
        _check(self.worker_cpus >= 0, "generate.worker_cpus", "must be >= 0")
        _check(self.worker_gpus >= 0, "generate.worker_gpus", "must be >= 0")


# ---------------------------------------------------------------------------------------------
# Data preprocessing (videos -> cached latent shards)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    input: str = ""
    """Input table: a WebVid metadata CSV or a CSV/JSONL/Parquet manifest (local path or
    ``s3://``). Required by ``jobs.preprocess``."""
    format: Literal["webvid", "csv", "jsonl", "parquet"] = "webvid"
    """``webvid``: WebVid-10M CSV (id + page_dir name the file); ``csv``/``jsonl``/``parquet``: a
    generic manifest whose path column names the file relative to ``data.video_root``."""
    video_root: str = ""
    """Directory (or ``s3://`` prefix) holding the videos; empty: the input table's directory.
    Sources resolving outside it are rejected as ``unsafe_path``."""
    layout: Literal["flat", "page_dir"] = "page_dir"
    """WebVid file layout: ``flat`` = ``{root}/{videoid}{ext}`` (AnimateDiff's loader),
    ``page_dir`` = ``{root}/{page_dir}/{videoid}{ext}`` (WebVid's download script)."""
    video_ext: str = ".mp4"
    """File extension appended to WebVid video ids."""
    id_column: str = ""
    """Column with the video id; empty: ``videoid`` for WebVid, the path column for manifests."""
    caption_column: str = ""
    """Column with the caption; empty: ``name`` for WebVid, ``caption`` for manifests."""
    path_column: str = "video"
    """Manifest column with the video path (relative to ``data.video_root``; OpenVid: ``video``)."""
    page_dir_column: str = "page_dir"
    """WebVid column with the page directory (``layout: page_dir``)."""
    output: str = ""
    """Where shards go (local path or ``s3://``); empty: ``{output_dir}/latents``. Each
    fingerprint gets its own subdirectory ``fp-<hash>``."""
    s3_endpoint: str = ""
    """S3-compatible endpoint URL; empty: ``$AWS_ENDPOINT_URL`` if set, else AWS."""
    s3_region: str = ""
    """S3 region; empty: ``$AWS_DEFAULT_REGION`` if set, else ``us-east-1``."""
    num_frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Frame stride inside the sampling window ``(num_frames - 1) * stride + 1``; shorter videos
    get a smaller effective stride."""
    resolution: int = 256
    """Square clip size: short side resized to it, then centre-cropped (multiple of 8)."""
    clips_per_video: int = 1
    """Distinct windows drawn per video (fewer when the video has fewer distinct starts)."""
    flip: bool = False
    """Also store each clip horizontally flipped, as its own row with ``flipped=True``."""
    seed: int = 0
    """Seed of the window draws; the same seed and inputs give the same clips."""
    shard_size: int = 256
    """Clips per Parquet shard."""
    cache_text_embeddings: bool = False
    """Also store the frozen CLIP text encoder's embeddings and token ids of each caption."""
    encode_batch_size: int = 4
    """Clips per VAE-encode batch."""
    num_encode_actors: int = 1
    """Size of the VAE-encode actor pool (one GPU each when the cluster has GPUs)."""
    encode_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """VAE compute dtype; ``auto``: bfloat16 on GPU, float32 on CPU. Latents are stored as float16."""
    encode_num_cpus: float = 1.0
    """Logical CPUs per encode actor (also its torch thread count on CPU)."""
    decode_num_cpus: float = 1.0
    """Logical CPUs per decode task."""
    decode_threads: int = 1
    """Decoder threads per video (decord ``num_threads``)."""
    decode_rows_per_task: int = 4
    """Input rows per decode block: small blocks spread decoding over the cluster."""
    manifest_flush_shards: int = 10
    """Rewrite ``manifest.json`` after this many committed shards (and at the end); shards not yet
    listed are adopted on the next run."""
    log_mlflow: bool = False
    """Log counts, throughput and the fingerprint to MLflow (``mlflow.*`` settings)."""

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "clips_per_video", "shard_size", "encode_batch_size"):
            _check(getattr(self, name) >= 1, f"data.{name}", "must be >= 1")
        for name in ("num_encode_actors", "decode_threads", "decode_rows_per_task"):
            _check(getattr(self, name) >= 1, f"data.{name}", "must be >= 1")
        _check(self.manifest_flush_shards >= 1, "data.manifest_flush_shards", "must be >= 1")
        _check(
            self.resolution > 0 and self.resolution % 8 == 0,
            "data.resolution",
            f"must be a positive multiple of 8, got {self.resolution}",
        )
        _check(self.clips_per_video <= 32, "data.clips_per_video", "must be <= 32")
        for name in ("encode_num_cpus", "decode_num_cpus"):
            _check(getattr(self, name) > 0, f"data.{name}", "must be > 0")
        _check(
            self.format in ("webvid", "csv", "jsonl", "parquet"),
            "data.format",
            f"must be webvid, csv, jsonl or parquet, got {self.format!r}",
        )
        _check(
            self.layout in ("flat", "page_dir"),
            "data.layout",
            f"must be 'flat' or 'page_dir', got {self.layout!r}",
        )
        _check(
            self.encode_dtype in ("auto", "float32", "bfloat16", "float16"),
            "data.encode_dtype",
            f"must be auto, float32, bfloat16 or float16, got {self.encode_dtype!r}",
        )
        _check(self.video_ext.startswith("."), "data.video_ext", "must start with '.'")
        _check(bool(self.path_column), "data.path_column", "must not be empty")


# ---------------------------------------------------------------------------------------------
# The root config. Later stages add their sections here (data, train, serve, mlflow, ray).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model, motion module and diffusion objective."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Text-to-video sampling defaults."""
    output_dir: str = "outputs"
    """Where jobs write their results (local path or ``s3://``)."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The Ray Serve endpoint (``jobs.serve``) and its limits."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Offline batch generation from a prompts file (``jobs.generate``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Motion-module training on Ray Train + DeepSpeed (``python -m jobs.train``)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Experiment tracking and the model registry."""
    data: DataConfig = field(default_factory=DataConfig)
    """Video preprocessing into cached latent shards (``python -m jobs.preprocess``)."""


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> nested dataclasses, dotted overrides, and back to plain dicts.
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, option: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; raise ``ConfigError`` naming ``option``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{option}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{option}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{option}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{option}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{option}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{option}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{option}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{option}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{option}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=option)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{option}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{option}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{option}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{option}: expected a string, got {value!r}")
    raise ConfigError(f"{option}: unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys raise ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown option (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        option = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], option)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from error


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def flatten(config: Any) -> dict[str, Any]:
    """``{"model.motion.num_layers": 1, ...}``: for MLflow params and printing."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{prefix}.{key}" if prefix else key)
        else:
            flat[prefix] = value

    walk(to_dict(config), "")
    return flat


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested mapping; values are parsed as YAML scalars."""
    data = _deep_copy(data)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"{override}: overrides look like key.sub=value")
        key, raw = override.split("=", 1)
        key = key.strip().removeprefix("--")
        if not key:
            raise ConfigError(f"{override}: empty option name")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), cls: type[T] = Config
) -> T:
    """Load a YAML preset (or the defaults when ``path`` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def parse_cli(argv: Sequence[str] | None = None, description: str = "") -> tuple[Config, list[str]]:
    """Shared CLI of ``python -m jobs.<name> --config configs/x.yaml key.sub=value ...``.

    Returns the loaded config and the raw overrides (for logging)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML preset under configs/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), list(args.overrides)
