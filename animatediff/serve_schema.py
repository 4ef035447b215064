"""The HTTP contract of the Serve app: request schema, validation against limits, response headers.

Pure functions, no Ray and no I/O, so the rules are tested without a server:

    params = parse_generate_body(body_bytes, cfg)   # raises RequestError(field, reason)

Every rejection names the offending field and the reason; the app turns ``RequestError`` into a
422 whose body looks like FastAPI's own validation errors (``detail[].loc``/``msg``) plus a flat
``error`` string that a person can read.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from animatediff.config import Config

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MAX_FPS = 60


class RequestError(ValueError):
    """A request is invalid: ``field`` names the JSON field, ``reason`` says why."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "error": f"{self.field}: {self.reason}",
            "detail": [{"loc": ["body", self.field], "field": self.field, "msg": self.reason}],
        }


class GenerateRequest(BaseModel):
    """``POST /v1/generate`` body. Omitted fields take the server's ``sample:`` defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows; must not be blank.")
    negative_prompt: str = Field("", description="What to steer away from.")
    num_frames: int | None = Field(None, description="Frames to generate.")
    num_inference_steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance (>= 1).")
    seed: int | None = Field(
        None,
        description="Same seed and inputs give the same video; "
        "omitted: a random seed, returned in the X-Seed header.",
    )
    height: int | None = Field(None, description="Pixels, a multiple of 8.")
    width: int | None = Field(None, description="Pixels, a multiple of 8.")
    fps: int | None = Field(None, description="Frame rate of the returned video.")
    output_format: Literal["gif", "mp4", "webp"] = Field("gif", description="Container.")
    model: str | None = Field(
        None,
        description="Motion module: a registry alias (e.g. 'champion'), a version ('3' or 'v3'); "
        "omitted: the server's default alias.",
    )
    base: str = Field(
        "default",
        description="Base image model: 'default' or a configured "
        "personalized base (see GET /v1/models).",
    )


@dataclass(frozen=True)
class GenerationParams:
    """A validated request with every default filled in; what a generator replica receives."""

    prompt: str
    negative_prompt: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    fps: int
    output_format: str
    model: str | None
    base: str

    def shape_key(self) -> tuple:
        """Requests with equal keys can be denoised together in one batch."""
        return (
            self.num_frames,
            self.num_inference_steps,
            self.guidance_scale,
            self.height,
            self.width,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pydantic_error(error: ValidationError) -> RequestError:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return RequestError(field, first["msg"])


def _in_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(field, f"must be between {low} and {high}, got {value}")


def check_params(request: GenerateRequest, cfg: Config) -> GenerationParams:
    """Fill defaults from ``cfg.sample`` and check ``cfg.serve.limits``; raise ``RequestError``."""
    limits, sample = cfg.serve.limits, cfg.sample
    if not request.prompt.strip():
        raise RequestError("prompt", "must not be empty")
    for field in ("prompt", "negative_prompt"):
        length = len(getattr(request, field))
        if length > limits.max_prompt_chars:
            raise RequestError(
                field, f"is {length} characters, the limit is {limits.max_prompt_chars}"
            )

    def pick(name: str, default: Any) -> Any:
        value = getattr(request, name)
        return default if value is None else value

    num_frames = pick("num_frames", min(sample.num_frames, limits.max_frames))
    steps = pick("num_inference_steps", min(sample.num_inference_steps, limits.max_steps))
    guidance = pick("guidance_scale", sample.guidance_scale)
    height = pick("height", min(sample.height, limits.max_height))
    width = pick("width", min(sample.width, limits.max_width))
    fps = pick("fps", sample.fps)
    seed = pick("seed", None)
    _in_range("num_frames", num_frames, 1, limits.max_frames)
    _in_range("num_inference_steps", steps, 1, limits.max_steps)
    _in_range("guidance_scale", guidance, 1.0, MAX_GUIDANCE)
    _in_range("fps", fps, 1, MAX_FPS)
    for field, value, high in (
        ("height", height, limits.max_height),
        ("width", width, limits.max_width),
    ):
        if value % 8:
            raise RequestError(field, f"must be a multiple of 8, got {value}")
        _in_range(field, value, 8, high)
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    _in_range("seed", seed, 0, MAX_SEED)
    known_bases = ("default", *cfg.serve.bases)
    if request.base not in known_bases:
        raise RequestError(
            "base", f"unknown base {request.base!r}; known: {', '.join(known_bases)}"
        )
    model = request.model.strip() if request.model else None
    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_frames=int(num_frames),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        seed=int(seed),
        height=int(height),
        width=int(width),
        fps=int(fps),
        output_format=request.output_format,
        model=model or None,
        base=request.base,
    )


def parse_generate_body(body: bytes, cfg: Config) -> GenerationParams:
    """Size check, JSON parse, schema and limits, in that order: the first problem is reported."""
    limit = cfg.serve.limits.max_body_bytes
    if len(body) > limit:
        raise RequestError("body", f"is {len(body)} bytes, the limit is {limit}")
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError("body", f"is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise RequestError("body", "must be a JSON object")
    try:
        request = GenerateRequest.model_validate(data)
    except ValidationError as error:
        raise _pydantic_error(error) from error
    return check_params(request, cfg)


def response_headers(
    params: GenerationParams, model_name: str, version: str, timings_ms: dict[str, float]
) -> dict[str, str]:
    """Seed, model identity and a W3C ``Server-Timing`` breakdown of where the time went."""
    headers = {
        "X-Seed": str(params.seed),
        "X-Model-Name": model_name,
        "X-Model-Version": version,
        "X-Base": params.base,
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in timings_ms.items()),
    }
    for key, value in timings_ms.items():
        headers[f"X-Timing-{key.replace('_', '-').title()}-Ms"] = f"{value:.1f}"
    return headers
