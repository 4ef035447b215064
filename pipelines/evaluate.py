"""Scoring a motion module: the held-out denoising loss and its frame-order check, then videos
generated from a prompts file and scored, a report, and MLflow.

    result = run_evaluation(cfg)                  # needs a running Ray
    results = run_evaluations([cfg_a, cfg_b])     # several models in one pass

``ScoreVideos`` is a Ray Data actor (like ``generate.VideoWriter``): it loads a model's pipeline
and feature extractor once, generates each batch of prompts, writes the videos and scores them
(``animatediff.evaluation.score_video``). While the actors generate, the driver measures the
held-out losses; then it writes ``report.md``, ``contact_sheet.png``, ``metrics.json`` and
``videos.jsonl`` to ``<output_dir>/<evaluate.output_subdir>`` and logs the metrics (``eval/*``)
and files to MLflow, for each model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, LoraTrainConfig, from_dict, to_dict
from animatediff.generation import GenerationParams, generate_all
from animatediff.storage import locate, read_bytes, write_atomic
from pipelines.generate import read_prompts
from tracking.registry import MotionSource, load_motion, resolve_motion_source

SUMMARY_COLUMNS = (
    "held_out_loss",
    "held_out_loss_permuted",
    "order_sensitivity",
    "direction_accuracy",
    "displacement_per_frame",
    "trajectory_residual",
    "moving_share",
    "frame_consistency",
    "label_share",
    "label_agreement",
    "motion_magnitude",
    "text_alignment",
)


class ScoreVideos:
    """A Ray Data actor: generates batches of prompt rows, writes and scores the videos.

    ``models`` holds ``(config, source, out_dir)`` per model; each row names its model by index.
    The actor holds one model's pipeline at a time: the rows come model by model, so it loads
    each model about once."""

    def __init__(self, models: list[tuple[dict[str, Any], MotionSource, str]]) -> None:
        self.models = models
        self.loaded: int | None = None

    def _load(self, model: int) -> None:
        from animatediff.features import load_extractor
        from animatediff.sampling import TextToVideo

        if model == self.loaded:
            return
        config, source, out_dir = self.models[model]
        cfg = from_dict(Config, config)
        self.pipeline = None  # the previous model's weights go before the next model's load
        modules, self.cfg = load_motion(source, cfg)
        self.pipeline = TextToVideo(self.cfg, modules)
        self.extractor = load_extractor(cfg.evaluate.features)
        self.root = locate(out_dir, cfg.storage)
        self.loaded = model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["index"])
        rows = [{key: np.asarray(batch[key][i]).item() for key in batch} for i in range(count)]
        out = []
        for model, group in itertools.groupby(rows, key=lambda row: row["model"]):
            self._load(model)
            out += self._score(list(group))
        return {key: np.stack([item[key] for item in out]) for key in out[0]}

    def _score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One model's rows: generated together, written and scored."""
        from animatediff.evaluation import score_video
        from animatediff.export import export_video
        from animatediff.report import pick_frames

        evaluate = self.cfg.evaluate
        fields = {f.name for f in dataclasses.fields(GenerationParams)}
        requests = [GenerationParams(**{k: v for k, v in r.items() if k in fields}) for r in rows]
        out = []
        for row, params, result in zip(rows, requests, generate_all(self.pipeline, requests)):
            name = f"{row['index']:05d}.{params.output_format}"
            video = result.video
            write_atomic(
                self.root.join(name), export_video(video, params.output_format, params.fps)
            )
            scores = score_video(
                video,
                self.extractor,
                json.loads(row["expect"]),
                params.prompt,
                directions=evaluate.directions,
                min_speed=evaluate.min_speed,
            )
            out.append(
                {
                    "model": row["model"],
                    "index": row["index"],
                    "file": name,
                    "scores": json.dumps(scores),
                    "strip": pick_frames(video, evaluate.contact_sheet_frames),
                    "seconds": result.seconds / result.batch_size,
                }
            )
        return out


