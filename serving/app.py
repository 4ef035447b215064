"""Ray Serve application: a FastAPI ingress in front of a multiplexed, batching video generator.

    serve run infra/serve_config.yaml            # or: python -m jobs.serve --config configs/tiny.yaml

HTTP (see ``/docs``): ``POST /v1/generate`` -> video bytes, ``GET /v1/models``, ``GET /healthz``,
and a web page at ``/``.

Two deployments:
- ``Ingress`` validates requests (422 naming the field), checks the optional bearer token, resolves
  the requested model (alias or version) and MotionLoRAs against the MLflow registry through
  short-TTL caches, and forwards to the generator with ``multiplexed_model_id=
  "<version>/<base>[/<lora>:<version>:<scale>...]"`` (``multiplexed_id``). Only JSON bodies are
  read (415 otherwise). Over capacity it answers 503 with ``Retry-After`` itself: it admits at
  most what the generators can hold (``admission_limit``) and turns the generators'
  back-pressure into 503 at once. Serve's own limits on the ingress are set several times higher,
  so that its proxy (which answers a plain-text 503 without ``Retry-After``) refuses only far
  beyond that.
- ``VideoGenerator`` keeps up to ``serve.max_models_per_replica`` (version, base, MotionLoRAs
  with their scales) pipelines per replica (``serve.multiplexed``, LRU; the LoRAs are merged into a
  copy of the motion module's weights) and groups compatible requests with ``serve.batch``: Serve
  splits a batch by model id, the replica splits it further by shape (frames, steps, size, guidance)
  and denoises each group as one batch. Heavy work runs in a thread so the replica stays responsive.
  A request that fails in a batch fails alone (``generate_batch``): the others still get videos.

``/docs`` is Swagger UI 5 served from the files of the ``fastapi-swagger`` package (no CDN), so it
works on an air-gapped cluster (``swagger-ui-bundle`` ships Swagger UI 4, which cannot render the
OpenAPI 3.1 document FastAPI writes). Nothing is loaded at import: replicas read the registry and the base model when
first asked.
"""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's
# class-based ingress wrapper (string annotations there resolve in Ray's module, not this one).
import asyncio
import dataclasses
import hmac
import importlib.resources
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from animatediff.config import Config, from_dict, load_config, to_dict
from animatediff.export import MIME_TYPES, export_video
from animatediff.generation import SAMPLING_FIELDS, Failed, GenerationParams, generate_each
from serving.schema import (
    GenerateRequest,
    RequestError,
    check_content_type,
    parse_generate_body,
    response_headers,
    serve_defaults_caps,
)
from tracking.model_refs import (
    MotionLoraCatalog,
    RegistryView,
    UnknownModelError,
    motion_lora_model_name,
    split_lora_ref,
)
from tracking.registry import registered_model_name
from tracking.runs import resolve_tracking_uri

STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_S = 1

DOCS_DIR = importlib.resources.files("fastapi_swagger") / "resources"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
"""The Swagger UI files ``/docs`` needs, served from the installed package (no CDN)."""

app = FastAPI(
    title="AnimateDiff on Ray Serve",
    version="1",
    description="Text-to-video with AnimateDiff motion modules from the MLflow model registry.",
    # FastAPI's own /docs and /redoc load their scripts from a CDN: blank pages offline.
    docs_url=None,
    redoc_url=None,
)


@app.exception_handler(RequestError)
async def _request_error(_: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@app.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI on the packaged assets; URLs keep Serve's route prefix (``root_path``)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
    )


@app.get("/docs/assets/{name}", include_in_schema=False)
async def docs_asset(name: str) -> Response:
    if name not in DOCS_ASSETS:  # a fixed list: no path from the request reaches the filesystem
        raise HTTPException(status_code=404)
    data = (DOCS_DIR / name).read_bytes()
    headers = {"Cache-Control": "public, max-age=86400"}
    return Response(data, media_type=DOCS_ASSETS[name], headers=headers)


# (MotionLoRA name, its registered version, scale)
LoraChoice = tuple[str, str, float]


def multiplexed_id(version: str, base: str, loras: list[LoraChoice] | tuple = ()) -> str:
    """``<version>/<base>[/<lora>:<lora version>:<scale>...]``, LoRAs sorted by name: one
    pipeline per distinct combination (equal scales give equal ids)."""
    parts = [version, base] + [f"{n}:{v}:{float(s)!r}" for n, v, s in sorted(loras)]
    return "/".join(parts)


