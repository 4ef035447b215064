"""``evaluate:``: scoring a motion module (``jobs.evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from animatediff.config.errors import check


@dataclass(frozen=True)
class EvaluateConfig:
    model: str = ""
    """Motion module to score: a checkpoint (any format), a ``models:/`` URI, or an alias or
    version of the registered model; empty: ``mlflow.candidate_alias``."""
    prompts: str = "configs/prompts.txt"
    """Prompts file, as ``generate.prompts``; a JSON line may add ``expect``:
    ``{"direction": "left", "label": 3}`` (the trajectory's direction, the frames' class)."""
    data_uri: str = ""
    """Held-out latent shards for the denoising loss; empty: the validation clips that
    training held out of ``train.data_uri`` (``train.val_data_uri`` if set)."""
    max_clips: int = 16
    """Held-out clips in the denoising loss."""
    timesteps: int = 10
    """Evenly spaced timesteps at which the held-out loss is measured (fixed noise)."""
    seed: int = 0
    """Seed of the held-out loss's noise and of the frame permutation of its order check."""
    features: str = "pixels"
    """Frame features for consistency (and labels, text alignment): ``pixels``,
    ``clip:<directory or hub id>`` or ``classifier:<directory>`` (a saved ``FrameClassifier``)."""
    directions: Literal[4, 8] = 4
    """Compass directions a trajectory is binned into."""
    min_speed: float = 0.5
    """Pixels per frame below which a video's foreground counts as static."""
    output_subdir: str = "evaluate"
    """Report, contact sheet and videos go to ``<output_dir>/<output_subdir>``."""
    contact_sheet_frames: int = 8
    """Frames per row of the contact sheet."""
    log_to: Literal["model_run", "own_run"] = "model_run"
    """MLflow: the metrics go to the run that trained the version (``eval/*``), or to a run of
    their own in ``<mlflow.experiment>-eval`` that names the version."""

    def __post_init__(self) -> None:
        for name in ("max_clips", "timesteps", "contact_sheet_frames"):
            check(getattr(self, name) >= 1, f"evaluate.{name}", "must be >= 1")
        check(self.min_speed >= 0, "evaluate.min_speed", "must be >= 0")
