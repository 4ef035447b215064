"""The MLflow model registry: a trained motion module as a text-to-video ``pyfunc`` model.

    version = register_motion_module(cfg, motion_dir, run_id, tracking_uri, val_loss=0.12)
    modules, motion_cfg, meta = load_registered_motion_module("models:/animatediff-motion-module@champion")
    videos = mlflow.pyfunc.load_model("models:/...@candidate").predict(pd.DataFrame({"prompt": [...]}))

A registered version's artifacts: ``motion_module`` (a folder, whatever its name, holding the
native ``motion_module.safetensors`` + ``motion_module.json``) and ``config.yaml`` (the training
config: ``model.base`` is the reference to the frozen base it animates, ``sample`` the sampling
defaults). New versions get the alias ``candidate``; ``promote`` moves ``champion`` after
comparing validation losses.

A version is created only for new weights: its tag ``weights_sha256`` (the sha256 of the
export's weight file) is looked up first, and identical weights move ``candidate`` to the version
that already holds them. Version tags: ``weights_sha256``, ``step``, ``data_fingerprint``,
``git_commit``, ``stage``, ``base``, ``preset``, ``val_loss``; its description says what trained
it, and ``record_evaluation`` adds what ``jobs.evaluate`` measured.
"""

from __future__ import annotations

import hashlib
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
from tracking import notes
from tracking.datasets import CONTEXT_TAG
from tracking.model_refs import (
    motion_lora_model_name,
    read_motion_lora_snapshots,
    read_snapshot,
    resolve_lora_ref,
    resolve_model_ref,
)
from tracking.provenance import code_version, source_tags
from tracking.runs import (
    LOSS_METRIC,
    TRAIN_PARAM_SECTIONS,
    VAL_LOSS_METRIC,
    add_event,
    client,
    resolve_tracking_uri,
    run_link,
    section_params,
    sqlite_database,
)

MOTION_ARTIFACT = "motion_module"
CONFIG_ARTIFACT = "config.yaml"
BASE_ARTIFACT = "base.json"
VAL_LOSS_TAG = "val_loss"
WEIGHTS_TAG = "weights_sha256"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(export_path: str | Path) -> str:
    """The sha256 of an export's weights: of the file itself, of a directory's one weight file
    (``sha256sum motion_module.safetensors`` gives the same), else of the sorted lines
    ``<relative path> <sha256>`` of its weight files (all its files when none has a weight
    suffix)."""
    path = Path(export_path)
    if path.is_file():
        return _file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES] or files
    if len(weights) == 1:
        return _file_sha256(weights[0])
    lines = "".join(f"{p.relative_to(path).as_posix()} {_file_sha256(p)}\n" for p in weights)
    return hashlib.sha256(lines.encode()).hexdigest()


def _identical_version(cfg: Config, tracking_uri: str, run_id: str, sha256: str) -> str | None:
    """The version of ``registered_name(cfg)`` that already holds these weights, if any: then
    ``candidate`` moves to it (it is what this training produced), and the run and the log say
    so. None when the weights are new."""
    name = registered_name(cfg)
    mlflow_client = client(tracking_uri)
    found = mlflow_client.search_model_versions(
        f"name = '{name}' and tags.{WEIGHTS_TAG} = '{sha256}'"
    )
    if not found:
        return None
    version = str(min(int(v.version) for v in found))
    mlflow_client.set_registered_model_alias(name, cfg.mlflow.candidate_alias, version)
    message = (
        f"identical weights (sha256 {sha256[:12]}) are already {name} version {version}: "
        f"no new version; @{cfg.mlflow.candidate_alias} -> version {version}"
    )
    print(f"registry: {message}", flush=True)
    add_event(tracking_uri, run_id, message)
    return version


def _training_data(run: Any, tracking_uri: str) -> tuple[str | None, Any]:
    """``(markdown line, dataset)`` of the run's ``training`` dataset input, if it logged one:
    name, clips, URI, digest and links to the preprocess runs that wrote it."""
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        if tags.get(CONTEXT_TAG) == "training":
            dataset = dataset_input.dataset
            profile = json.loads(dataset.profile or "{}")
            uri = json.loads(dataset.source or "{}").get("uri", "?")
            line = (
                f"`{dataset.name}`: {profile.get('clips', '?')} clips at `{uri}` "
                f"(digest `{dataset.digest}`)"
            )
            preprocess = [run_link(tracking_uri, r) for r in profile.get("preprocess_runs", [])]
            if preprocess:
                line += "; written by preprocess run " + ", ".join(preprocess)
            return line, dataset
    return None, None


