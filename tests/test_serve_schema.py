"""Request validation and model resolution of the Serve app, without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animatediff.config import load_config
from serving.schema import (
    GenerationParams,
    RequestError,
    check_content_type,
    parse_generate_body,
    response_headers,
)
from tracking.model_refs import (
    ModelSnapshot,
    MotionLoraCatalog,
    RegistryView,
    UnknownModelError,
    resolve_lora_ref,
    resolve_model_ref,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

CFG = load_config(TINY, ["serve.bases.toon.pretrained=builtin:tiny"])


def _parse(**fields) -> GenerationParams:
    return parse_generate_body(json.dumps(fields).encode(), CFG)


def _error(body: bytes | dict) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as info:
        parse_generate_body(raw, CFG)
    return info.value


def test_defaults_come_from_the_sample_section_within_limits():
    params = _parse(prompt="a cat", seed=3)
    sample = CFG.sample
    assert (params.num_frames, params.num_inference_steps) == (
        sample.num_frames,
        sample.num_inference_steps,
    )
    assert (params.height, params.width, params.fps) == (sample.height, sample.width, sample.fps)
    assert params.seed == 3 and params.output_format == "gif" and params.base == "default"
    assert params.model is None


def test_missing_seed_gets_a_random_one_in_range():
    seeds = {_parse(prompt="a cat").seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "x" * 1001}, "prompt", "limit is 1000"),
        ({"prompt": "a", "num_frames": 17}, "num_frames", "between 1 and 16"),
        ({"prompt": "a", "num_frames": 0}, "num_frames", "between 1 and 16"),
        ({"prompt": "a", "num_inference_steps": 11}, "num_inference_steps", "between 1 and 10"),
        ({"prompt": "a", "height": 60}, "height", "multiple of 8"),
        ({"prompt": "a", "width": 136}, "width", "between 8 and 128"),
        ({"prompt": "a", "guidance_scale": 0.5}, "guidance_scale", "between 1.0"),
        ({"prompt": "a", "seed": -1}, "seed", "between 0"),
        ({"prompt": "a", "output_format": "avi"}, "output_format", "gif"),
        ({"prompt": "a", "base": "nope"}, "base", "known: default, toon"),
        ({"prompt": "a", "colour": "red"}, "colour", "Extra inputs"),
        ({"prompt": "a", "num_frames": "many"}, "num_frames", "integer"),
        ({}, "prompt", "required"),
    ],
)
def test_bad_requests_name_the_field_and_the_reason(fields, field, words):
    error = _error(fields)
    assert error.field == field and words in error.reason, str(error)
    body = error.body()
    assert body["detail"][0]["loc"] == ["body", field]
    assert body["error"].startswith(f"{field}: ")


def test_oversized_and_malformed_bodies():
    big = json.dumps({"prompt": "a", "negative_prompt": "b" * 9000}).encode()
    error = _error(big)
    assert error.field == "body" and "limit is 8192" in error.reason
    assert _error(b"{not json").field == "body"
    assert "JSON object" in _error(b"[1, 2]").reason


HUGE = "9" * 5000  # more digits than Python converts (4,300): int() raises ValueError


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ('{"prompt": "a", "seed": ' + HUGE + "}", "seed", "5000 digits"),
        ('{"prompt": "a", "num_frames": -' + HUGE + "}", "num_frames", "5000 digits"),
        ("[" * 3000, "body", "deeper than"),
        ('{"prompt": "a", "seed": ' + "[" * 3000 + "]" * 3000 + "}", "seed", "deeper than"),
        ('{"prompt": "a \\"[[[[[[[[[[[[[", "seed": [[[[[[[[[[[[1]]]]]]]]]]]]}', "seed", "deeper"),
        ('{"prompt": "a\\ud800b"}', "prompt", "lone surrogate (U+D800)"),
        ('{"prompt": "a", "negative_prompt": "\\udfff"}', "negative_prompt", "surrogate"),
        ('{"prompt": "a", "model": "v\\ud83d"}', "model", "lone surrogate"),
        ('{"prompt": "a", "x\\ud800": 1}', "x\\ud800", "field name"),
        ('{"prompt": "a", "guidance_scale": NaN}', "guidance_scale", "NaN is not a JSON number"),
        ('{"prompt": "a", "seed": -Infinity}', "seed", "-Infinity is not"),
        ('{"prompt": "a", "num_frames": "8"}', "num_frames", "valid integer, got a string"),
        ('{"prompt": "a", "num_frames": true}', "num_frames", "valid integer, got true"),
        ('{"prompt": "a", "num_frames": 8.5}', "num_frames", "valid integer"),
        ('{"prompt": "a", "guidance_scale": true}', "guidance_scale", "valid number, got true"),
        ('{"prompt": "a", "seed": "1"}', "seed", "valid integer, got a string"),
        ('{"prompt": "\\u200b\\u200d\\ufeff "}', "prompt", "must not be empty"),
        ('{"prompt": 5}', "prompt", "valid string, got an integer"),
    ],
)
def test_hostile_bodies_are_refused_naming_the_field(raw, field, words):
    """Each of these once escaped as a 500 (ValueError, RecursionError, the tokenizer's
    TypeError) or was silently coerced ("8" -> 8, true -> 1 frame)."""
    error = _error(raw.encode())
    assert error.status == 422
    assert error.field == field and words in error.reason, str(error)
    # The error body itself must encode (a surrogate echoed back would break the response).
    from fastapi.responses import JSONResponse

    assert json.loads(JSONResponse(error.body()).body)["detail"][0]["field"] == field


def test_strict_types_still_take_integers_for_numbers():
    params = _parse(prompt="a", guidance_scale=7, seed=0, num_frames=4)
    assert params.guidance_scale == 7.0 and params.num_frames == 4


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types_are_accepted(value):
    check_content_type(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "image/gif",
        "multipart/form-data",
    ],
)
def test_other_content_types_are_415(value):
    with pytest.raises(RequestError) as info:
        check_content_type(value)
    assert info.value.status == 415 and info.value.field == "content-type"
    assert "must be application/json" in info.value.reason


def test_shape_key_groups_only_compatible_requests():
    a = _parse(prompt="a", seed=1)
    b = _parse(prompt="b", seed=2, negative_prompt="blur", output_format="webp")
    c = _parse(prompt="c", seed=3, num_frames=4)
    assert a.shape_key() == b.shape_key() != c.shape_key()


def test_response_headers_carry_seed_version_and_timings():
    params = _parse(prompt="a", seed=7)
    headers = response_headers(params, "m", "3", {"generate": 12.34, "total": 20.0})
    assert headers["X-Seed"] == "7" and headers["X-Model-Version"] == "3"
    assert headers["Server-Timing"] == "generate;dur=12.3, total;dur=20.0"
    assert headers["X-Timing-Generate-Ms"] == "12.3"


SNAPSHOT = ModelSnapshot(
    name="mm",
    versions=({"version": "1"}, {"version": "2"}, {"version": "3"}),
    aliases={"champion": "2", "candidate": "3"},
)


@pytest.mark.parametrize(
    ("ref", "version"),
    [(None, "2"), ("", "2"), ("champion", "2"), ("candidate", "3"), ("1", "1"), ("v3", "3")],
)
def test_model_refs_resolve_to_versions(ref, version):
    assert resolve_model_ref(ref, SNAPSHOT, "champion") == version


@pytest.mark.parametrize("ref", ["v9", "9", "staging", "x1"])
def test_unknown_models_are_named_with_what_is_known(ref):
    with pytest.raises(UnknownModelError) as info:
        resolve_model_ref(ref, SNAPSHOT, "champion")
    assert info.value.field == "model"
    assert "aliases: candidate, champion; versions: 1, 2, 3" in info.value.reason


def test_empty_registry_says_so():
    with pytest.raises(UnknownModelError, match="no version of 'mm' is registered"):
        resolve_model_ref(None, ModelSnapshot(name="mm"), "champion")


def test_registry_view_rereads_after_the_ttl_only():
    now = [0.0]
    reads = []
    state = {"aliases": {"champion": "1"}}

    def reader(uri: str, name: str) -> ModelSnapshot:
        reads.append(now[0])
        return ModelSnapshot(name, ({"version": "1"}, {"version": "2"}), dict(state["aliases"]))

    view = RegistryView("sqlite:///x.db", "mm", ttl_s=5.0, reader=reader, clock=lambda: now[0])
    assert view.resolve(None, "champion") == "1"
    state["aliases"] = {"champion": "2"}  # the alias moves
    now[0] = 4.9
    assert view.resolve(None, "champion") == "1" and len(reads) == 1
    now[0] = 5.0
    assert view.resolve(None, "champion") == "2" and len(reads) == 2
    # A miss re-reads at most once a second.
    with pytest.raises(UnknownModelError):
        view.resolve("v7", "champion")
    assert len(reads) == 2
    now[0] = 6.5
    with pytest.raises(UnknownModelError):
        view.resolve("v7", "champion")
    assert len(reads) == 3


def test_motion_loras_in_requests_are_checked():
    params = _parse(
        prompt="a", motion_loras=[{"name": " zoom_in "}, {"name": "pan/2", "scale": -1}]
    )
    assert params.motion_loras == (("zoom_in", 1.0), ("pan/2", -1.0))
    assert _parse(prompt="a").motion_loras == ()
    limit = CFG.serve.limits.max_motion_loras
    too_many = [{"name": f"l{i}"} for i in range(limit + 1)]
    for loras, field, words in [
        (too_many, "motion_loras", f"at most {limit}"),
        ([{"name": " "}], "motion_loras.0.name", "must not be empty"),
        ([{"name": "a"}, {"name": "a@champion"}], "motion_loras.1.name", "'a' is listed twice"),
        ([{"name": "a", "scale": -4.5}], "motion_loras.0.scale", "between -4.0 and 4.0"),
        ([{"scale": 1}], "motion_loras.0.name", "Field required"),
        ([{"name": "a", "weight": 1}], "motion_loras.0.weight", "Extra inputs"),
    ]:
        error = _error({"prompt": "a", "motion_loras": loras})
        assert (error.field, words in error.reason) == (field, True), (error.field, error.reason)


LORAS = {
    "zoom_in": ModelSnapshot("m-motion_lora-zoom_in", SNAPSHOT.versions, {"champion": "2"}),
    "pan_left": ModelSnapshot("m-motion_lora-pan_left", ({"version": "1"}, {"version": "4"})),
}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("zoom_in", ("m-motion_lora-zoom_in", "2")),  # the champion
        ("zoom_in@champion", ("m-motion_lora-zoom_in", "2")),
        ("zoom_in/3", ("m-motion_lora-zoom_in", "3")),
        ("pan_left", ("m-motion_lora-pan_left", "4")),  # no champion yet: the latest version
        ("pan_left/1", ("m-motion_lora-pan_left", "1")),
    ],
)
def test_motion_lora_refs_resolve_to_registered_versions(ref, expected):
    assert resolve_lora_ref(ref, LORAS, "champion") == expected


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("tilt_up", "unknown MotionLoRA 'tilt_up'; known: pan_left, zoom_in"),
        ("pan_left@champion", "unknown model 'champion'"),
        ("zoom_in/7", "unknown model '7'"),
    ],
)
def test_unknown_motion_loras_name_the_field(ref, words):
    with pytest.raises(UnknownModelError) as info:
        resolve_lora_ref(ref, LORAS, "champion", field="motion_loras.1.name")
    assert info.value.field == "motion_loras.1.name" and words in info.value.reason


def test_motion_lora_catalog_rereads_after_the_ttl_and_on_a_miss():
    now, reads = [0.0], []
    catalog_state = {"zoom_in": LORAS["zoom_in"]}

    def reader(uri: str, model: str) -> dict:
        reads.append(now[0])
        return dict(catalog_state)

    catalog = MotionLoraCatalog("sqlite:///x.db", "m", 5.0, reader=reader, clock=lambda: now[0])
    assert catalog.resolve("zoom_in", "champion", "f") == ("m-motion_lora-zoom_in", "2")
    catalog_state["pan_left"] = LORAS["pan_left"]  # registered meanwhile
    now[0] = 0.5
    with pytest.raises(UnknownModelError):
        catalog.resolve("pan_left", "champion", "f")  # re-read at most once a second
    now[0] = 1.5
    assert catalog.resolve("pan_left", "champion", "f")[1] == "4"
    assert len(reads) == 2
