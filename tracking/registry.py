"""The MLflow model registry: a trained motion module as a text-to-video ``pyfunc`` model.

    version = register_motion_module(cfg, motion_dir, run_id, tracking_uri, val_loss=0.12)
    modules, motion_cfg, meta = load_registered_motion_module("models:/animatediff-motion-module@champion")
    videos = mlflow.pyfunc.load_model("models:/...@candidate").predict(pd.DataFrame({"prompt": [...]}))

A registered version's artifacts: ``motion_module`` (a folder, whatever its name, holding the
native ``motion_module.safetensors`` + ``motion_module.json``) and ``config.yaml`` (the training
config: ``model.base`` is the reference to the frozen base it animates, ``sample`` the sampling
defaults). New versions get the alias ``candidate``; ``promote`` moves ``champion`` after
comparing validation losses.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.checkpoints import NATIVE_CONFIG, adapt_to, load_any, load_motion_modules
from animatediff.config import (
    Config,
    ConfigError,
    MlflowConfig,
    MotionModuleConfig,
    SampleConfig,
    load_config,
    save_config,
    to_dict,
)
from animatediff.generation import GenerationParams, generate_all
from tracking.model_refs import (
    motion_lora_model_name,
    read_motion_lora_snapshots,
    read_snapshot,
    resolve_lora_ref,
    resolve_model_ref,
)
from tracking.runs import client, resolve_tracking_uri

MOTION_ARTIFACT = "motion_module"
CONFIG_ARTIFACT = "config.yaml"
BASE_ARTIFACT = "base.json"
VAL_LOSS_TAG = "val_loss"
# Optional request columns and how they map onto TextToVideo arguments.
OPTIONAL_COLUMNS = {
    "negative_prompt": "string",
    "seed": "long",
    "num_frames": "long",
    "num_inference_steps": "long",
    "guidance_scale": "double",
    "height": "long",
    "width": "long",
}


# ---------------------------------------------------------------------------------------------
# The pyfunc model
# ---------------------------------------------------------------------------------------------


def _python_model_class():
    import mlflow.pyfunc

    class MotionModuleTextToVideo(mlflow.pyfunc.PythonModel):
        """``predict(DataFrame[prompt, seed?, num_frames?, ...]) -> (rows, frames, height, width,
        3) uint8``: one video per row; all rows of a request must share frames, height, width."""

        def load_context(self, context: Any) -> None:
            from animatediff.checkpoints import load_motion_modules
            from animatediff.sampling import TextToVideo

            cfg = load_config(context.artifacts["config"])
            modules, motion_cfg = load_motion_modules(context.artifacts[MOTION_ARTIFACT])
            self.pipe = TextToVideo(cfg.with_motion(motion_cfg), modules)

        def predict(self, context, model_input, params=None):  # no hints: MLflow would parse them
            return predict_videos(self.pipe, model_input)

    return MotionModuleTextToVideo


def _requests(model_input: Any, sample: SampleConfig) -> list[GenerationParams]:
    """DataFrame / dict of columns / list of dicts or prompt strings -> one request per video,
    completed by ``GenerationParams.resolve`` (a row without a seed gets ``sample.seed + row``)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = pd.DataFrame(model_input).to_dict(orient="records")
    else:
        rows = [{"prompt": r} if isinstance(r, str) else dict(r) for r in model_input]
    requests = []
    for index, row in enumerate(rows):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"row {index}: 'prompt' must be a non-empty string, got {prompt!r}")
        unknown = set(row) - {"prompt", *OPTIONAL_COLUMNS}
        if unknown:
            raise ValueError(f"row {index}: unknown columns {sorted(unknown)}")
        fields: dict[str, Any] = {"prompt": prompt}
        for name, kind in OPTIONAL_COLUMNS.items():
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue  # missing in this row: the model's sampling default
            fields[name] = (
                int(value) if kind == "long" else float(value) if kind == "double" else str(value)
            )
        requests.append(GenerationParams.resolve(fields, sample, default_seed=sample.seed + index))
    if not requests:
        raise ValueError("no prompts given")
    return requests


