"""Typed, frozen configuration for every job, loaded from YAML presets with dotted overrides.

    cfg = load_config("configs/tiny.yaml", ["train.max_steps=20", "model.motion.num_layers=2"])

One module per YAML section (``model``, ``sample``, ``train``, ``mlflow``, ``serve``/``generate``,
``data``), the root ``Config`` in ``root.py`` and the YAML loader in ``loader.py``. Each section
is a frozen dataclass; every field carries a docstring (the string literal under it), which
``--help`` prints. Validation in ``__post_init__`` raises ``ConfigError`` naming the option, e.g.
``model.motion.num_heads: must be >= 1``.
"""

from animatediff.config.data import DataConfig
from animatediff.config.errors import ConfigError
from animatediff.config.evaluate import EvaluateConfig
from animatediff.config.loader import (
    OptionDoc,
    apply_overrides,
    field_docs,
    flatten,
    from_dict,
    load_config,
    option_docs,
    parse_yaml,
    save_config,
    to_dict,
)
from animatediff.config.model import (
    BaseModelConfig,
    DiffusionConfig,
    LoraConfig,
    ModelConfig,
    MotionModuleConfig,
)
from animatediff.config.reproduce import ReproduceConfig
from animatediff.config.root import Config, StorageConfig
from animatediff.config.sample import SampleConfig
from animatediff.config.serve import (
    GenerateConfig,
    MotionLoraRef,
    ServeAutoscalingConfig,
    ServeConfig,
    ServeLimitsConfig,
)
from animatediff.config.tracking import MlflowConfig
from animatediff.config.train import LoraTrainConfig, TrainConfig

__all__ = [
    "BaseModelConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "LoraConfig",
    "LoraTrainConfig",
    "MlflowConfig",
    "ModelConfig",
    "MotionLoraRef",
    "MotionModuleConfig",
    "ReproduceConfig",
    "SampleConfig",
    "ServeAutoscalingConfig",
    "ServeConfig",
    "ServeLimitsConfig",
    "StorageConfig",
    "TrainConfig",
    "OptionDoc",
    "apply_overrides",
    "field_docs",
    "flatten",
    "from_dict",
    "load_config",
    "option_docs",
    "parse_yaml",
    "save_config",
    "to_dict",
]
