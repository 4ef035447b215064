"""Optional MLflow logging of a preprocessing run: a thin wrapper, off unless ``data.log_mlflow``."""

from __future__ import annotations

import dataclasses
import time

from animatediff.config import Config, flatten


def log_preprocess_run(cfg: Config, summary: dict, fingerprint: dict) -> str:
    """One MLflow run in experiment ``{mlflow.experiment}-preprocess`` with the ``data.*``
    params, the counts and throughput as metrics and the fingerprint as an artifact; returns
    the run id. MLflow's process-wide settings are left alone."""
    from mlflow.entities import Metric

    from tracking.runs import client, experiment_id, log_params, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    experiment = dataclasses.replace(cfg.mlflow, experiment=f"{cfg.mlflow.experiment}-preprocess")
    mlflow_client = client(tracking_uri)
    run = mlflow_client.create_run(
        experiment_id(experiment, tracking_uri),
        run_name=f"preprocess-{summary['run_id']}",
        tags={"fingerprint_hash": summary["fingerprint_hash"], "job": "preprocess"},
    )
    run_id = run.info.run_id
    params = {k: v for k, v in flatten(cfg).items() if k.startswith("data.")}
    log_params(run_id, params, tracking_uri)
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics |= {f"failed.{k}": float(v) for k, v in summary["failed_by_reason"].items()}
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    mlflow_client.log_dict(run_id, fingerprint, "fingerprint.json")
    mlflow_client.log_dict(run_id, summary, "summary.json")
    mlflow_client.set_terminated(run_id)
    return run_id
