"""MLflow tracking, thinly wrapped: where the store is, one run per training run, rank-0 logging.

The driver calls ``start_or_resume_run`` (a re-run of the same Ray Train run name and storage path
finds its MLflow run again by tag, so a resumed training run keeps one run id); workers log to that
run id through ``RunLogger`` (only rank 0 constructs one) and ``SystemMetrics`` (one per node).
Only client calls on an explicit tracking URI: MLflow's process-wide settings are never touched.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

from animatediff.config import Config, MlflowConfig, flatten
from tracking import notes
from tracking.provenance import NOTE_TAG

SQLITE_PREFIX = "sqlite:///"
DEFAULT_TRACKING_URI = f"{SQLITE_PREFIX}mlflow.db"
RUN_KEY_TAG = "animatediff.train_run"
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
TRAIN_PARAM_SECTIONS = ("model", "train", "sample")
"""The config sections a training run uses, logged as its params (the whole config is the
``config.yaml`` artifact)."""
LOSS_METRIC = "train/loss"
VAL_LOSS_METRIC = "val/loss"
ATTEMPTS_TAG = "attempts"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
"""MLflow 3's UI shows such an experiment as model training (runs, charts), not GenAI."""
RESUMED_TAG = "resumed_from_step"


def configured_tracking_uri(cfg: MlflowConfig) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``, as
    written (a SQLite path may be relative)."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_database(tracking_uri: str) -> str | None:
    """The database file that a ``sqlite:///`` URI names (as written: it may be relative), or
    None for any other store."""
    return tracking_uri[len(SQLITE_PREFIX) :] if tracking_uri.startswith(SQLITE_PREFIX) else None


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """``configured_tracking_uri`` with a relative SQLite path made absolute: Ray workers run in
    other working directories."""
    uri = configured_tracking_uri(cfg)
    database = sqlite_database(uri)
    if database is not None and not database.startswith("/"):
        uri = SQLITE_PREFIX + str(Path(database).resolve())
    return uri