@dataclass
class EvaluationResult:
    """What ``run_evaluation`` returns."""

    metrics: dict[str, float]
    """Summary metrics (held-out loss, means over the videos)."""
    videos: list[dict[str, Any]]
    """One row per prompt: the prompt, its settings and expectations, its file and scores."""
    report: str
    """The report's location (local path or URI)."""
    contact_sheet: str
    source: MotionSource
    run_id: str | None
    """The MLflow run the metrics went to (None with ``mlflow.enabled: false``)."""


def held_out_set(cfg: Config) -> tuple[Any, dict]:
    """``(location, manifest)`` of the shard set holding the held-out clips:
    ``evaluate.data_uri``, else the validation set that training used."""
    from pipelines.fingerprint import data_fingerprint
    from pipelines.latents import find_shard_set

    evaluate, train = cfg.evaluate, cfg.train
    uri = evaluate.data_uri or train.val_data_uri or train.data_uri
    if not uri:
        raise ValueError("evaluate.data_uri: set it (or train.data_uri) to held-out shards")
    return find_shard_set(uri, data_fingerprint(cfg), cfg.storage)


def _held_out_batches(cfg: Config, shard_set: tuple[Any, dict] | None = None) -> list[Any]:
    """The evaluation's held-out clips: ``evaluate.data_uri``, else the validation split that
    training used."""
    from animatediff.training import BATCH_COLUMNS
    from trainer.data import held_out_clips, read_bucket_clips, read_clips, validation_batches

    evaluate, train = cfg.evaluate, cfg.train
    location, manifest = shard_set or held_out_set(cfg)
    clip_ids = None
    if not evaluate.data_uri and not train.val_data_uri:
        clip_ids, _ = held_out_clips(location, manifest, train.val_max_clips)
    read = read_bucket_clips if cfg.data.buckets else read_clips  # buckets: a shape per bucket
    clips = read(location, manifest, evaluate.max_clips, list(BATCH_COLUMNS), clip_ids)
    return validation_batches(clips, max(1, train.batch_size))


def held_out_metrics(
    cfg: Config, modules: Any, shard_set: tuple[Any, dict] | None = None
) -> dict[str, float]:
    """``held_out_loss`` (mean over ``evaluate.timesteps`` fixed timesteps), one
    ``held_out_loss_t<t>`` per timestep, ``held_out_loss_permuted`` and ``order_sensitivity``."""
    from animatediff.evaluation import fixed_timesteps, frame_permutation, held_out_loss
    from animatediff.training import build_training_model

    evaluate = cfg.evaluate
    # The model is ``modules`` on the frozen base: whatever a training section says about how a
    # run starts (train.init_from) or what it trains (MotionLoRA adapters) does not apply.
    plain = dataclasses.replace(cfg.train, stage="motion", init_from="", lora=LoraTrainConfig())
    model = build_training_model(dataclasses.replace(cfg, train=plain))
    model.unet.motion_modules.load_state_dict(modules.state_dict())
    model.unet.eval()
    batches = _held_out_batches(cfg, shard_set)
    steps = fixed_timesteps(evaluate.timesteps, cfg.model.diffusion.num_train_timesteps)
    ordered = held_out_loss(model, batches, cfg, steps, evaluate.seed)
    order = frame_permutation(batches[0].latent_mean.shape[2], evaluate.seed)
    permuted = held_out_loss(model, batches, cfg, steps, evaluate.seed, frame_order=order)
    metrics = {f"held_out_loss_t{t:04d}": loss for t, loss in ordered.items()}
    metrics["held_out_loss"] = float(np.mean(list(ordered.values())))
    metrics["held_out_loss_permuted"] = float(np.mean(list(permuted.values())))
    metrics["order_sensitivity"] = metrics["held_out_loss_permuted"] - metrics["held_out_loss"]
    metrics["held_out_clips"] = float(sum(len(batch) for batch in batches))
    return metrics