def parse_multiplexed_id(model_id: str) -> tuple[str, str, tuple[LoraChoice, ...]]:
    version, base, *loras = model_id.split("/")
    choices = []
    for lora in loras:
        name, lora_version, scale = lora.split(":")
        choices.append((name, lora_version, float(scale)))
    if not version.isdigit() or not base or any(not v.isdigit() for _, v, _ in choices):
        raise ValueError(
            f"model id {model_id!r}: expected '<version>/<base>[/<lora>:<version>:<scale>...]'"
        )
    return version, base, tuple(choices)


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


class LoadedModel:
    """One (motion-module version, base, MotionLoRAs) pipeline held by a generator replica.
    ``fresh`` until the first batch uses it, so that batch's responses can say they paid for the
    load."""

    def __init__(
        self, pipeline: Any, version: str, base: str, load_ms: float, loras: str = ""
    ) -> None:
        self.pipeline, self.version, self.base, self.load_ms = pipeline, version, base, load_ms
        self.loras = loras
        """``name:version@scale`` of each merged MotionLoRA, comma-separated."""
        self.fresh = True


@serve.deployment(name="VideoGenerator")
class VideoGenerator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = from_dict(Config, config)
        self.name = registered_model_name(self.cfg)
        self.tracking_uri = resolve_tracking_uri(self.cfg.mlflow)
        self._bases: dict[str, Any] = {}
        self._base_lock = asyncio.Lock()

        async def load(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        # Wired here, not as a decorator, because the LRU size comes from the config.
        self.get_model = serve.multiplexed(
            max_num_models_per_replica=self.cfg.serve.max_models_per_replica
        )(load)
        self.generate.set_max_batch_size(self.cfg.serve.max_batch_size)
        self.generate.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_timeout_s)

    async def _base(self, name: str) -> Any:
        """Frozen base components, shared by every motion-module version on this replica."""
        async with self._base_lock:
            if name not in self._bases:
                from animatediff.base_model import load_base_model

                base_cfg = self.cfg.model.base if name == "default" else self.cfg.serve.bases[name]
                self._bases[name] = await asyncio.to_thread(load_base_model, base_cfg)
            return self._bases[name]

    async def _load(self, model_id: str) -> LoadedModel:
        from animatediff.sampling import TextToVideo
        from animatediff.unet import VideoUNet
        from tracking.registry import (
            MotionLoraSource,
            MotionSource,
            apply_motion_loras,
            load_motion,
        )

        start = time.perf_counter()
        version, base_name, loras = parse_multiplexed_id(model_id)
        base = await self._base(base_name)
        source = MotionSource(f"models:/{self.name}/{version}", version, self.tracking_uri)
        modules, cfg = await asyncio.to_thread(load_motion, source, self.cfg)
        lora_sources = [
            MotionLoraSource(
                name,
                f"models:/{motion_lora_model_name(self.name, name)}/{lora_version}",
                lora_version,
                self.tracking_uri,
                scale,
            )
            for name, lora_version, scale in loras
        ]
        if lora_sources:
            modules = await asyncio.to_thread(apply_motion_loras, modules, lora_sources)
        if base_name != "default":
            cfg = cfg.with_base(self.cfg.serve.bases[base_name])
        unet = VideoUNet.from_unet2d(base.unet, cfg.model.motion, modules)
        pipeline = TextToVideo(cfg, base=base, unet=unet)
        labels = ",".join(lora.label() for lora in lora_sources)
        load_ms = (time.perf_counter() - start) * 1000
        return LoadedModel(pipeline, version, base_name, load_ms, labels)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per request (see ``generate_batch``). Serve has already split the batch
        by multiplexed model id, so one model serves it all."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        return await generate_batch(model, requests)


def _failure(error: BaseException) -> dict[str, Any]:
    return {"error": Failed(error).describe()}


def run_batch(model: LoadedModel, batch: list[GenerationParams | Failed]) -> list[dict[str, Any]]:
    """Denoise each shape group as one batch, then encode every video (runs in a thread). A
    request that fails (here or before) gets ``{"error": ...}``; the others are unaffected."""
    valid = [params for params in batch if isinstance(params, GenerationParams)]
    generated = iter(generate_each(model.pipeline, valid))
    results: list[dict[str, Any]] = []
    for params in batch:
        if isinstance(params, Failed):
            results.append({"error": params.describe()})
            continue
        made = next(generated)
        if isinstance(made, Failed):
            results.append({"error": made.describe()})
            continue
        start = time.perf_counter()
        try:
            data = export_video(made.video, params.output_format, params.fps)
        except Exception as error:
            results.append(_failure(error))
            continue
        results.append(
            {
                "video": data,
                "content_type": MIME_TYPES[params.output_format],
                "version": model.version,
                "motion_loras": model.loras,
                "batch_size": made.batch_size,
                "timings_ms": {
                    "generate": made.seconds * 1000,
                    "encode": (time.perf_counter() - start) * 1000,
                },
            }
        )
    return results


