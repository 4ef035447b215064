"""Generation requests with every setting resolved, and batched generation over them.

The one rule for defaults, shared by Ray Serve, offline batch generation and the registry's pyfunc
model: a setting a request leaves out comes from ``sample:`` (capped by the caller's limits), and
a missing seed is the caller's ``default_seed`` (Serve draws a random one and returns it in
``X-Seed``; batch callers use ``sample.seed + row index``, so a batch is reproducible). Requests
whose ``shape_key`` is equal are denoised together; ``generate_each`` keeps one request's failure
from reaching the others it was batched with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from animatediff.config import SampleConfig

SAMPLING_FIELDS = ("num_frames", "num_inference_steps", "guidance_scale", "height", "width")
"""Settings that must be equal for requests to share a batch."""


@dataclass(frozen=True)
class GenerationParams:
    """One video to generate, every setting filled in."""

    prompt: str
    negative_prompt: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    fps: int
    output_format: str = "gif"
    model: str | None = None
    """What the request named as its motion module (Serve resolves it against the registry)."""
    base: str = "default"
    """The named base (``default`` or one of ``serve.bases``)."""
    motion_loras: tuple[tuple[str, float], ...] = ()
    """``(reference, scale)`` of each MotionLoRA merged into the motion module (Serve resolves the
    references against the registry; they are part of the model, not of the batch shape)."""

    def shape_key(self) -> tuple:
        """Requests with equal keys can be denoised together in one batch."""
        return tuple(getattr(self, name) for name in SAMPLING_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def resolve(
        cls,
        fields: Mapping[str, Any],
        sample: SampleConfig,
        *,
        default_seed: int,
        caps: Mapping[str, int] | None = None,
        output_format: str = "gif",
    ) -> GenerationParams:
        """``fields`` (a request: ``prompt`` and any subset of the other fields, None meaning
        unset) completed from ``sample``. ``caps`` bound the *defaults* taken from ``sample``
        (e.g. a server's ``max_frames``); they do not validate what the request asked for."""
        caps = caps or {}

        def pick(name: str, default: Any) -> Any:
            value = fields.get(name)
            if value is not None:
                return value
            return min(default, caps[name]) if name in caps else default

        return cls(
            prompt=fields["prompt"],
            negative_prompt=pick("negative_prompt", sample.negative_prompt),
            num_frames=int(pick("num_frames", sample.num_frames)),
            num_inference_steps=int(pick("num_inference_steps", sample.num_inference_steps)),
            guidance_scale=float(pick("guidance_scale", sample.guidance_scale)),
            seed=int(pick("seed", default_seed)),
            height=int(pick("height", sample.height)),
            width=int(pick("width", sample.width)),
            fps=int(pick("fps", sample.fps)),
            output_format=pick("output_format", output_format),
            model=fields.get("model"),
            base=pick("base", "default"),
            motion_loras=tuple(
                (str(name), float(scale)) for name, scale in fields.get("motion_loras") or ()
            ),
        )


def group_by_shape(requests: Sequence[GenerationParams]) -> list[list[int]]:
    """Indices of ``requests`` grouped so that each group can be denoised as one batch."""
    groups: dict[tuple, list[int]] = {}
    for index, params in enumerate(requests):
        groups.setdefault(params.shape_key(), []).append(index)
    return list(groups.values())


@dataclass
class Generated:
    """One generated video and how it was made."""

    video: np.ndarray
    """``(frames, height, width, 3)`` uint8."""
    batch_size: int
    """How many requests were denoised together with it."""
    seconds: float
    """Wall time of its batch."""


@dataclass
class Failed:
    """A request whose generation raised; the requests batched with it are unaffected."""

    error: BaseException

    def describe(self) -> str:
        """``TypeError: <last line of the message>``."""
        lines = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {lines[-1] if lines else ''}".strip()


def generate_each(pipe: Any, requests: Sequence[GenerationParams]) -> list[Generated | Failed]:
    """``generate_all``, one result per request, where a failing request fails alone.

    A shape group is denoised as one batch; if that batch raises, its requests are generated one
    at a time so that only the request that raises gets ``Failed`` (e.g. text the tokenizer
    refuses) and its neighbours still get their videos."""
    results: list[Generated | Failed | None] = [None] * len(requests)
    for group in group_by_shape(requests):
        try:
            for index, generated in zip(group, generate_all(pipe, [requests[i] for i in group])):
                results[index] = generated
            continue
        except Exception as error:
            if len(group) == 1:
                results[group[0]] = Failed(error)
                continue
        for index in group:  # the batch failed: find the request(s) at fault
            try:
                (results[index],) = generate_all(pipe, [requests[index]])
            except Exception as error:
                results[index] = Failed(error)
    return results  # type: ignore[return-value]


def generate_all(pipe: Any, requests: Sequence[GenerationParams]) -> list[Generated]:
    """Run ``pipe`` (a ``TextToVideo``) over ``requests``, one batch per shape group; results in
    request order."""
    results: list[Generated | None] = [None] * len(requests)
    for group in group_by_shape(requests):
        first = requests[group[0]]
        start = time.perf_counter()
        videos = pipe.generate(
            [requests[i].prompt for i in group],
            [requests[i].negative_prompt for i in group],
            [requests[i].seed for i in group],
            **{name: getattr(first, name) for name in SAMPLING_FIELDS},
        )
        seconds = time.perf_counter() - start
        for index, video in zip(group, videos):
            results[index] = Generated(video, len(group), seconds)
    return results  # type: ignore[return-value]