def predict_videos(pipe: Any, model_input: Any) -> np.ndarray:
    """Run ``pipe`` (a ``TextToVideo``) for each request: ``(rows, frames, height, width, 3)``."""
    results = generate_all(pipe, _requests(model_input, pipe.cfg.sample))
    shapes = {result.video.shape for result in results}
    if len(shapes) > 1:
        raise ValueError(
            f"rows asked for different video shapes {sorted(shapes)}: split the request"
        )
    return np.stack([result.video for result in results])


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    columns = [ColSpec("string", "prompt")] + [
        ColSpec(kind, name, required=False) for name, kind in OPTIONAL_COLUMNS.items()
    ]
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1, 3))])
    return ModelSignature(inputs=Schema(columns), outputs=outputs)


def _input_example(cfg: Config):
    import pandas as pd

    # Small on purpose: MLflow runs the example through predict when logging, as a self-check.
    return pd.DataFrame(
        {
            "prompt": ["a red ball bouncing"],
            "seed": [cfg.sample.seed],
            "num_frames": [min(2, cfg.sample.context_frames)],
            "num_inference_steps": [1],
            "guidance_scale": [1.0],
            "height": [64],
            "width": [64],
        }
    )


# ---------------------------------------------------------------------------------------------
# Registering and loading
# ---------------------------------------------------------------------------------------------


def registered_name(cfg: Config) -> str:
    """Where a training run registers its result: ``mlflow.registered_model`` for motion modules,
    ``<mlflow.registered_model>-<stage>`` for other stages (an image-stage UNet or LoRA must never
    become a version that Serve loads as a motion module), and for each MotionLoRA its own model
    ``<mlflow.registered_model>-motion_lora-<train.lora.name>``."""
    if cfg.train.stage == "motion":
        return cfg.mlflow.registered_model
    if cfg.train.stage == "motion_lora":
        return motion_lora_model_name(cfg.mlflow.registered_model, cfg.train.lora.name)
    return f"{cfg.mlflow.registered_model}-{cfg.train.stage}"


def _register(
    cfg: Config,
    model_dir: Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None,
    model_type: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``model_dir`` as an MLflow logged model of ``run_id``, register it under
    ``registered_name(cfg)`` with alias ``mlflow.candidate_alias`` (and ``tags`` on the version);
    returns the version. Only client calls on ``tracking_uri``: MLflow's process-wide settings are
    untouched."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    name = registered_name(cfg)
    experiment = mlflow_client.get_run(run_id).info.experiment_id
    logged = mlflow_client.create_logged_model(
        experiment, name=model_type, source_run_id=run_id, model_type=model_type
    )
    mlflow_client.log_model_artifacts(logged.model_id, str(model_dir))
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"base": cfg.model.base.pretrained, "stage": cfg.train.stage, **(tags or {})}
    if val_loss is not None:
        tags[VAL_LOSS_TAG] = repr(float(val_loss))
    # The logged model's artifact location as the source, not ``models:/<id>``: MLflow's SQL
    # registry would look that id up through the process-wide tracking URI.
    version = mlflow_client.create_model_version(
        name, logged.artifact_location, run_id=run_id, tags=tags, model_id=logged.model_id
    ).version
    mlflow_client.set_registered_model_alias(name, cfg.mlflow.candidate_alias, str(version))
    return str(version)


