"""A training checkpoint: what a resumed run needs to continue exactly where the last one stopped.

A checkpoint directory holds

- ``deepspeed/``: ``engine.save_checkpoint`` of every rank (ZeRO shards; the frozen base excluded);
- ``trainer_state.json``: the ``Position`` (step, data position), world size, config, last
  validation loss and the MLflow run id (rank 0);
- ``rng/rank{r}.json``: each rank's Python, numpy and torch RNG states;
- the stage's export (``trainer.export``: ``motion_module/``, ``unet/`` or ``lora.safetensors``),
  loadable without DeepSpeed (rank 0).

Ray Train merges the ranks' files into one checkpoint once every rank has reported.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animatediff.storage import Location, exists, read_text
from trainer.export import Export

DS_TAG = "ds"
STATE_FILE = "trainer_state.json"


@dataclass
class Position:
    """Where training stands: optimizer steps done and the next micro-batch of the data stream."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    buckets: list[list[int]] = field(default_factory=list)
    """With ``data.buckets``: ``[epoch, batch_in_epoch]`` of each bucket's stream
    (``trainer.data.BucketStream``); empty otherwise."""


@dataclass
class TrainerState:
    """``trainer_state.json``."""

    position: Position
    world_size: int
    val_loss: float | None
    config: dict[str, Any]
    mlflow_run_id: str | None

    @classmethod
    def read(cls, directory: str | Path) -> TrainerState:
        return cls.from_json((Path(directory) / STATE_FILE).read_text())

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        state = json.loads(text)
        return cls(
            position=Position(**state["position"]),
            world_size=state["world_size"],
            val_loss=state.get("val_loss"),
            config=state["config"],
            mlflow_run_id=state.get("mlflow_run_id"),
        )

    def write(self, directory: str | Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))


def rng_state() -> dict[str, Any]:
    """This process's Python, numpy and torch RNG states as JSON-able data."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *[float(x) for x in np_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save(directory: Path, engine: Any, rank: int, state: TrainerState, export: Export) -> None:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0 adds the shared files:
    the trainer state and the stage's export)."""
    engine.save_checkpoint(str(directory / "deepspeed"), tag=DS_TAG, exclude_frozen_parameters=True)
    (directory / "rng").mkdir()
    (directory / "rng" / f"rank{rank}.json").write_text(json.dumps(rng_state()))
    if rank == 0:
        export.write(directory)
        state.write(directory)


@contextlib.contextmanager
def local_directory(ray_checkpoint: Any) -> Iterator[Path]:
    """A Ray ``Checkpoint``'s files as a local directory for this reader alone: the checkpoint
    itself on a local filesystem, else a download into a temporary directory of its own, removed
    on exit. Ray's ``as_directory`` downloads into one directory per node that its readers share,
    and a rank that leaves it as another arrives can delete it under that one ("Checkpoint
    directory ... does not exist, even though it should have been created by another process",
    seen resuming two ranks from S3)."""
    import pyarrow.fs

    if isinstance(ray_checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(ray_checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="checkpoint-") as scratch:
        yield Path(ray_checkpoint.to_directory(scratch))


def restore(directory: Path, engine: Any, rank: int, world_size: int) -> TrainerState:
    """Load a checkpoint into ``engine`` and this process's RNGs; returns the saved state."""
    state = TrainerState.read(directory)
    if state.world_size != world_size:
        raise ValueError(
            f"train.num_workers: the checkpoint was written by {state.world_size} "
            f"workers, this run has {world_size} (ZeRO state is sharded per rank)"
        )
    engine.load_checkpoint(
        str(directory / "deepspeed"),
        tag=DS_TAG,
        load_module_strict=False,  # frozen base weights are not in checkpoints
        load_lr_scheduler_states=False,  # the lr is a pure function of the step
    )
    set_rng_state(json.loads((directory / "rng" / f"rank{rank}.json").read_text()))
    return state


def latest(run: Location) -> tuple[Location, TrainerState] | None:
    """The newest complete checkpoint in a run's storage directory (``checkpoint_<step>``
    holding a ``trainer_state.json``) and its state; None when there is none."""
    import posixpath

    import pyarrow.fs as pafs

    selector = pafs.FileSelector(run.path, allow_not_found=True)
    names = sorted(
        posixpath.basename(info.path)
        for info in run.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory
        and re.fullmatch(r"checkpoint_\d{8}", posixpath.basename(info.path))
    )
    for name in reversed(names):
        state_file = run.join(name, STATE_FILE)
        if exists(state_file):
            return run.join(name), TrainerState.from_json(read_text(state_file))
    return None
