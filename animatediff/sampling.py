"""Text-to-video sampling with a motion-module-inflated Stable Diffusion UNet.

    t2v = TextToVideo(cfg)                           # loads the base, inflates it, fresh modules
    t2v = TextToVideo(cfg, motion_modules)           # trained modules
    t2v = TextToVideo(cfg, base=components, unet=video_unet)  # reuse loaded models (serve, train)
    frames = t2v("a corgi running on the beach", seed=1)      # (frames, height, width, 3) uint8

Each denoising step runs the UNet on sliding context windows over the frame axis (``context_frames``
long, ``context_overlap`` shared between neighbours) and blends the overlapping predictions with
weights that taper at window edges. Up to ``sample.context_batch_size`` windows go through the UNet
in one call, stacked along the batch axis (the same result as one call per window). Cost and memory grow linearly with the number of frames instead
of quadratically (the temporal attention is quadratic in its sequence length), and clips longer
than the motion module's position encoding become possible. With ``num_frames <= context_frames``
there is a single window and the UNet sees the whole clip, exactly as without windowing.
Latents are ``(batch, channels, frames, height/8, width/8)`` throughout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from animatediff.base_model import load_base_model, tokenize
from animatediff.config import Config, DiffusionConfig

# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: float
) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``: scale 1 is the conditional prediction, larger
    values push further from the unconditional one. Any shape, both the same."""
    return uncond + scale * (cond - uncond)


