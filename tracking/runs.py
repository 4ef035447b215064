"""MLflow tracking, thinly wrapped: where the store is, one run per training run, rank-0 logging.

The driver calls ``start_or_resume_run`` (a re-run of the same Ray Train run name and storage path
finds its MLflow run again by tag, so a resumed training run keeps one run id); workers log to that
run id through ``RunLogger`` (only rank 0 constructs one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from animatediff.config import Config, MlflowConfig, flatten

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_KEY_TAG = "animatediff.train_run"
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

    A relative SQLite path is made absolute: Ray workers run in other working directories."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def resolve_artifact_location(cfg: MlflowConfig, tracking_uri: str) -> str | None:
    """Artifact root for a new experiment: explicit, or ``mlartifacts`` beside a SQLite file (the
    MLflow default would be ``./mlruns`` of whichever process creates the experiment)."""
    if cfg.artifact_location:
        location = cfg.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        return location
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides (its --artifacts-destination)


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(cfg: MlflowConfig, tracking_uri: str) -> str:
    """The experiment's id, creating it on first use."""
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(
        cfg.experiment, artifact_location=resolve_artifact_location(cfg, tracking_uri)
    )


def start_or_resume_run(
    cfg: Config, run_key: str, tracking_uri: str, extra_params: dict[str, Any]
) -> tuple[str, bool]:
    """``(run_id, created)``: the MLflow run tagged with ``run_key`` (storage path + run name), or a
    new one with the flattened config and ``extra_params`` (e.g. the data fingerprint) as params."""
    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(cfg.mlflow, tracking_uri)
    escaped = run_key.replace("'", "\\'")
    found = mlflow_client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{escaped}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id, False
    run = mlflow_client.create_run(
        exp_id, run_name=cfg.train.run_name, tags={RUN_KEY_TAG: run_key, "job": "train"}
    )
    params = {**flatten(cfg), **extra_params}
    log_params(run.info.run_id, params, tracking_uri)
    return run.info.run_id, True


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

    def set_terminated(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
