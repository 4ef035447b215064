"""Motion-module training on Ray Train + DeepSpeed.

- ``driver``: ``run_training(cfg)`` on the driver: data, MLflow run, ``TorchTrainer.fit``, registry;
- ``loop``: what every Ray Train worker runs;
- ``engine``: the DeepSpeed engine (also used by the benchmarks);
- ``checkpoint``: save/restore of a run's state (weights, optimizer, data position, RNGs);
- ``data``: the training dataset, its deterministic per-worker stream, the validation clips.

The maths of a step (loss, schedule, model assembly) is in ``animatediff.training``.
"""

from trainer.driver import TrainOutcome, run_training

__all__ = ["TrainOutcome", "run_training"]