def context_windows(num_frames: int, window: int, overlap: int) -> list[list[int]]:
    """Frame indices of the sliding windows covering ``range(num_frames)``.

    Windows are ``window`` long and start every ``window - overlap`` frames; the last one is moved
    back to end at the last frame so every window has the full training length (it may then
    overlap its neighbour by more than ``overlap``). One window when ``num_frames <= window``."""
    if num_frames < 1:
        raise ValueError(f"num_frames: must be >= 1, got {num_frames}")
    if window < 1:
        raise ValueError(f"sample.context_frames: must be >= 1, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"sample.context_overlap: must be in [0, {window}), got {overlap}")
    if num_frames <= window:
        return [list(range(num_frames))]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    return [list(range(start, start + window)) for start in starts]


def window_weights(length: int, overlap: int) -> torch.Tensor:
    """Blend weights ``(length,)`` float32: 1 in the middle, a linear ramp over ``overlap`` frames
    at both edges (never 0, so a frame seen by one window only keeps its prediction)."""
    index = torch.arange(length, dtype=torch.float32)
    ramp = torch.minimum(index + 1, length - index) / (overlap + 1)
    return ramp.clamp(max=1.0)


def blend_windows(
    predictions: Iterable[torch.Tensor],
    windows: Sequence[Sequence[int]],
    num_frames: int,
    overlap: int,
) -> torch.Tensor:
    """Weighted average of per-window predictions ``(batch, channels, len(window), h, w)`` into
    ``(batch, channels, num_frames, h, w)``. A single window covering all frames is returned as is.

    ``predictions`` may be a generator: each window's output is folded in as soon as it exists,
    so memory holds one window's prediction and the running sums, whatever the clip length."""
    predictions = iter(predictions)
    if len(windows) == 1 and list(windows[0]) == list(range(num_frames)):
        single = next(predictions)
        if next(predictions, None) is not None:
            raise ValueError("more predictions than windows")
        return single
    total = weight_sum = None
    count = 0
    for prediction, frames in zip(predictions, windows):
        if total is None:
            shape = (prediction.shape[0], prediction.shape[1], num_frames, *prediction.shape[3:])
            total = torch.zeros(shape, dtype=torch.float32, device=prediction.device)
            weight_sum = torch.zeros(num_frames, dtype=torch.float32, device=prediction.device)
            dtype = prediction.dtype
        index = torch.as_tensor(list(frames), device=total.device)
        weights = window_weights(len(frames), overlap).to(total.device)
        total.index_add_(2, index, prediction.float() * weights.view(1, 1, -1, 1, 1))
        weight_sum.index_add_(0, index, weights)
        count += 1
    if count != len(windows) or next(predictions, None) is not None:
        raise ValueError(f"need one prediction per window ({len(windows)})")
    if bool((weight_sum == 0).any()):
        missing = torch.nonzero(weight_sum == 0).flatten().tolist()
        raise ValueError(f"frames {missing} are not covered by any context window")
    return (total / weight_sum.view(1, 1, -1, 1, 1)).to(dtype)


def iter_decoded(vae: Any, latents: torch.Tensor, chunk_frames: int) -> Iterator[torch.Tensor]:
    """VAE-decode ``(batch, channels, frames, h, w)`` latents (already times the scaling factor)
    ``chunk_frames`` images at a time, yielding ``(n, height, width, 3)`` float32 in [0, 1] for
    consecutive images in ``(batch, frames)`` order: the decoder's full-resolution activations
    dominate decode memory, so the chunk size bounds them."""
    if chunk_frames < 1:
        raise ValueError(f"sample.decode_chunk_frames: must be >= 1, got {chunk_frames}")
    batch, channels, frames, height, width = latents.shape
    images = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    vae_dtype = next(vae.parameters()).dtype
    for start in range(0, images.shape[0], chunk_frames):
        chunk = (images[start : start + chunk_frames] / vae.config.scaling_factor).to(vae_dtype)
        pixels = (vae.decode(chunk).sample.float() / 2 + 0.5).clamp(0, 1)
        yield pixels.permute(0, 2, 3, 1)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(..., 3)`` floats in [0, 1] -> uint8 numpy."""
    return (video * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def decode_latents(vae: Any, latents: torch.Tensor, chunk_frames: int) -> np.ndarray:
    """``(batch, channels, frames, h, w)`` latents -> ``(batch, frames, height, width, 3)`` uint8.

    Each chunk is quantised as soon as it is decoded, so full-resolution floats never exist for
    the whole clip (at 512x512 they would be 3 MiB per frame, four times the uint8 result)."""
    batch, frames = latents.shape[0], latents.shape[2]
    video: np.ndarray | None = None
    position = 0
    for pixels in iter_decoded(vae, latents, chunk_frames):
        if video is None:
            video = np.empty((batch * frames, *pixels.shape[1:]), dtype=np.uint8)
        video[position : position + pixels.shape[0]] = to_uint8(pixels)
        position += pixels.shape[0]
    return video.reshape(batch, frames, *video.shape[1:])


def build_scheduler(name: str, scheduler_config: dict[str, Any], diffusion: DiffusionConfig) -> Any:
    """A diffusers scheduler by class name, from the base's scheduler config.

    The noise schedule and prediction type come from ``model.diffusion``: the motion module is
    trained on that schedule (AnimateDiff trains and samples with ``linear`` betas although SD 1.5
    ships ``scaled_linear``), so sampling must use it too. Other settings (``steps_offset``,
    ``set_alpha_to_one``, ``clip_sample``...) stay the base's."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"sample.scheduler: {name!r} is not a diffusers scheduler class")
    return cls.from_config(
        scheduler_config,
        num_train_timesteps=diffusion.num_train_timesteps,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
        beta_schedule=diffusion.beta_schedule,
        prediction_type=diffusion.prediction_type,
    )


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class _Batch:
    """One ``generate`` call's prompts and resolved sampling settings."""

    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    num_frames: int
    steps: int
    scale: float
    height: int
    width: int


class TextToVideo:
    """Text-to-video sampler over a frozen base and a ``VideoUNet``.

    ``base`` (``BaseComponents``) and ``unet`` (a ``VideoUNet``) may be passed in to reuse models
    that are already loaded; otherwise the base is loaded from ``cfg.model.base`` and inflated with
    ``motion_modules`` (fresh ones, which are the identity, when None)."""

    def __init__(
        self,
        cfg: Config,
        motion_modules: torch.nn.Module | None = None,
        *,
        base: Any = None,
        unet: torch.nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if unet is not None and motion_modules is not None:
            raise ValueError("pass motion_modules or an inflated unet, not both")
        if cfg.sample.context_frames > cfg.model.motion.max_frames:
            raise ValueError(
                f"sample.context_frames: {cfg.sample.context_frames} exceeds the motion module's "
                f"position encoding (model.motion.max_frames={cfg.model.motion.max_frames})"
            )
        if base is None:
            base = load_base_model(cfg.model.base, dtype=dtype)
        if unet is None:
            from animatediff.unet import VideoUNet

            unet = VideoUNet.from_unet2d(base.unet, cfg.model.motion, motion_modules).eval()
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype
        # diffusers warns on every dtype cast, even a no-op one: cast only when needed.
        self.unet = unet.to(self.device)
        if next(self.unet.parameters()).dtype != dtype:
            self.unet.to(dtype=dtype)
        self.vae = base.vae.to(self.device).eval()
        self.text_encoder = base.text_encoder.to(self.device).eval()
        self.tokenizer = base.tokenizer
        self.scheduler_config = dict(base.scheduler_config)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels

    # -- pieces ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP last hidden states ``(len(prompts), tokens, dim)``, padded/truncated to 77."""
        hidden = self.text_encoder(tokenize(self.tokenizer, list(prompts)).to(self.device))[0]
        return hidden.to(self.dtype)

    def scheduler(self, name: str | None = None) -> Any:
        """A fresh scheduler (they are stateful, so one per generation)."""
        return build_scheduler(
            name or self.cfg.sample.scheduler, self.scheduler_config, self.cfg.model.diffusion
        )

    def initial_latents(
        self, seeds: Sequence[int], num_frames: int, height: int, width: int
    ) -> torch.Tensor:
        """Unit Gaussian ``(len(seeds), channels, frames, height/8, width/8)`` float32, one CPU
        generator per sample: a seed gives the same video on any device and in any batch. With
        ``sample.shared_noise`` every frame starts from the same noise."""
        shared = self.cfg.sample.shared_noise
        shape = (
            1,
            self.latent_channels,
            1 if shared else num_frames,
            height // self.vae_scale,
            width // self.vae_scale,
        )
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.cat(noise).expand(-1, -1, num_frames, -1, -1).contiguous().to(self.device)

    @torch.no_grad()
    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The guided model output for ``latents`` ``(batch, channels, frames, h, w)`` (already
        scaled by the scheduler). ``text`` is ``(2 * batch, tokens, dim)`` [uncond; cond] when
        guiding, else ``(batch, tokens, dim)``."""
        guided = guidance_scale != 1.0
        model_input = torch.cat([latents, latents]) if guided else latents
        num_frames = latents.shape[2]
        sample = self.cfg.sample
        windows = context_windows(num_frames, sample.context_frames, sample.context_overlap)
        predictions = self._window_predictions(model_input, timestep, text, windows)
        output = blend_windows(predictions, windows, num_frames, sample.context_overlap)
        if not guided:
            return output
        uncond, cond = output.chunk(2)
        return classifier_free_guidance(uncond, cond, guidance_scale)

    def _window_predictions(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        windows: Sequence[Sequence[int]],
    ) -> Iterator[torch.Tensor]:
        """The UNet's float32 output for each window, in order, ``sample.context_batch_size``
        windows per UNet call: ``(batch, C, window, h, w)`` inputs stacked window-major into
        ``(windows * batch, C, window, h, w)``, the text repeated to match. Every window has the
        same length (``context_windows``), and each sample of a batch is computed on its own, so
        the outputs are those of one call per window."""
        size = self.cfg.sample.context_batch_size or (4 if self.device.type == "cuda" else 1)
        for start in range(0, len(windows), size):
            chunk = windows[start : start + size]
            stacked = torch.cat([model_input[:, :, list(frames)] for frames in chunk])
            context = text.repeat(len(chunk), 1, 1)
            output = self.unet(stacked.to(self.dtype), timestep, context).float()
            yield from output.chunk(len(chunk))

    # -- entry points ---------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        scheduler: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """One video ``(frames, height, width, 3)`` uint8; unset arguments come from ``cfg.sample``."""
        return self.generate(
            [prompt],
            None if negative_prompt is None else [negative_prompt],
            None if seed is None else [seed],
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            scheduler=scheduler,
            progress=progress,
        )[0]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
        *,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        scheduler: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[np.ndarray]:
        """A batch of videos sharing the sampling settings, one per prompt (each with its own
        negative prompt and seed): ``[(frames, height, width, 3) uint8, ...]``."""
        sample = self.cfg.sample
        num_frames = num_frames or sample.num_frames
        steps = num_inference_steps or sample.num_inference_steps
        scale = sample.guidance_scale if guidance_scale is None else float(guidance_scale)
        height, width = height or sample.height, width or sample.width
        prompts = list(prompts)
        negatives = list(negative_prompts) if negative_prompts is not None else None
        negatives = negatives or [sample.negative_prompt] * len(prompts)
        seeds = list(seeds) if seeds is not None else [sample.seed] * len(prompts)
        batch = _Batch(prompts, negatives, seeds, num_frames, steps, scale, height, width)
        self._validate(batch)

        # A trainer may hand in its own UNet to sample validation videos: restore its mode.
        was_training = self.unet.training
        self.unet.eval()
        try:
            latents = self._denoise(batch, scheduler, progress)
        finally:
            self.unet.train(was_training)
        return list(decode_latents(self.vae, latents, sample.decode_chunk_frames))

    def _denoise(
        self,
        batch: _Batch,
        scheduler: str | None,
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor:
        """The denoising loop: final latents ``(batch, channels, frames, h, w)`` float32."""
        text = self.encode_prompts(batch.prompts)
        if batch.scale != 1.0:
            text = torch.cat([self.encode_prompts(batch.negatives), text])
        noise_scheduler = self.scheduler(scheduler)
        noise_scheduler.set_timesteps(batch.steps, device=self.device)
        latents = self.initial_latents(batch.seeds, batch.num_frames, batch.height, batch.width)
        latents = latents * noise_scheduler.init_noise_sigma
        # Stochastic schedulers draw fresh noise each step: per-sample generators keep it seeded.
        generators = [torch.Generator().manual_seed(s + 1) for s in batch.seeds]
        takes_generator = "generator" in inspect.signature(noise_scheduler.step).parameters
        step_kwargs = {"generator": generators} if takes_generator else {}
        for index, timestep in enumerate(noise_scheduler.timesteps):
            model_input = noise_scheduler.scale_model_input(latents, timestep)
            output = self.predict_noise(model_input, timestep, text, batch.scale)
            latents = noise_scheduler.step(
                output, timestep, latents, return_dict=False, **step_kwargs
            )[0]
            if progress is not None:
                progress(index + 1, len(noise_scheduler.timesteps))
        return latents

    def _validate(self, batch: _Batch) -> None:
        prompts, negatives, seeds = batch.prompts, batch.negatives, batch.seeds
        num_frames, steps, scale = batch.num_frames, batch.steps, batch.scale
        height, width = batch.height, batch.width
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts: need at least one string")
        if len(negatives) != len(prompts) or len(seeds) != len(prompts):
            raise ValueError(
                f"{len(prompts)} prompts need as many negative prompts ({len(negatives)}) "
                f"and seeds ({len(seeds)})"
            )
        if num_frames < 1 or steps < 1:
            raise ValueError(
                f"num_frames ({num_frames}) and num_inference_steps ({steps}) must be >= 1"
            )
        if scale < 1.0:
            raise ValueError(f"guidance_scale: must be >= 1.0, got {scale}")
        for name, value in (("height", height), ("width", width)):
            if value < self.vae_scale or value % self.vae_scale:
                raise ValueError(
                    f"{name}: must be a positive multiple of {self.vae_scale}, got {value}"
                )
