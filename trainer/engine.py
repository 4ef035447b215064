"""The DeepSpeed engine around the trainable part of a ``TrainingModel``.

One ``setup_engine`` serves the Ray Train loop and both training benchmarks, so what they measure
is what the job runs. ``deepspeed_config`` (the config dict) is pure and lives in
``animatediff.training``.
"""

from __future__ import annotations

from typing import Any

import torch

from animatediff.config import TrainConfig
from animatediff.training import TrainingModel, deepspeed_config


def skip_shm_comm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory comm op on first use (20-30 s on CPU) that gloo never
    needs. Done by item assignment in a module function: Ray cannot pickle the ops object."""
    from deepspeed.ops import __compatible_ops__ as ops

    ops["deepspeed_shm_comm"] = False


def make_optimizer(params: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (ZeRO-2 mishandles frozen ones in the optimizer).

    torch's AdamW needs no compilation; with ``train.offload_optimizer`` the optimizer state lives
    in CPU memory and DeepSpeed requires its own CPU Adam there (compiled on first use, ~40 s,
    then cached in ``~/.cache/torch_extensions``)."""
    kwargs = {"lr": train.lr, "betas": train.betas, "weight_decay": train.weight_decay}
    if train.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def setup_engine(
    model: TrainingModel,
    train: TrainConfig,
    world_size: int,
    device: torch.device | str = "cpu",
    zero_overrides: dict[str, Any] | None = None,
) -> Any:
    """Move ``model`` to ``device`` and wrap its UNet in a DeepSpeed engine whose optimizer sees
    only the trainable parameters. ``zero_overrides`` replace entries of ``zero_optimization``
    (the benchmarks compare settings). Needs a ``torch.distributed`` process group (Ray Train
    makes one; a single process sets ``MASTER_ADDR`` etc. and calls ``init_process_group``)."""
    import deepspeed

    skip_shm_comm_build()
    model.to(device)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    config = deepspeed_config(train, world_size)
    config["zero_optimization"].update(zero_overrides or {})
    engine, _, _, _ = deepspeed.initialize(
        model=model.unet,
        optimizer=make_optimizer(params, train),
        config=config,
        dist_init_required=False,
    )
    return engine