async def generate_batch(
    model: LoadedModel, requests: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The body of ``VideoGenerator.generate``: one result per request, in order: video bytes,
    content type, version, whether the model was loaded for it, timings; or ``error`` (a one-line
    description) for a request that failed, which fails alone."""
    loaded, model.fresh = model.fresh, False
    batch: list[GenerationParams | Failed] = []
    for request in requests:
        try:
            batch.append(GenerationParams(**request))
        except Exception as error:
            batch.append(Failed(error))
    results = await asyncio.to_thread(run_batch, model, batch)
    for result in results:
        result["loaded"] = loaded
        if loaded and "timings_ms" in result:  # else the load time would be counted as queueing
            result["timings_ms"] = {"load": model.load_ms, **result["timings_ms"]}
    return results


# ---------------------------------------------------------------------------------------------
# Ingress
# ---------------------------------------------------------------------------------------------

_GENERATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
    },
    "responses": {
        "200": {
            "description": "The video; headers X-Seed, X-Model-Version, X-Base, X-Batch-Size, "
            "X-Motion-Loras (name:version@scale of each merged MotionLoRA), "
            "X-Model-Loaded (1 when the replica loaded the model for this request, 0 when it "
            "was cached), Server-Timing (with `load` when loaded).",
            "content": {mime: {} for mime in MIME_TYPES.values()},
        },
        "401": {"description": "Missing or wrong bearer token (when auth is on)."},
        "415": {"description": "The body is not declared `application/json`."},
        "422": {"description": "Invalid request: `error` names the field and the reason."},
        "500": {"description": "Generation of this request failed: `error` says how."},
        "503": {
            "description": "Over capacity; retry after `Retry-After` seconds (JSON `error`). "
            "Only far beyond the server's own limit (several times the requests the generators "
            "can hold) does Ray Serve's proxy refuse by itself, with a plain-text 503 "
            "(`Request dropped due to backpressure`) and no `Retry-After`: treat any 503 as "
            "retryable, after 1 s when the header is missing."
        },
    },
}


def admission_limit(cfg: Config) -> int:
    """Generation requests one ingress replica works on at once: what the generators can run and
    queue, plus a few resolving their model. Beyond it the ingress answers 503 itself."""
    s = cfg.serve
    return (s.max_ongoing_requests + s.max_queued_requests) * s.autoscaling.max_replicas + 8


# Defined before ``Ingress``: ``serve.ingress`` copies the class when it decorates it, and the copy
# sees only the module globals that exist at that moment.
def _over_capacity() -> JSONResponse:
    return JSONResponse(
        {"error": "over capacity: too many requests queued, retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, generator: Any, config: dict[str, Any]) -> None:
        self.cfg = from_dict(Config, config)
        self.generator = generator
        self.name = registered_model_name(self.cfg)
        tracking_uri = resolve_tracking_uri(self.cfg.mlflow)
        self.registry = RegistryView(tracking_uri, self.name, self.cfg.serve.alias_ttl_s)
        self.motion_loras = MotionLoraCatalog(tracking_uri, self.name, self.cfg.serve.alias_ttl_s)
        self._page: str | None = None
        self._admitted = 0
        self._admission_limit = admission_limit(self.cfg)

    def _authorize(self, request: Request) -> None:
        token = self.cfg.serve.auth_token
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
            raise RequestError("authorization", "missing or wrong bearer token", status=401)

    async def _motion_lora(self, ref: str, index: int) -> tuple[str, str]:
        """(registered model, version) of a requested MotionLoRA; 422 naming it if unknown."""
        default = self.cfg.mlflow.champion_alias
        field = f"motion_loras.{index}.name"
        return await asyncio.to_thread(self.motion_loras.resolve, ref, default, field)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self) -> HTMLResponse:
        if self._page is None:
            self._page = (STATIC_DIR / "index.html").read_text()
        return HTMLResponse(self._page)

    @app.get("/healthz", summary="Liveness of the ingress")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model": self.name, "alias": self.cfg.mlflow.champion_alias}

    @app.get("/v1/models", summary="Registered motion-module versions, aliases, bases, limits")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        snapshot = await asyncio.to_thread(self.registry.snapshot)
        loras = await asyncio.to_thread(self.motion_loras.snapshot)
        limits = self.cfg.serve.limits
        defaults = GenerationParams.resolve(
            {"prompt": ""}, self.cfg.sample, default_seed=0, caps=serve_defaults_caps(self.cfg)
        )
        return {
            "model_name": self.name,
            "default_alias": self.cfg.mlflow.champion_alias,
            "aliases": snapshot.aliases,
            "versions": list(snapshot.versions),
            "bases": ["default", *self.cfg.serve.bases],
            "motion_loras": [
                {
                    "name": name,
                    "registered_model": lora.name,
                    "aliases": lora.aliases,
                    "versions": lora.version_numbers(),
                }
                for name, lora in loras.items()
            ],
            "limits": to_dict(limits),
            "defaults": {
                name: getattr(defaults, name)
                for name in (*SAMPLING_FIELDS, "fps", "negative_prompt", "output_format")
            },
        }

    @app.post("/v1/generate", summary="Generate a video", openapi_extra=_GENERATE_DOC)
    async def generate(self, request: Request) -> Response:
        start = time.perf_counter()
        self._authorize(request)
        check_content_type(request.headers.get("content-type"))
        if self._admitted >= self._admission_limit:
            return _over_capacity()
        self._admitted += 1  # one event loop: no lock needed between check and increment
        try:
            return await self._generate(request, start)
        finally:
            self._admitted -= 1

    async def _generate(self, request: Request, start: float) -> Response:
        declared = request.headers.get("content-length", "")
        limit = self.cfg.serve.limits.max_body_bytes
        if declared.isdigit() and int(declared) > limit:  # refuse before reading it
            raise RequestError("body", f"is {declared} bytes, the limit is {limit}")
        params = parse_generate_body(await request.body(), self.cfg)
        try:
            version = await asyncio.to_thread(
                self.registry.resolve, params.model, self.cfg.mlflow.champion_alias
            )
            loras = []
            for index, (ref, scale) in enumerate(params.motion_loras):
                _, lora_version = await self._motion_lora(ref, index)
                loras.append((split_lora_ref(ref)[0], lora_version, scale))
        except UnknownModelError as error:
            raise RequestError(error.field, error.reason) from error
        model_id = multiplexed_id(version, params.base, loras)
        handle = self.generator.options(multiplexed_model_id=model_id)
        try:
            result = await handle.generate.remote(params.to_dict())
        except BackPressureError:
            return _over_capacity()
        except Exception as error:  # a failed model load or generation: say what, not a stack
            cause = getattr(error, "cause", None) or error
            return JSONResponse(
                {"error": f"generation failed: {Failed(cause).describe()}"}, status_code=500
            )
        if "error" in result:  # this request failed; the others in its batch did not
            return JSONResponse({"error": f"generation failed: {result['error']}"}, status_code=500)
        total_ms = (time.perf_counter() - start) * 1000
        timings = dict(result["timings_ms"])
        timings["queue"] = max(0.0, total_ms - sum(timings.values()))
        timings["total"] = total_ms
        headers = response_headers(params, self.name, result["version"], timings)
        headers["X-Batch-Size"] = str(result["batch_size"])
        headers["X-Motion-Loras"] = result.get("motion_loras", "")
        headers["X-Model-Loaded"] = "1" if result["loaded"] else "0"
        return Response(content=result["video"], media_type=result["content_type"], headers=headers)


# ---------------------------------------------------------------------------------------------
# Application builders
# ---------------------------------------------------------------------------------------------


def _generator_options(cfg: Config) -> dict[str, Any]:
    s = cfg.serve
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.replica_cpus, "num_gpus": s.replica_gpus},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        # Loading a model can take a while on a cold node; do not kill the replica for it.
        "health_check_timeout_s": 60.0,
    }
    scaling = s.autoscaling
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
        }
    return options


def _ingress_options(cfg: Config) -> dict[str, Any]:
    # The ingress refuses beyond ``admission_limit`` itself (JSON, Retry-After); a refusal costs it
    # microseconds, so Serve's limits sit well above that and its proxy (plain text, no
    # Retry-After) refuses only a burst of several times the limit. Memory stays bounded: the
    # proxy queues at most ``max_queued_requests``.
    headroom = 4 * admission_limit(cfg)
    return {
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": headroom,
        "max_queued_requests": headroom,
    }


def build_app(cfg: Config) -> Any:
    """The bound Serve application for ``cfg`` (tracking URI resolved here, on the driver)."""
    mlflow_cfg = dataclasses.replace(cfg.mlflow, tracking_uri=resolve_tracking_uri(cfg.mlflow))
    plain = to_dict(dataclasses.replace(cfg, mlflow=mlflow_cfg))
    generator = VideoGenerator.options(**_generator_options(cfg)).bind(plain)
    return Ingress.options(**_ingress_options(cfg)).bind(generator, plain)


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path: serving.app:app_builder`` for ``serve run``/``serve deploy``;
    ``args: {config: configs/tiny.yaml, overrides: ["serve.alias_ttl_s=2"]}``."""
    unknown = sorted(set(args) - {"config", "overrides"})
    if unknown:
        raise ValueError(f"serve app args: unknown keys {unknown} (known: config, overrides)")
    return build_app(load_config(args.get("config"), list(args.get("overrides") or [])))