def resolve_artifact_location(cfg: MlflowConfig, tracking_uri: str) -> str | None:
    """Artifact root for a new experiment: explicit, or ``mlartifacts`` beside a SQLite file (the
    MLflow default would be ``./mlruns`` of whichever process creates the experiment)."""
    if cfg.artifact_location:
        location = cfg.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        return location
    database = sqlite_database(tracking_uri)
    if database is not None:
        return (Path(database).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides (its --artifacts-destination)


def client(tracking_uri: str):
    """An ``MlflowClient`` of ``tracking_uri`` for runs and the registry; a SQLite store's
    tables exist once it returns (``_create_sqlite_tables_once``)."""
    from mlflow import MlflowClient

    database = sqlite_database(tracking_uri)
    if database is not None:
        _create_sqlite_tables_once(tracking_uri, Path(database))
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


_tables_ready: set[str] = set()
_tables_lock = threading.Lock()


def _create_sqlite_tables_once(tracking_uri: str, database: Path) -> None:
    """MLflow creates a SQLite store's tables when a client first opens the run and registry
    stores in a process, by migrations that break when two processes run them at once: jobs
    started together on a new file all failed and left it half migrated. So the first use in
    each process opens both stores while it holds a lock file beside the database
    (``<file>.lock``): one process creates the tables, the others find them. MLflow keeps the
    opened stores for the process. A missing folder is left to MLflow to report."""
    from mlflow import MlflowClient

    with _tables_lock:
        if tracking_uri in _tables_ready or not database.parent.is_dir():
            return
        with open(f"{database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            opened = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            opened.search_registered_models(max_results=1)  # opens the registry's store too
        _tables_ready.add(tracking_uri)


def experiment_id(cfg: MlflowConfig, tracking_uri: str, description: str = "") -> str:
    """The experiment's id, creating it on first use as a model-training experiment;
    ``description`` becomes its description unless it already has one (a person's edit in the
    UI is kept)."""
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(cfg.experiment)
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    if description:
        tags[NOTE_TAG] = description
    if experiment is None:
        from mlflow.exceptions import MlflowException

        try:
            return mlflow_client.create_experiment(
                cfg.experiment,
                artifact_location=resolve_artifact_location(cfg, tracking_uri),
                tags=tags,
            )
        except MlflowException as error:
            # Another job created it since the lookup above (jobs started together).
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow_client.get_experiment_by_name(cfg.experiment)
    for key, value in tags.items():
        if not experiment.tags.get(key):
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def section_params(cfg: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    """The flattened options under ``sections`` (dotted prefixes)."""
    return {
        key: value
        for key, value in flatten(cfg).items()
        if any(key == section or key.startswith(section + ".") for section in sections)
    }


def start_or_resume_run(
    cfg: Config,
    run_key: str,
    tracking_uri: str,
    extra_params: dict[str, Any],
    tags: dict[str, str] | None = None,
    description: str = "",
) -> tuple[str, bool]:
    """``(run_id, created)``: the MLflow run tagged with ``run_key`` (storage path + run name), or a
    new one with ``tags``, ``description``, and the ``TRAIN_PARAM_SECTIONS`` of the config and
    ``extra_params`` as params."""
    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(cfg.mlflow, tracking_uri, notes.training_experiment(cfg))
    escaped = run_key.replace("'", "\\'")
    found = mlflow_client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{escaped}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id, False
    all_tags = {**(tags or {}), RUN_KEY_TAG: run_key, "job": "train"}
    if description:
        all_tags[NOTE_TAG] = description[: notes.NOTE_LIMIT]
    run = mlflow_client.create_run(exp_id, run_name=cfg.train.run_name, tags=all_tags)
    params = {**section_params(cfg, TRAIN_PARAM_SECTIONS), **extra_params}
    log_params(run.info.run_id, params, tracking_uri)
    return run.info.run_id, True


def run_link(tracking_uri: str, run_id: str) -> str:
    """A markdown link to a run's page in MLflow's UI (relative: it works wherever the UI is
    served), or the bare id when the run is not in this store."""
    try:
        run = client(tracking_uri).get_run(run_id)
    except Exception:  # another store, or deleted
        return f"`{run_id}`"
    name = run.info.run_name or run_id
    return f"[{name}](#/experiments/{run.info.experiment_id}/runs/{run_id})"


def add_event(tracking_uri: str, run_id: str, text: str) -> None:
    """Append ``- <UTC time> <text>`` to the run's description (its Events list)."""
    mlflow_client = client(tracking_uri)
    note = mlflow_client.get_run(run_id).data.tags.get(NOTE_TAG, "")
    mlflow_client.set_tag(run_id, NOTE_TAG, notes.add_event(note, text))


def log_params(run_id: str, params: dict[str, Any], tracking_uri: str) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)[:PARAM_VALUE_LIMIT]) for key, value in sorted(params.items())]
    mlflow_client = client(tracking_uri)
    for start in range(0, len(items), 100):  # MLflow's per-request param limit
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


class RunLogger:
    """Logs metrics and artifacts to one existing run (no global active-run state)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.run_id = run_id
        self.client = client(tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def last_step(self, key: str) -> int:
        """The highest step logged for metric ``key`` (-1 when none)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((metric.step for metric in history), default=-1)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """A step-indexed image: the Images section of the run's Model metrics, with a slider."""
        self.client.log_image(self.run_id, image, key=key, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def set_terminated(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class SystemMetrics:
    """MLflow's system metrics monitor on an existing run: CPU, memory, disk and network, and
    GPU utilisation and memory where ``nvidia-ml-py`` finds a GPU, every ``interval_s`` seconds
    (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it) as ``system/<node>/<metric>``.
    A background thread; ``stop`` ends it and flushes what it sampled. One per node: the
    machine-wide figures would otherwise be logged once per worker."""

    def __init__(self, tracking_uri: str, run_id: str, node: str, interval_s: float) -> None:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # It reports each start and stop at INFO, and the absence of a GPU: not worth a line.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self.monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=interval_s,
            resume_logging=True,  # a restarted worker continues the sample count
            node_id=node,
            tracking_uri=tracking_uri,
        )
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.finish()
