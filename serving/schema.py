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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from animatediff.config import Config
from animatediff.generation import GenerationParams

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MAX_FPS = 60
MAX_LORA_SCALE = 4.0


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


class MotionLoraRequest(BaseModel):
    """One MotionLoRA to merge into the motion module for this request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="A registered MotionLoRA (see GET /v1/models): 'zoom_in' (its champion, else "
        "its latest version), 'zoom_in@<alias>' or 'zoom_in/<version>'."
    )
    scale: float = Field(
        1.0, description="Strength of its update (W += scale * up @ down); negative reverses it."
    )


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
    motion_loras: list[MotionLoraRequest] = Field(
        default_factory=list,
        description="MotionLoRAs (e.g. camera motions) merged into the motion module, in order.",
    )


def _pydantic_error(error: ValidationError) -> RequestError:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return RequestError(field, first["msg"])


def _in_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(field, f"must be between {low} and {high}, got {value}")


def serve_defaults_caps(cfg: Config) -> dict[str, int]:
    """Limits that cap the ``sample:`` defaults a request leaves out (a server's defaults must
    themselves be valid requests)."""
    limits = cfg.serve.limits
    return {
        "num_frames": limits.max_frames,
        "num_inference_steps": limits.max_steps,
        "height": limits.max_height,
        "width": limits.max_width,
    }


def check_motion_loras(loras: list[MotionLoraRequest], limit: int) -> tuple[tuple[str, float], ...]:
    """``(name, scale)`` of each requested MotionLoRA, checked: at most ``limit``, names given
    once, scales within +-``MAX_LORA_SCALE`` (whether a name exists is the registry's answer)."""
    if len(loras) > limit:
        raise RequestError("motion_loras", f"at most {limit} per request, got {len(loras)}")
    seen = set()
    for index, lora in enumerate(loras):
        name = lora.name.strip()
        if not name:
            raise RequestError(f"motion_loras.{index}.name", "must not be empty")
        base_name = name.split("@")[0].split("/")[0]
        if base_name in seen:
            raise RequestError(f"motion_loras.{index}.name", f"{base_name!r} is listed twice")
        seen.add(base_name)
        _in_range(f"motion_loras.{index}.scale", lora.scale, -MAX_LORA_SCALE, MAX_LORA_SCALE)
    return tuple((lora.name.strip(), float(lora.scale)) for lora in loras)


def check_params(request: GenerateRequest, cfg: Config) -> GenerationParams:
    """Fill defaults (``GenerationParams.resolve``) and check ``cfg.serve.limits``; raise
    ``RequestError`` naming the field."""
    limits = cfg.serve.limits
    if not request.prompt.strip():
        raise RequestError("prompt", "must not be empty")
    for field in ("prompt", "negative_prompt"):
        length = len(getattr(request, field))
        if length > limits.max_prompt_chars:
            raise RequestError(
                field, f"is {length} characters, the limit is {limits.max_prompt_chars}"
            )
    known_bases = ("default", *cfg.serve.bases)
    if request.base not in known_bases:
        raise RequestError(
            "base", f"unknown base {request.base!r}; known: {', '.join(known_bases)}"
        )
    fields = request.model_dump()
    fields["model"] = (request.model or "").strip() or None
    fields["motion_loras"] = check_motion_loras(request.motion_loras, limits.max_motion_loras)
    params = GenerationParams.resolve(
        fields,
        cfg.sample,
        default_seed=secrets.randbelow(MAX_SEED + 1),
        caps=serve_defaults_caps(cfg),
    )
    _in_range("num_frames", params.num_frames, 1, limits.max_frames)
    _in_range("num_inference_steps", params.num_inference_steps, 1, limits.max_steps)
    _in_range("guidance_scale", params.guidance_scale, 1.0, MAX_GUIDANCE)
    _in_range("fps", params.fps, 1, MAX_FPS)
    for field, value, high in (
        ("height", params.height, limits.max_height),
        ("width", params.width, limits.max_width),
    ):
        if value % 8:
            raise RequestError(field, f"must be a multiple of 8, got {value}")
        _in_range(field, value, 8, high)
    _in_range("seed", params.seed, 0, MAX_SEED)
    return params


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