def _attach_metrics(mlflow_client: Any, run_id: str, model_id: str, dataset: Any) -> None:
    """The run's last training and validation losses, attached to the logged model (re-logged
    with their own step and time: the run's history gains no point)."""
    from mlflow.entities import Metric

    metrics = []
    for key in (LOSS_METRIC, VAL_LOSS_METRIC):
        history = mlflow_client.get_metric_history(run_id, key)
        if not history:
            continue
        last = max(history, key=lambda m: (m.step, m.timestamp))
        metrics.append(
            Metric(
                key,
                last.value,
                last.timestamp,
                last.step,
                model_id=model_id,
                dataset_name=dataset.name if dataset is not None else None,
                dataset_digest=dataset.digest if dataset is not None else None,
            )
        )
    if metrics:
        mlflow_client.log_batch(run_id, metrics=metrics)


def _ensure_registered_model(mlflow_client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if not mlflow_client.get_registered_model(name).description:
            mlflow_client.update_registered_model(name, description=description)


def _register(
    cfg: Config,
    model_dir: Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None,
    model_type: str,
    sha256: str,
    step: int | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """Log ``model_dir`` as an MLflow logged model of ``run_id`` (named ``model_type``, with
    the version's tags, the training params and the run's last losses), register it under
    ``registered_name(cfg)`` with alias ``mlflow.candidate_alias`` (``extra_tags`` on the version
    too, e.g. the motion module a run started from); returns the version. Only client calls on
    ``tracking_uri``: MLflow's process-wide settings are untouched."""
    from mlflow.entities import LoggedModelOutput

    mlflow_client = client(tracking_uri)
    name = registered_name(cfg)
    run = mlflow_client.get_run(run_id)
    data_line, dataset = _training_data(run, tracking_uri)
    code = code_version()
    tags = {
        WEIGHTS_TAG: sha256,
        "base": cfg.model.base.pretrained,
        "stage": cfg.train.stage,
    }
    optional = {
        "step": step,
        "data_fingerprint": run.data.tags.get("data_fingerprint"),
        "git_commit": code.commit if code else None,
        "preset": cfg.preset or None,
        VAL_LOSS_TAG: None if val_loss is None else repr(float(val_loss)),
    }
    tags |= {key: str(value) for key, value in optional.items() if value is not None}
    tags |= extra_tags or {}
    params = {k: str(v) for k, v in section_params(cfg, TRAIN_PARAM_SECTIONS).items()}
    logged = mlflow_client.create_logged_model(
        run.info.experiment_id,
        name=model_type,
        source_run_id=run_id,
        model_type=model_type,
        tags={**source_tags("train"), **tags},
        params=params,
    )
    mlflow_client.log_model_artifacts(logged.model_id, str(model_dir))
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    # The run lists it among its Logged models (the source run id alone does not).
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step or 0)])
    _attach_metrics(mlflow_client, run_id, logged.model_id, dataset)
    _ensure_registered_model(mlflow_client, name, notes.registered_model(cfg, cfg.train.stage))
    description = notes.model_version(
        cfg, run_link(tracking_uri, run_id), step, data_line, val_loss, sha256, code
    )
    # The logged model's artifact location as the source, not ``models:/<id>``: MLflow's SQL
    # registry would look that id up through the process-wide tracking URI.
    version = mlflow_client.create_model_version(
        name,
        logged.artifact_location,
        run_id=run_id,
        tags=tags,
        description=description,
        model_id=logged.model_id,
    ).version
    mlflow_client.set_registered_model_alias(name, cfg.mlflow.candidate_alias, str(version))
    add_event(
        tracking_uri,
        run_id,
        f"registered {name} version {version} (@{cfg.mlflow.candidate_alias}), "
        f"weights sha256 {sha256[:12]}",
    )
    return str(version)


def registered_versions(cfg: Config, tracking_uri: str, run_id: str) -> list[str]:
    """Versions of ``registered_name(cfg)`` registered from ``run_id``, oldest first."""
    found = client(tracking_uri).search_model_versions(
        f"name = '{registered_name(cfg)}' and run_id = '{run_id}'"
    )
    return sorted((str(v.version) for v in found), key=int)