def register_motion_module(
    cfg: Config,
    motion_dir: str | Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register a native motion-module directory as a text-to-video pyfunc model (see
    ``_register``); returns the version."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as directory:
        config_path = Path(directory) / CONFIG_ARTIFACT
        save_config(cfg, config_path)
        base_path = Path(directory) / BASE_ARTIFACT
        base_path.write_text(json.dumps(to_dict(cfg.model.base), indent=2))
        model_dir = Path(directory) / "model"
        mlflow.pyfunc.save_model(
            model_dir,
            python_model=_python_model_class()(),
            artifacts={
                MOTION_ARTIFACT: str(motion_dir),
                "config": str(config_path),
                "base": str(base_path),
            },
            signature=_signature(),
            input_example=_input_example(cfg),
            pip_requirements=["animatediff-ray"],
        )
        return _register(cfg, model_dir, run_id, tracking_uri, val_loss, "motion-module", tags)


def register_export(
    cfg: Config,
    export_path: Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register what a training run exported: a motion module as a pyfunc model, an image-stage
    StableDiffusion directory or LoRA file, or a MotionLoRA directory as plain artifacts (with the
    training config). ``tags`` go on the version (e.g. the motion module a run started from)."""
    if cfg.train.stage == "motion":
        return register_motion_module(cfg, export_path, run_id, tracking_uri, val_loss, tags)
    with tempfile.TemporaryDirectory() as directory:
        model_dir = Path(directory)
        save_config(cfg, model_dir / CONFIG_ARTIFACT)
        if export_path.is_dir():
            shutil.copytree(export_path, model_dir / export_path.name)
        else:
            shutil.copyfile(export_path, model_dir / export_path.name)
        model_type = f"{cfg.train.stage}-model"
        return _register(cfg, model_dir, run_id, tracking_uri, val_loss, model_type, tags)


def _parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/version`` -> (name, version, alias)."""
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    name, _, version = rest.partition("/")
    return name, version or None, None


def _find_artifact(root: Path, key: str, filename: str | None = None) -> Path:
    """The artifact logged under ``key`` (stored as ``filename``) in the model directory ``root``.

    Found through the pyfunc's artifacts mapping in ``MLmodel`` (key -> stored path), so the
    name of the folder the trainer logged does not matter; the motion module is otherwise found
    by its content (the one folder holding ``motion_module.json``)."""
    from mlflow.models import Model

    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        pyfunc = Model.load(str(mlmodel)).flavors.get("python_function") or {}
        artifacts = pyfunc.get("artifacts") or {}
        if key in artifacts:
            path = root / artifacts[key]["path"]
            if path.exists():
                return path
    for candidate in (root / "artifacts" / (filename or key), root / (filename or key)):
        if candidate.exists():
            return candidate
    if key == MOTION_ARTIFACT:
        found = sorted({meta.parent for meta in root.rglob(NATIVE_CONFIG)})
        if len(found) == 1:
            return found[0]
        if found:
            raise FileNotFoundError(f"{root}: several motion modules {[str(f) for f in found]}")
    raise FileNotFoundError(f"{root}: the model has no artifact {key!r}")


def _download_location(mlflow_client: Any, model_uri: str, version: Any | None) -> str:
    """Where the model's files are, resolved through ``mlflow_client``'s own store.

    MLflow resolves a ``models:/`` URI through the process-wide registry URI whatever tracking
    URI is passed, so registered versions and logged models are looked up here instead."""
    if version is not None:
        location = mlflow_client.get_model_version_download_uri(version.name, version.version)
    else:
        location = model_uri
    if location.startswith("models:/"):  # a logged model: models:/<model_id>
        model_id = location.removeprefix("models:/").strip("/")
        location = mlflow_client.get_logged_model(model_id).artifact_location
    return location


def load_registered_motion_module(
    model_uri: str, tracking_uri: str | None = None
) -> tuple[Any, MotionModuleConfig, dict[str, Any]]:
    """``(MotionModules, MotionModuleConfig, metadata)`` of a registered (or logged) model.

    ``model_uri``: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/<model_id>``,
    ``runs:/...`` or a local model directory; read from ``tracking_uri`` (also the registry), never
    from MLflow's process-wide URIs; empty/None: ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` (what ``jobs.train`` uses by default). ``metadata``: ``name``,
    ``version``, ``aliases``, ``run_id``, ``val_loss``, ``base`` (the ``model.base`` config dict of
    the frozen base it animates) and ``config`` (the full training config dict, for sampling
    defaults)."""
    with tempfile.TemporaryDirectory() as directory:
        local, metadata = _download_model(model_uri, tracking_uri, directory)
        modules, motion_cfg = load_motion_modules(_find_artifact(local, MOTION_ARTIFACT))
        metadata["base"] = json.loads(_find_artifact(local, "base", BASE_ARTIFACT).read_text())
        metadata["config"] = to_dict(load_config(_find_artifact(local, "config", CONFIG_ARTIFACT)))
    return modules, motion_cfg, metadata


def _download_model(
    model_uri: str, tracking_uri: str | None, directory: str
) -> tuple[Path, dict[str, Any]]:
    """``(local directory, metadata)`` of a registered or logged model (or a local directory
    as is), downloaded into ``directory``; see ``load_registered_motion_module``."""
    import mlflow

    # The same store as training: explicit, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
    tracking_uri = resolve_tracking_uri(MlflowConfig(tracking_uri=tracking_uri or ""))
    metadata: dict[str, Any] = {"model_uri": model_uri, "name": None, "version": None}
    location = model_uri
    if model_uri.startswith("models:/"):
        mlflow_client = client(tracking_uri)
        name, version, alias = _parse_models_uri(model_uri)
        found = None
        if alias:
            found = mlflow_client.get_model_version_by_alias(name, alias)
        elif version:
            found = mlflow_client.get_model_version(name, version)
        elif not name.startswith("m-"):  # MLflow's logged-model ids are m-<hex>
            raise ValueError(
                f"{model_uri}: expected models:/<name>@<alias>, models:/<name>/<version> "
                "or models:/<logged model id>"
            )
        if found is not None:
            tags = dict(found.tags or {})
            metadata.update(
                name=name,
                version=str(found.version),
                aliases=list(found.aliases or []),
                run_id=found.run_id,
                val_loss=float(tags[VAL_LOSS_TAG]) if VAL_LOSS_TAG in tags else None,
                tags=tags,
            )
        location = _download_location(mlflow_client, model_uri, found)
    local = Path(model_uri)
    if not local.exists():
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location,
                dst_path=directory,
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        )
    return local, metadata


def registered_model_name(cfg: Config) -> str:
    """The registered model that Serve and generation read: ``serve.model_name`` or
    ``mlflow.registered_model``."""
    return cfg.serve.model_name or cfg.mlflow.registered_model


@dataclass(frozen=True)
class MotionSource:
    """A motion module pinned to concrete weights: a checkpoint, or one registered version (an
    alias is resolved once, so every reader loads the same version even if the alias moves)."""

    uri: str
    """A checkpoint in any format ``checkpoints.load_any`` reads, or ``models:/<name>/<version>``."""
    version: str
    """The registered version, or ``local`` for a checkpoint."""
    tracking_uri: str


def resolve_motion_source(ref: str, cfg: Config) -> MotionSource:
    """What ``ref`` names, pinned: an existing checkpoint path (native, original or diffusers
    format), ``models:/<name>@<alias>`` / ``models:/<name>/<version>``, or an alias or version of
    ``registered_model_name(cfg)``; empty: ``mlflow.champion_alias``."""

    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    if ref.startswith("s3://") or (ref and Path(ref).expanduser().exists()):
        uri = ref if ref.startswith("s3://") else str(Path(ref).expanduser().resolve())
        return MotionSource(uri, "local", tracking_uri)
    name = registered_model_name(cfg)
    if ref.startswith("models:/"):
        name, version, alias = _parse_models_uri(ref)
        ref = alias or version or ""
    version = resolve_model_ref(
        ref or None, read_snapshot(tracking_uri, name), cfg.mlflow.champion_alias
    )
    return MotionSource(f"models:/{name}/{version}", version, tracking_uri)


def load_motion(source: MotionSource, cfg: Config) -> tuple[Any, Config]:
    """``(MotionModules, cfg animating with them)``: the loaded weights and ``cfg`` with the
    motion-module config they were saved with, adapted to ``cfg.model.motion``
    (``checkpoints.adapt_to``: e.g. position tables resized to ``model.motion.max_frames``)."""
    if source.version == "local":
        modules, motion_cfg = load_any(source.uri, defaults=cfg.model.motion)
    else:
        modules, motion_cfg, _ = load_registered_motion_module(source.uri, source.tracking_uri)
    return modules, cfg.with_motion(adapt_to(modules, motion_cfg, cfg.model.motion))


@dataclass(frozen=True)
class MotionLoraSource:
    """A MotionLoRA pinned to concrete weights, and the scale to merge it at."""

    name: str
    """What was asked for (a registered LoRA name, a URI or a path)."""
    uri: str
    """A MotionLoRA file or directory (either format), or ``models:/<name>/<version>``."""
    version: str
    """The registered version, or ``local``."""
    tracking_uri: str
    scale: float = 1.0

    def label(self) -> str:
        """``name:version@scale``: how indexes and response headers name it."""
        return f"{self.name}:{self.version}@{self.scale:g}"


def resolve_motion_lora(ref: str, cfg: Config, scale: float = 1.0) -> MotionLoraSource:
    """What a MotionLoRA reference names, pinned: a file or directory (local or ``s3://``), a
    ``models:/`` URI, or ``name`` / ``name@alias`` / ``name/version`` among the MotionLoRAs
    registered for ``registered_model_name(cfg)`` (``tracking.model_refs.resolve_lora_ref``)."""
    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    if ref.startswith("s3://") or Path(ref).expanduser().exists():
        uri = ref if ref.startswith("s3://") else str(Path(ref).expanduser().resolve())
        return MotionLoraSource(ref, uri, "local", tracking_uri, scale)
    if ref.startswith("models:/"):
        name, version, alias = _parse_models_uri(ref)
        pinned = resolve_model_ref(
            alias or version, read_snapshot(tracking_uri, name), cfg.mlflow.champion_alias
        )
        return MotionLoraSource(ref, f"models:/{name}/{pinned}", pinned, tracking_uri, scale)
    loras = read_motion_lora_snapshots(tracking_uri, registered_model_name(cfg))
    name, version = resolve_lora_ref(ref, loras, cfg.mlflow.champion_alias, "motion_loras")
    return MotionLoraSource(ref, f"models:/{name}/{version}", version, tracking_uri, scale)


def load_motion_lora(source: MotionLoraSource) -> Any:
    """The ``animatediff.motion_lora.MotionLora`` a source names (downloaded when registered)."""
    from animatediff.motion_lora import META_FILE, ORIGINAL_FILE, read_motion_lora
    from animatediff.storage import locate, read_bytes

    with tempfile.TemporaryDirectory() as directory:
        if source.version != "local":
            local, _ = _download_model(source.uri, source.tracking_uri, directory)
            found = sorted({p.parent for p in local.rglob(META_FILE)})
            found = found or sorted({p.parent for p in local.rglob(ORIGINAL_FILE)})
            if len(found) != 1:
                raise FileNotFoundError(f"{source.uri}: expected one MotionLoRA, found {found}")
            return read_motion_lora(found[0])
        if source.uri.startswith("s3://"):  # a single file: fetched, then read like a local one
            target = Path(directory) / source.uri.rstrip("/").rsplit("/", 1)[-1]
            target.write_bytes(read_bytes(locate(source.uri)))
            return read_motion_lora(target)
        return read_motion_lora(source.uri)


def apply_motion_loras(modules: Any, sources: list[MotionLoraSource]) -> Any:
    """``modules`` with every source's MotionLoRA merged at its scale (a copy; ``modules`` is
    left as it is)."""
    from animatediff.motion_lora import merge_motion_loras

    loras = [(load_motion_lora(source), source.scale) for source in sources]
    return merge_motion_loras(modules, loras, [source.label() for source in sources])


# ---------------------------------------------------------------------------------------------
# Promotion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    """The version is (now) the champion."""
    reason: str
    changed: bool = True
    """False when the version already was the champion: nothing moved."""


def should_promote(candidate_loss: float | None, champion_loss: float | None) -> Decision:
    """Promote when there is no champion yet, or the candidate's validation loss is not worse.

    A candidate without a logged validation loss is never promoted over an existing champion."""
    if champion_loss is None:
        return Decision(True, "no current champion")
    if candidate_loss is None or math.isnan(candidate_loss):
        return Decision(False, "the candidate has no validation loss")
    if candidate_loss <= champion_loss:
        return Decision(True, f"val_loss {candidate_loss:.6g} <= champion's {champion_loss:.6g}")
    return Decision(False, f"val_loss {candidate_loss:.6g} > champion's {champion_loss:.6g}")


def _version_loss(mlflow_client: Any, name: str, version: Any) -> float | None:
    """The validation loss of a version: its tag, else the ``val_loss`` metric of its run."""
    tags = dict(version.tags or {})
    if VAL_LOSS_TAG in tags:
        return float(tags[VAL_LOSS_TAG])
    if version.run_id:
        metric = mlflow_client.get_run(version.run_id).data.metrics.get("val_loss")
        return None if metric is None else float(metric)
    return None


_OPS = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


@dataclass(frozen=True)
class Requirement:
    """One ``mlflow.promote_require`` condition: ``<metric> <op> <number|champion>`` on the
    ``eval/<metric>`` value that ``jobs.evaluate`` logged to the version's run."""

    metric: str
    op: str
    threshold: float | None
    """None: the champion's own value (a candidate must not be worse than it)."""

    @classmethod
    def parse(cls, text: str) -> Requirement:
        parts = text.split()
        if len(parts) != 3 or parts[1] not in _OPS:
            raise ConfigError(
                f"mlflow.promote_require: {text!r} is not '<metric> <op> <number|champion>' "
                f"(ops: {', '.join(_OPS)})"
            )
        metric, op, value = parts
        if value == "champion":
            return cls(metric, op, None)
        try:
            return cls(metric, op, float(value))
        except ValueError as error:
            raise ConfigError(
                f"mlflow.promote_require: {text!r}: {value!r} is neither a number nor 'champion'"
            ) from error

    def failure(self, candidate: float | None, champion: float | None) -> str | None:
        """Why the candidate fails this requirement, or None when it passes."""
        if candidate is None or math.isnan(candidate):
            return f"the candidate has no eval/{self.metric} (run jobs.evaluate on it first)"
        threshold = champion if self.threshold is None else self.threshold
        if threshold is None:  # no champion yet to compare with
            return None
        if not _OPS[self.op](candidate, threshold):
            source = "the champion's" if self.threshold is None else "required"
            return f"{self.metric} {candidate:.6g} is not {self.op} {source} {threshold:.6g}"
        return None


def _eval_metric(mlflow_client: Any, version: Any, metric: str) -> float | None:
    """``eval/<metric>`` of a version's run, as ``jobs.evaluate`` logs it."""
    if version is None or not version.run_id:
        return None
    value = mlflow_client.get_run(version.run_id).data.metrics.get(f"eval/{metric}")
    return None if value is None else float(value)


def promote(
    cfg: Config, tracking_uri: str, version: str | None = None, force: bool = False
) -> tuple[Decision, str]:
    """Move ``mlflow.champion_alias`` to ``version`` (default: the ``candidate``) if it passes
    ``should_promote`` and every ``mlflow.promote_require`` (or ``force``); returns the decision
    and the version considered."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    name = cfg.mlflow.registered_model
    if version is None:
        candidate = mlflow_client.get_model_version_by_alias(name, cfg.mlflow.candidate_alias)
    else:
        candidate = mlflow_client.get_model_version(name, version)
    try:
        champion = mlflow_client.get_model_version_by_alias(name, cfg.mlflow.champion_alias)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(candidate.version):
        reason = f"version {candidate.version} already is the champion"
        return Decision(True, reason, changed=False), str(candidate.version)
    decision = should_promote(
        _version_loss(mlflow_client, name, candidate),
        None if champion is None else _version_loss(mlflow_client, name, champion),
    )
    for requirement in map(Requirement.parse, cfg.mlflow.promote_require):
        failure = requirement.failure(
            _eval_metric(mlflow_client, candidate, requirement.metric),
            _eval_metric(mlflow_client, champion, requirement.metric),
        )
        if decision.promote and failure:
            decision = Decision(False, failure)
    if force and not decision.promote:
        decision = Decision(True, f"forced ({decision.reason})")
    if decision.promote:
        mlflow_client.set_registered_model_alias(
            name, cfg.mlflow.champion_alias, str(candidate.version)
        )
    return decision, str(candidate.version)
