"""Optional MLflow logging of a preprocessing run: a thin wrapper, off unless ``data.log_mlflow``."""

from __future__ import annotations

import os
from pathlib import Path

from animatediff.config import Config, flatten


def _tracking_uri(cfg: Config) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def log_preprocess_run(cfg: Config, summary: dict, fingerprint: dict) -> str:
    """One MLflow run in experiment ``{mlflow.experiment}-preprocess`` with the ``data.*``
    params, the counts and throughput as metrics and the fingerprint as an artifact; returns
    the run id."""
    import mlflow

    mlflow.set_tracking_uri(_tracking_uri(cfg))
    name = f"{cfg.mlflow.experiment}-preprocess"
    if mlflow.get_experiment_by_name(name) is None:
        location = cfg.mlflow.artifact_location or None
        if location is None and mlflow.get_tracking_uri().startswith("sqlite:///"):
            db = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts").as_uri()
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    with mlflow.start_run(run_name=f"preprocess-{summary['run_id']}") as run:
        params = {k: v for k, v in flatten(cfg).items() if k.startswith("data.")}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tag("fingerprint_hash", summary["fingerprint_hash"])
        metrics = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        metrics |= {f"failed.{k}": float(v) for k, v in summary["failed_by_reason"].items()}
        mlflow.log_metrics(metrics)
        mlflow.log_dict(fingerprint, "fingerprint.json")
        mlflow.log_dict(summary, "summary.json")
        return run.info.run_id
