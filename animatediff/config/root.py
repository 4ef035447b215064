"""The root ``Config``: one frozen dataclass per YAML section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from animatediff.config.data import DataConfig
from animatediff.config.evaluate import EvaluateConfig
from animatediff.config.model import BaseModelConfig, ModelConfig, MotionModuleConfig
from animatediff.config.reproduce import ReproduceConfig
from animatediff.config.sample import SampleConfig
from animatediff.config.serve import GenerateConfig, ServeConfig
from animatediff.config.tracking import MlflowConfig
from animatediff.config.train import TrainConfig


@dataclass(frozen=True)
class StorageConfig:
    s3_endpoint: str = ""
    """S3-compatible endpoint URL for every ``s3://`` path (shards, checkpoints, outputs); empty:
    ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``, else AWS itself."""
    s3_region: str = ""
    """S3 region; empty: ``$AWS_DEFAULT_REGION`` if set, else ``us-east-1``."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model, motion module and diffusion objective."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Text-to-video sampling defaults."""
    output_dir: str = "outputs"
    """Where jobs write their results (local path or ``s3://``)."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings shared by every job that reads or writes ``s3://``."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The Ray Serve endpoint (``jobs.serve``) and its limits."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Offline batch generation from a prompts file (``jobs.generate``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Motion-module training on Ray Train + DeepSpeed (``python -m jobs.train``)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Experiment tracking and the model registry."""
    data: DataConfig = field(default_factory=DataConfig)
    """Video preprocessing into cached latent shards (``python -m jobs.preprocess``)."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Scoring a motion module: held-out loss, generated videos' metrics (``jobs.evaluate``)."""
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    """The Moving Digits reproduction's own settings (``jobs.reproduce``)."""
    preset: str = ""
    """The preset this config came from: set by ``load_config`` to the YAML file's name without
    its extension (``configs/tiny.yaml`` -> ``tiny``) unless the YAML sets it; tagged on MLflow
    runs and model versions (``preset``) to search them by."""

    def with_motion(self, motion: MotionModuleConfig) -> Config:
        """This config animating with ``motion`` (e.g. the config a checkpoint was saved with)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, motion=motion))

    def with_base(self, base: BaseModelConfig) -> Config:
        """This config on another frozen base (e.g. a personalized one)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, base=base))
