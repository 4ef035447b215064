"""``mlflow:``: experiment tracking and the model registry."""

from __future__ import annotations

from dataclasses import dataclass

from animatediff.config.errors import check


@dataclass(frozen=True)
class MlflowConfig:
    enabled: bool = True
    """Track runs and register models in MLflow (rank 0 only)."""
    tracking_uri: str = ""
    """Tracking store; empty: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db``."""
    artifact_location: str = ""
    """Artifact root of a new experiment; empty: ``mlartifacts`` next to a SQLite store, the
    server's default with a tracking server."""
    experiment: str = "animatediff-motion"
    """Experiment name (created when missing)."""
    registered_model: str = "animatediff-motion-module"
    """Registry name of the trained motion module; new versions get alias ``candidate``."""
    candidate_alias: str = "candidate"
    """Alias set on every newly registered version."""
    champion_alias: str = "champion"
    """Alias that ``jobs.promote`` moves to a version that passes the check; what ``jobs.serve``
    and ``jobs.generate`` use when a request or ``generate.model`` names no model."""
    promote_require: tuple[str, ...] = ()
    """Conditions ``jobs.promote`` also checks on the candidate's evaluation metrics
    (``jobs.evaluate``), each ``<metric> <op> <number|champion>``, e.g.
    ``held_out_loss <= champion``, ``frame_consistency >= 0.9``."""

    def __post_init__(self) -> None:
        for name in ("experiment", "registered_model", "candidate_alias", "champion_alias"):
            check(bool(getattr(self, name)), f"mlflow.{name}", "must not be empty")
        check(
            self.candidate_alias != self.champion_alias,
            "mlflow.champion_alias",
            "must differ from mlflow.candidate_alias",
        )