def register_motion_module(
    cfg: Config,
    motion_dir: str | Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None = None,
    step: int | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register a native motion-module directory as a text-to-video pyfunc model (see
    ``_register``); returns the version, an existing one when it holds the same weights."""
    import mlflow.pyfunc

    sha256 = weights_sha256(motion_dir)
    existing = _identical_version(cfg, tracking_uri, run_id, sha256)
    if existing is not None:
        return existing

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
        return _register(
            cfg, model_dir, run_id, tracking_uri, val_loss, "motion-module", sha256, step, tags
        )


def register_export(
    cfg: Config,
    export_path: Path,
    run_id: str,
    tracking_uri: str,
    val_loss: float | None = None,
    step: int | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register what a training run exported: a motion module as a pyfunc model, an image-stage
    StableDiffusion directory or LoRA file, or a MotionLoRA directory as plain artifacts (with the
    training config). ``tags`` go on the version (e.g. the motion module a run started from).
    Identical weights are not registered again (see ``_identical_version``)."""
    if cfg.train.stage == "motion":
        return register_motion_module(cfg, export_path, run_id, tracking_uri, val_loss, step, tags)
    sha256 = weights_sha256(export_path)
    existing = _identical_version(cfg, tracking_uri, run_id, sha256)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory() as directory:
        model_dir = Path(directory)
        save_config(cfg, model_dir / CONFIG_ARTIFACT)
        if export_path.is_dir():
            shutil.copytree(export_path, model_dir / export_path.name)
        else:
            shutil.copyfile(export_path, model_dir / export_path.name)
        model_type = f"{cfg.train.stage}-model"
        return _register(
            cfg, model_dir, run_id, tracking_uri, val_loss, model_type, sha256, step, tags
        )


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


def version_loss(mlflow_client: Any, name: str, version: Any) -> float | None:
    """The validation loss of a version: its tag, else the ``val/loss`` metric of its run."""
    tags = dict(version.tags or {})
    if VAL_LOSS_TAG in tags:
        return float(tags[VAL_LOSS_TAG])
    if version.run_id:
        metric = mlflow_client.get_run(version.run_id).data.metrics.get(VAL_LOSS_METRIC)
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


class RegistryError(ConfigError):
    """The registry does not hold what was asked for; the message names the option and what it
    does hold."""


def promote_preflight(tracking_uri: str) -> None:
    """A SQLite store must exist before promoting from it: MLflow would create an empty one (a
    stray ``mlflow.db`` in the working directory when ``--config`` was forgotten)."""
    database = sqlite_database(tracking_uri)
    if database is not None and not Path(database).is_file():
        raise RegistryError(
            f"mlflow.tracking_uri: {tracking_uri} does not exist (nothing was registered there); "
            "pass --config with the preset that trained the model, or mlflow.tracking_uri=..."
        )


def _missing(mlflow_client: Any, name: str, tracking_uri: str, asked: str) -> RegistryError:
    """Why ``asked`` is not in the registry, with what it does hold."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in mlflow_client.search_registered_models(max_results=20))
        return RegistryError(
            f"mlflow.registered_model: no model {name!r} in {tracking_uri} (registered: "
            f"{', '.join(known) or 'none'}); pass --config with the preset that trained it"
        )
    versions = sorted(
        (str(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")), key=int
    )
    aliases = ", ".join(f"{a}={v}" for a, v in sorted((model.aliases or {}).items())) or "none"
    return RegistryError(
        f"{asked}: not in {name!r} (versions: {', '.join(versions) or 'none'}; aliases: {aliases})"
    )


def promote(
    cfg: Config, tracking_uri: str, version: str | None = None, force: bool = False
) -> tuple[Decision, str]:
    """Move ``mlflow.champion_alias`` to ``version`` (default: the ``candidate``) if it passes
    ``should_promote`` and every ``mlflow.promote_require`` (or ``force``); returns the decision
    and the version considered. Raises ``RegistryError`` naming the option when the model,
    version or alias is not registered."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    name = cfg.mlflow.registered_model
    try:
        if version is None:
            candidate = mlflow_client.get_model_version_by_alias(name, cfg.mlflow.candidate_alias)
        else:
            candidate = mlflow_client.get_model_version(name, version)
    except MlflowException as error:
        asked = (
            f"mlflow.candidate_alias {cfg.mlflow.candidate_alias!r}"
            if version is None
            else f"--version {version}"
        )
        raise _missing(mlflow_client, name, tracking_uri, asked) from error
    try:
        champion = mlflow_client.get_model_version_by_alias(name, cfg.mlflow.champion_alias)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(candidate.version):
        reason = f"version {candidate.version} already is the champion"
        return Decision(True, reason, changed=False), str(candidate.version)
    decision = should_promote(
        version_loss(mlflow_client, name, candidate),
        None if champion is None else version_loss(mlflow_client, name, champion),
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


def record_evaluation(
    tracking_uri: str, name: str, version: str, summary: dict[str, float], run_id: str
) -> None:
    """Put ``summary`` (what ``jobs.evaluate`` measured) in the version's description, replacing
    an earlier evaluation's, with a link to the run that holds the details."""
    mlflow_client = client(tracking_uri)
    current = mlflow_client.get_model_version(name, version).description or ""
    where = f"details in run {run_link(tracking_uri, run_id)}"
    mlflow_client.update_model_version(
        name, version, description=notes.with_evaluation(current, summary, where)
    )