def _report(cfg: Config, source: MotionSource, metrics: dict, videos: list[dict]) -> str:
    from animatediff.report import markdown_table

    summary = [{"metric": k, "value": metrics[k]} for k in SUMMARY_COLUMNS if k in metrics]
    columns = [
        "index",
        "prompt",
        "seed",
        "direction",
        "displacement_per_frame",
        "trajectory_residual",
    ]
    columns += [
        c for c in ("direction_correct", "label_share", "frame_consistency") if c in videos[0]
    ]
    return "\n".join(
        [
            f"# Evaluation of {source.uri}",
            "",
            f"Base: `{cfg.model.base.pretrained}`; features: `{cfg.evaluate.features}`; "
            f"{cfg.sample.num_inference_steps} {cfg.sample.scheduler} steps, guidance "
            f"{cfg.sample.guidance_scale}.",
            "",
            markdown_table(summary, ["metric", "value"]),
            "",
            markdown_table(videos, columns),
            "",
            "![contact sheet](contact_sheet.png)",
            "",
        ]
    )


def _log(
    cfg: Config,
    source: MotionSource,
    metrics: dict,
    files: dict[str, bytes],
    videos: list[dict[str, Any]],
    shard_set: tuple[Any, dict],
) -> str | None:
    """Log to the version's training run (``evaluate.log_to: model_run``) or to a run of its own:
    ``eval/*`` metrics, the report files, the per-video scores as a table, the held-out shards as
    an ``evaluation`` dataset; the version's description gets the summary. Returns the run id."""
    from tracking.datasets import ShardSet, log_shard_set
    from tracking.provenance import run_tags
    from tracking.registry import record_evaluation
    from tracking.runs import RunLogger, client, experiment_id

    if not cfg.mlflow.enabled:
        return None
    mlflow_client = client(source.tracking_uri)
    run_id = name = None
    if source.version != "local":
        name = source.uri.removeprefix("models:/").rsplit("/", 1)[0]
    if cfg.evaluate.log_to == "model_run" and name is not None:
        run_id = mlflow_client.get_model_version(name, source.version).run_id
    shards = ShardSet.of(shard_set[0].uri, shard_set[1])
    if run_id is None:
        experiment = dataclasses.replace(cfg.mlflow, experiment=f"{cfg.mlflow.experiment}-eval")
        tags = run_tags(cfg, "evaluate", shards.fingerprint)
        tags |= {"model_uri": source.uri, "model_version": source.version}
        description = (
            "Evaluation runs of `python -m jobs.evaluate` with `evaluate.log_to: own_run`: "
            "`eval/*` metrics, the report, the per-video `evaluation/scores.json` table and the "
            "held-out shards (an `evaluation` dataset). With `model_run` they go to the version's "
            "training run instead."
        )
        run = mlflow_client.create_run(
            experiment_id(experiment, source.tracking_uri, description),
            run_name=f"evaluate-{source.version}",
            tags=tags,
        )
        run_id = run.info.run_id
    logger = RunLogger(source.tracking_uri, run_id)
    logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=0)
    log_shard_set(source.tracking_uri, run_id, shards, "evaluation")
    with tempfile.TemporaryDirectory() as directory:
        for file_name, data in files.items():
            (Path(directory) / file_name).write_bytes(data)
        logger.log_artifacts(directory, "evaluation")
    mlflow_client.log_table(run_id, _score_table(videos), "evaluation/scores.json")
    if name is not None:
        summary = {k: metrics[k] for k in SUMMARY_COLUMNS if k in metrics}
        record_evaluation(source.tracking_uri, name, source.version, summary, run_id)
    if cfg.evaluate.log_to == "own_run":
        mlflow_client.set_terminated(run_id)
    return run_id


def preflight(cfg: Config) -> None:
    """``jobs.evaluate`` before Ray starts: the prompts file exists and parses, the model and the
    held-out data can be found, ``output_dir`` is not a file (``ConfigError`` naming the option)."""
    from animatediff.config import ConfigError
    from animatediff.preflight import check_base_model, check_input_file, check_output_dir
    from tracking.model_refs import UnknownModelError

    evaluate = cfg.evaluate
    check_input_file(evaluate.prompts, "evaluate.prompts", cfg.storage)
    try:
        text = read_bytes(locate(evaluate.prompts, cfg.storage)).decode("utf-8")
        read_prompts(text, cfg, extra_keys=("expect",))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"evaluate.prompts: {evaluate.prompts}: {error}") from error
    if not (evaluate.data_uri or cfg.train.val_data_uri or cfg.train.data_uri):
        raise ConfigError("evaluate.data_uri: set it (or train.data_uri) to held-out shards")
    try:
        resolve_motion_source(evaluate.model or cfg.mlflow.candidate_alias, cfg)
    except UnknownModelError as error:
        raise ConfigError(f"evaluate.model: {error.reason}") from error
    check_output_dir(cfg.output_dir, "output_dir", cfg.storage)
    check_base_model(cfg.model.base)


