"""``serve:`` and ``generate:``: the Ray Serve endpoint and offline batch generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from animatediff.config.errors import check
from animatediff.config.model import BaseModelConfig


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
    max_motion_loras: int = 4
    """Most MotionLoRAs one request may merge (0 turns them off)."""

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_steps", "max_prompt_chars", "max_body_bytes"):
            check(getattr(self, name) >= 1, f"serve.limits.{name}", "must be >= 1")
        check(self.max_motion_loras >= 0, "serve.limits.max_motion_loras", "must be >= 0")
        for name in ("max_height", "max_width"):
            value = getattr(self, name)
            check(
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
        check(self.min_replicas >= 0, "serve.autoscaling.min_replicas", "must be >= 0")
        check(
            self.max_replicas >= max(1, self.min_replicas),
            "serve.autoscaling.max_replicas",
            "must be >= 1 and >= serve.autoscaling.min_replicas",
        )
        check(
            self.target_ongoing_requests > 0,
            "serve.autoscaling.target_ongoing_requests",
            "must be > 0",
        )
        for name in ("upscale_delay_s", "downscale_delay_s"):
            check(getattr(self, name) >= 0, f"serve.autoscaling.{name}", "must be >= 0")


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
        check(bool(self.host), "serve.host", "must not be empty")
        check(0 <= self.port <= 65535, "serve.port", f"must be in [0, 65535], got {self.port}")
        check(self.route_prefix.startswith("/"), "serve.route_prefix", "must start with '/'")
        check(bool(self.app_name), "serve.app_name", "must not be empty")
        check("default" not in self.bases, "serve.bases", "'default' is reserved for model.base")
        check(self.alias_ttl_s >= 0, "serve.alias_ttl_s", "must be >= 0")
        check(self.replica_cpus >= 0, "serve.replica_cpus", "must be >= 0")
        check(self.replica_gpus >= 0, "serve.replica_gpus", "must be >= 0")
        for name in ("max_batch_size", "max_models_per_replica", "max_queued_requests"):
            check(getattr(self, name) >= 1, f"serve.{name}", "must be >= 1")
        check(
            self.max_ongoing_requests >= self.max_batch_size,
            "serve.max_ongoing_requests",
            "must be >= serve.max_batch_size (else batches never fill)",
        )
        check(self.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0")
        check(
            self.auth_token is None or len(self.auth_token) >= 8,
            "serve.auth_token",
            "must be at least 8 characters (or null to disable auth)",
        )


@dataclass(frozen=True)
class MotionLoraRef:
    name: str
    """A MotionLoRA registered for the motion model (``zoom_in``, ``zoom_in@champion``,
    ``zoom_in/2``), a ``models:/`` URI, or a MotionLoRA file or directory in either format."""
    scale: float = 1.0
    """Multiplier of its update (``W += scale * up @ down``); negative reverses the motion."""

    def __post_init__(self) -> None:
        check(bool(self.name), "generate.motion_loras.name", "must not be empty")


@dataclass(frozen=True)
class GenerateConfig:
    prompts: str = "configs/prompts.txt"
    """Prompts file: one prompt per line, or JSON lines with ``prompt`` and optional
    ``negative_prompt``, ``seed``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``."""
    model: str = ""
    """Motion module: an alias or version number of ``serve.model_name``, a ``models:/`` URI, or a
    checkpoint in any format ``animatediff.checkpoints.load_any`` reads; empty:
    ``mlflow.champion_alias``."""
    motion_loras: tuple[MotionLoraRef, ...] = ()
    """MotionLoRAs merged into the motion module for the whole run (pinned on the driver)."""
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
        check(bool(self.prompts), "generate.prompts", "must not be empty")
        for name in ("num_workers", "batch_size"):
            check(getattr(self, name) >= 1, f"generate.{name}", "must be >= 1")
        check(self.worker_cpus >= 0, "generate.worker_cpus", "must be >= 0")
        check(self.worker_gpus >= 0, "generate.worker_gpus", "must be >= 0")
