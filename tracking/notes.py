"""The descriptions a person reads in MLflow's UI (markdown): experiments, runs, registered models
and versions, and the events appended to a run's description as it goes.

Text only: the callers in ``tracking.runs``/``registry``/``preprocess`` write it to MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from animatediff.config import Config
from tracking.datasets import ShardSet
from tracking.provenance import CodeVersion

EVENTS_HEADING = "**Events**"
NOTE_LIMIT = 7900
"""MLflow keeps at most 8000 characters in a tag (a description is one)."""

METRICS = """\
Metrics, all at the optimizer step reached (x axis "Step"):
- `train/loss`: the noise-prediction MSE, mean over the steps since the last log and over all \
workers; `val/loss`: the same loss on the fixed validation clips with fixed noise and no caption \
dropout. Same definition and steps: put both on one chart to compare.
- `train/lr`, `train/grad_norm` (before clipping), `train/epoch`.
- `perf/clips_per_s`: training clips per second, summed over all workers (batch size x \
accumulation x workers / step time); `perf/step_time_s`, `perf/iteration_time_s` (logging, \
validation and checkpoints included), `perf/data_wait_fraction`.
- `memory/rss_gib_rank0`, `memory/peak_rss_gib_max_worker`, `memory/gpu_peak_gib_rank0`.
- `system/node<k>/...`: MLflow's system metrics of each node (CPU, memory, disk, network; GPU \
utilisation and memory when there is one), every `train.system_metrics_interval_s` seconds: \
their own tab, "System metrics"."""


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())


def training_experiment(cfg: Config) -> str:
    return (
        f"Training runs of `python -m jobs.train` (AnimateDiff on Ray Train + DeepSpeed), "
        f"registered as `{cfg.mlflow.registered_model}` (motion modules) and "
        f"`{cfg.mlflow.registered_model}-<stage>` (other stages).\n\n"
        "One run per Ray Train run (`train.run_name` under `train.storage_path`), kept across "
        "resumes and worker restarts. Search runs by the tags `preset`, `stage`, `base_model`, "
        "`data_fingerprint`; each run's Datasets are the latent shard sets it read, its "
        "description says what it trained and what happened.\n\n" + METRICS
    )


def code_line(code: CodeVersion | None) -> str:
    if code is None:
        return "not a git checkout (no commit recorded)"
    branch = f" on `{code.branch}`" if code.branch else ""
    return f"git `{code.short}`{branch}"


def training_run(
    cfg: Config,
    data: ShardSet,
    validation: str,
    code: CodeVersion | None,
    run_link: Callable[[str], str],
) -> str:
    """What a training run is, written when it is created."""
    train = cfg.train
    clips = train.batch_size * train.grad_accum_steps * train.num_workers
    preset = f", preset `{cfg.preset}`" if cfg.preset else ""
    return "\n".join(
        [
            f"**{train.stage} stage** training of `{cfg.model.base.pretrained}`{preset}: "
            f"{train.max_steps} steps of {clips} clips each ({train.batch_size} per micro-batch "
            f"x {train.grad_accum_steps} accumulated x {train.num_workers} workers), DeepSpeed "
            f"ZeRO-{train.zero_stage}.",
            "",
            f"- Data: {data.summary(run_link)}",
            f"- Validation: {validation}",
            f"- Code: {code_line(code)}",
            f"- Ray Train run `{train.run_name}` under `{train.storage_path}`: re-running the "
            "same command resumes it.",
            "",
            "Samples: `samples/step<N>/` (GIFs per prompt) and the Images section of Model "
            "metrics (one strip of frames per prompt, with a step slider).",
            "",
            METRICS,
        ]
    )


def add_event(note: str, text: str) -> str:
    """``note`` with ``- <time> <text>`` appended under ``EVENTS_HEADING``; the oldest events
    are dropped when the note would exceed MLflow's limit."""
    head, _, events = note.partition(EVENTS_HEADING)
    lines = [line for line in events.strip().splitlines() if line.strip()]
    lines.append(f"- {now()} {text}")
    head = head.rstrip()
    while True:
        result = f"{head}\n\n{EVENTS_HEADING}\n\n" + "\n".join(lines)
        if len(result) <= NOTE_LIMIT or len(lines) == 1:
            return result[:NOTE_LIMIT]
        lines.pop(0)


def registered_model(cfg: Config, stage: str) -> str:
    what = {
        "motion": "AnimateDiff motion modules (a text-to-video pyfunc model: the motion module, "
        "the training config and the frozen base it animates)",
        "image": "image-stage results: a StableDiffusion directory or a kohya LoRA, with the "
        "training config",
    }.get(stage, f"`{stage}`-stage results with the training config")
    return (
        f"{what}, registered by `python -m jobs.train`. A new version gets "
        f"`@{cfg.mlflow.candidate_alias}`; `python -m jobs.promote` moves "
        f"`@{cfg.mlflow.champion_alias}` to it when its validation loss (and "
        "`mlflow.promote_require`) allow. Identical weights are never registered twice: the "
        "version tag `weights_sha256` finds them. Each version's description says what "
        "trained it and how it evaluated."
    )


def model_version(
    cfg: Config,
    run_link: str,
    step: int | None,
    data: str | None,
    val_loss: float | None,
    weights_sha256: str,
    code: CodeVersion | None,
) -> str:
    lines = [
        f"Trained by {run_link}: `{cfg.train.stage}` stage, "
        + (f"{step} steps" if step is not None else "steps unknown")
        + f", base `{cfg.model.base.pretrained}`"
        + (f", preset `{cfg.preset}`" if cfg.preset else "")
        + ".",
        "",
        f"- Data: {data or 'unknown'}",
        f"- Validation loss: {val_loss:.6g}" if val_loss is not None else "- Validation loss: -",
        f"- Code: {code_line(code)}",
        f"- Weights sha256: `{weights_sha256}`",
    ]
    return "\n".join(lines)


EVALUATION_HEADING = "**Evaluation**"


def with_evaluation(description: str, summary: dict[str, float], where: str) -> str:
    """``description`` with its evaluation section replaced by ``summary`` (metric -> value)."""
    head = description.partition(EVALUATION_HEADING)[0].rstrip()
    rows = [f"- `{name}`: {value:.4g}" for name, value in summary.items()]
    section = f"{EVALUATION_HEADING} ({now()}, {where})\n\n" + "\n".join(rows)
    return (f"{head}\n\n{section}" if head else section)[:NOTE_LIMIT]