def _score_table(videos: list[dict[str, Any]]) -> Any:
    """One row per generated video (prompt, settings, scores; nested values as JSON) and the
    time of this evaluation (MLflow appends to a table logged again)."""
    import pandas as pd

    evaluated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = [
        {
            "evaluated": evaluated,
            **{
                k: json.dumps(v) if isinstance(v, dict | list) else v
                for k, v in video.items()
                if k != "strip"
            },
        }
        for video in videos
    ]
    return pd.DataFrame(rows)


def run_evaluation(cfg: Config) -> EvaluationResult:
    """Score ``evaluate.model`` (see the module docstring). Needs a running Ray."""
    return run_evaluations([cfg])[0]


def run_evaluations(cfgs: Sequence[Config]) -> list[EvaluationResult]:
    """Score each config's ``evaluate.model`` as ``run_evaluation`` does, in one pass: one actor
    pool generates the videos of every model, model after model, while the driver measures their
    held-out losses (once for configs that differ only in how videos are sampled, scored or
    written: ``held_out_key``). The configs share the pool, so their ``generate`` settings must
    be equal; everything else (base, LoRAs, sampling, prompts, held-out data, output) is each
    model's own. Needs a running Ray."""
    import ray

    if not cfgs:
        raise ValueError("run_evaluations: no configuration to evaluate")
    gen = cfgs[0].generate
    if any(cfg.generate != gen for cfg in cfgs):
        raise ValueError(
            "generate: evaluations in one pass share one actor pool; their generate settings differ"
        )
    sources = [
        resolve_motion_source(cfg.evaluate.model or cfg.mlflow.candidate_alias, cfg) for cfg in cfgs
    ]
    # Found before any video is generated: a missing or mismatched set fails in seconds, not
    # after the whole generation (a driver error waits for the pool's videos).
    shard_sets = [held_out_set(cfg) for cfg in cfgs]
    prompts = [_prompt_rows(cfg) for cfg in cfgs]
    out_dirs = [f"{cfg.output_dir.rstrip('/')}/{cfg.evaluate.output_subdir}" for cfg in cfgs]
    items = [{**row, "model": model} for model, rows in enumerate(prompts) for row in rows]
    models = [(to_dict(cfg), src, out) for cfg, src, out in zip(cfgs, sources, out_dirs)]
    scored = ray.data.from_items(items).map_batches(
        ScoreVideos,
        fn_constructor_kwargs={"models": models},
        batch_size=gen.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=gen.num_workers),
        num_cpus=gen.worker_cpus,
        num_gpus=gen.worker_gpus,
    )
    # The actors generate while the driver measures: the two overlap on a machine's cores.
    with ThreadPoolExecutor(max_workers=1) as background:
        generated = background.submit(scored.take_all)
        held_out = _held_out_once(cfgs, sources, shard_sets)
        scored_rows = generated.result()
    by_model: list[dict[int, dict]] = [{} for _ in cfgs]
    for row in scored_rows:
        by_model[int(row["model"])][int(row["index"])] = row
    return [
        _finish(*model)
        for model in zip(
            cfgs, sources, prompts, by_model, held_out, shard_sets, out_dirs, strict=True
        )
    ]


def _prompt_rows(cfg: Config) -> list[dict[str, Any]]:
    """``evaluate.prompts`` as generation rows, each with its ``expect`` as JSON."""
    text = read_bytes(locate(cfg.evaluate.prompts, cfg.storage)).decode("utf-8")
    rows = read_prompts(text, cfg, extra_keys=("expect",))
    for row in rows:
        row["expect"] = json.dumps(row.get("expect") or {})
    return rows


