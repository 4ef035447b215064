"""The HTTP contract of the Serve app: request schema, validation against limits, response headers.

Pure functions, no Ray and no I/O, so the rules are tested without a server:

    check_content_type(headers.get("content-type"))  # 415 unless JSON
    params = parse_generate_body(body_bytes, cfg)   # raises RequestError(field, reason)

Every rejection names the offending field and the reason; the app turns ``RequestError`` into a
422 (415 for a non-JSON body) whose body looks like FastAPI's own validation errors
(``detail[].loc``/``msg``) plus a flat ``error`` string that a person can read.

Hostile bodies are refused here, before anything expensive sees them: integers longer than
``MAX_INT_DIGITS`` digits (Python refuses to convert more than 4,300 digits and would raise),
nesting deeper than ``MAX_JSON_DEPTH`` (the JSON decoder recurses), ``NaN``/``Infinity``, text
with lone UTF-16 surrogates (``"\\ud800"``: UTF-8 and the tokenizer cannot encode it), and values
of the wrong JSON type (strict: ``"8"`` and ``true`` are not numbers).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from animatediff.config import Config
from animatediff.generation import GenerationParams
from animatediff.text import is_blank, lone_surrogate

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MAX_FPS = 60
MAX_INT_DIGITS = 20
"""Longest integer literal read (any valid value has at most 10 digits)."""
MAX_JSON_DEPTH = 8
"""Deepest nesting of arrays and objects read (a valid body has depth 1)."""
TEXT_FIELDS = ("prompt", "negative_prompt", "model", "base")


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped: error bodies must themselves encode as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_LORA_SCALE = 4.0


class RequestError(ValueError):
    """A request is invalid: ``field`` names the JSON field, ``reason`` says why."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        field, reason = _printable(field), _printable(reason)
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

    # strict: JSON types as declared ("8" is not an integer, true is not a number).
    model_config = ConfigDict(extra="forbid", strict=True)

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


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    names = {str: "a string", float: "a number with a fraction", list: "an array"}
    names |= {dict: "an object", type(None): "null", int: "an integer"}
    return names.get(type(value), type(value).__name__)


def _pydantic_error(error: ValidationError) -> RequestError:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    message = first["msg"]
    if first["type"] in ("int_type", "float_type", "string_type", "bool_type"):
        message += f", got {_json_type(first.get('input'))}"
    return RequestError(field, message)


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
    for field in TEXT_FIELDS:
        value = getattr(request, field)
        surrogate = lone_surrogate(value) if value is not None else None
        if surrogate:
            raise RequestError(field, f"contains a lone surrogate ({surrogate}): not valid Unicode")
    if is_blank(request.prompt):
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


class _Unreadable:
    """A JSON value the decoder refused to convert (an overlong integer, NaN), kept as a marker
    so that the error can name the field that holds it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _int(text: str) -> int | _Unreadable:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Unreadable(f"an integer of {digits} digits is out of range")
    return int(text)


def _constant(name: str) -> _Unreadable:
    return _Unreadable(f"{name} is not a JSON number")


def _nesting(text: str) -> tuple[int, str]:
    """``(depth, field)``: the deepest array/object nesting of a JSON text (strings skipped), and
    the top-level key under which it first exceeds ``MAX_JSON_DEPTH`` ("body" if none)."""
    depth = deepest = 0
    key_start = key_end = -1
    in_string = escaped = False
    start = 0
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 1:  # the last string at depth 1 before a container is its key
                    key_start, key_end = start, index + 1
        elif char == '"':
            in_string, start = True, index
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                field = "body"
                if text.lstrip().startswith("{") and key_start >= 0:
                    try:
                        field = str(json.loads(text[key_start:key_end]))
                    except ValueError:
                        pass
                return deepest, field
        elif char in "]}":
            depth -= 1
    return deepest, "body"


def _find_unreadable(value: Any) -> _Unreadable | None:
    if isinstance(value, _Unreadable):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _find_unreadable(item)
        if found:
            return found
    return None


def read_json_object(body: bytes, limit: int) -> dict[str, Any]:
    """A request body as a JSON object of plain values; ``RequestError`` (``body`` or the
    top-level field at fault) for anything else, never another exception."""
    if len(body) > limit:
        raise RequestError("body", f"is {len(body)} bytes, the limit is {limit}")
    try:
        text = body.decode("utf-8") if body else "null"
    except UnicodeDecodeError as error:
        raise RequestError("body", f"is not valid UTF-8 ({error})") from error
    depth, field = _nesting(text)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(field, f"nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, parse_int=_int, parse_constant=_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise RequestError("body", f"is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise RequestError("body", "must be a JSON object")
    for key, value in data.items():
        if lone_surrogate(key):
            raise RequestError(key, "field name contains a lone surrogate: not valid Unicode")
        unreadable = _find_unreadable(value)
        if unreadable:
            raise RequestError(key, unreadable.reason)
    return data


def check_content_type(value: str | None) -> None:
    """415 unless the body is declared JSON (``application/json``, any parameters, or a
    ``+json`` type): a form or a file upload is refused before it is read."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        shown = repr(value) if value else "missing"
        raise RequestError("content-type", f"must be application/json, got {shown}", status=415)


def parse_generate_body(body: bytes, cfg: Config) -> GenerationParams:
    """Size check, JSON parse, schema and limits, in that order: the first problem is reported."""
    data = read_json_object(body, cfg.serve.limits.max_body_bytes)
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
