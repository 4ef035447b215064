"""``sample:``: text-to-video sampling defaults."""

from __future__ import annotations

from dataclasses import dataclass

from animatediff.config.errors import check


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
    context_batch_size: int = 0
    """Windows of one denoising step run through the UNet together (stacked along the batch):
    fewer, larger calls; memory grows with it. 1 runs them one after another. 0: 1 on the CPU
    (where batching measured no faster: ``benchmarks/long_video.py --compare batching``), 4 on
    a GPU."""
    decode_chunk_frames: int = 8
    """Frames decoded by the VAE at once, bounding decode memory."""
    fps: int = 8
    """Frame rate of exported videos."""
    negative_prompt: str = ""
    """Default negative prompt."""
    shared_noise: bool = False
    """Start every frame from the same noise (a baseline: with a deterministic scheduler and no
    motion module the frames stay identical)."""
    seed: int = 42
    """Default seed; the same seed and inputs give the same video. A batch of prompts without
    their own seeds uses ``seed``, ``seed + 1``, ... in order."""

    def __post_init__(self) -> None:
        for name in (
            "num_inference_steps",
            "num_frames",
            "context_frames",
            "decode_chunk_frames",
        ):
            check(getattr(self, name) >= 1, f"sample.{name}", "must be >= 1")
        check(self.context_batch_size >= 0, "sample.context_batch_size", "must be >= 0 (0: auto)")
        for name in ("height", "width"):
            value = getattr(self, name)
            check(
                value > 0 and value % 8 == 0,
                f"sample.{name}",
                f"must be a positive multiple of 8, got {value}",
            )
        check(
            0 <= self.context_overlap < self.context_frames,
            "sample.context_overlap",
            "must be >= 0 and smaller than sample.context_frames",
        )
        check(self.guidance_scale >= 1.0, "sample.guidance_scale", "must be >= 1.0")
        check(self.fps >= 1, "sample.fps", "must be >= 1")