HELD_OUT_EVALUATE_FIELDS = ("model", "data_uri", "max_clips", "timesteps", "seed")
"""The ``evaluate`` options the held-out metrics depend on (the others score and write videos)."""


def held_out_key(cfg: Config, source: MotionSource) -> str:
    """What a model's held-out metrics depend on: the module (its URI and tracking server) and
    every option except how videos are sampled, scored, written and logged. Equal keys give
    equal metrics."""
    fields = to_dict(cfg)
    for name in ("sample", "generate", "mlflow", "output_dir"):
        fields.pop(name)
    fields["evaluate"] = {name: fields["evaluate"][name] for name in HELD_OUT_EVALUATE_FIELDS}
    return json.dumps([dataclasses.asdict(source), fields], sort_keys=True, default=str)


def _held_out_once(
    cfgs: Sequence[Config], sources: Sequence[MotionSource], shard_sets: Sequence[tuple[Any, dict]]
) -> list[dict[str, float]]:
    """Each model's held-out metrics, measured once per ``held_out_key``: configs that differ
    only in sampling (e.g. ``sample.shared_noise``) share one measurement, and the ones that
    reuse it report ``held_out_seconds`` 0."""
    measured: dict[str, dict[str, float]] = {}
    metrics = []
    for cfg, source, shard_set in zip(cfgs, sources, shard_sets, strict=True):
        key = held_out_key(cfg, source)
        if key in measured:
            metrics.append({**measured[key], "held_out_seconds": 0.0})
        else:
            measured[key] = _held_out(cfg, source, shard_set)
            metrics.append(dict(measured[key]))
    return metrics


def _held_out(cfg: Config, source: MotionSource, shard_set: tuple[Any, dict]) -> dict[str, float]:
    """The held-out metrics of one model on its shard set, with ``held_out_seconds``."""
    modules, motion_cfg = load_motion(source, cfg)
    start = time.perf_counter()
    metrics = held_out_metrics(motion_cfg, modules, shard_set)
    metrics["held_out_seconds"] = time.perf_counter() - start
    return metrics


def _finish(
    cfg: Config,
    source: MotionSource,
    rows: list[dict[str, Any]],
    results: dict[int, dict[str, Any]],
    metrics: dict[str, float],
    shard_set: tuple[Any, dict],
    out_dir: str,
) -> EvaluationResult:
    """One model's scored videos and held-out metrics: summary, files, MLflow."""
    from animatediff.evaluation import summarize
    from animatediff.report import contact_sheet, png_bytes

    missing = sorted(set(range(len(rows))) - set(results))
    if missing:
        raise RuntimeError(f"evaluation of {source.uri} lost prompts {missing}")
    # The actors' time on this model's videos (each batch's time shared by its videos).
    metrics["generate_seconds"] = float(sum(result["seconds"] for result in results.values()))
    videos, scores = [], []
    for row in rows:
        result = results[row["index"]]
        scores.append(json.loads(str(result["scores"])))
        expect = json.loads(row["expect"])
        videos.append({**row, "expect": expect, "file": str(result["file"]), **scores[-1]})
    metrics |= summarize(scores)
    sheet = contact_sheet(
        [results[row["index"]]["strip"] for row in rows], [row["prompt"] for row in rows]
    )
    root = locate(out_dir, cfg.storage)
    files = {
        "report.md": _report(cfg, source, metrics, videos).encode(),
        "contact_sheet.png": png_bytes(sheet),
        "metrics.json": json.dumps(metrics, indent=1, sort_keys=True).encode(),
        "videos.jsonl": "".join(json.dumps(v) + "\n" for v in videos).encode(),
    }
    for name, data in files.items():
        write_atomic(root.join(name), data)
    run_id = _log(cfg, source, metrics, files, videos, shard_set)
    return EvaluationResult(
        metrics=metrics,
        videos=videos,
        report=root.join("report.md").uri,
        contact_sheet=root.join("contact_sheet.png").uri,
        source=source,
        run_id=run_id,
    )
