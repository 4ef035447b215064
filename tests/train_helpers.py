"""Shared pieces of the training tests: tiny latent shards and a tiny training config."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.cloudpickle

from animatediff.config import Config, load_config
from trainer.loop import StepInfo

# Ray workers cannot import this test module: hooks defined here travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
STEPS = ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2"]
TOY_SHAPES = [
    "data.num_frames=4",
    "data.resolution=32",
    "sample.num_frames=4",
    "sample.context_frames=4",
    "sample.context_overlap=1",
    "sample.height=32",
    "sample.width=32",
    "sample.num_inference_steps=2",
]
"""4 frames at 32 px, sampled in 2 steps: the training tests' clip and video shapes."""
"""The reference run's length and checkpoints (``conftest.reference``)."""


def tiny_train_config(tmp: Path, *overrides: str) -> Config:
    """The tiny preset, 4-frame 32x32 clips, everything written under ``tmp``."""
    return load_config(
        CONFIG,
        [
            f"train.data_uri={tmp / 'latents'}",
            f"train.storage_path={tmp / 'ray_results'}",
            f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            f"model.base.cache_dir={tmp / 'cache'}",
            *TOY_SHAPES,
            *overrides,
        ],
    )


def write_latent_shards(cfg: Config, clips: int = 8, shards: int = 2, seed: int = 0) -> str:
    """Committed shards (manifest, fingerprint directory) of random posteriors shaped like what
    ``jobs.preprocess`` would write for ``cfg``; returns ``cfg.train.data_uri``."""
    from animatediff.storage import locate
    from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name
    from pipelines.shards import ShardStore, shard_table

    fingerprint = data_fingerprint(cfg)
    root = locate(cfg.train.data_uri, cfg.storage)
    store = ShardStore(root.join(fingerprint_dir_name(fingerprint)), fingerprint)
    store.open()
    rng = np.random.default_rng(seed)
    frames, size = cfg.data.num_frames, cfg.data.resolution // 8
    shape = (clips, 4, frames, size, size)
    mean = rng.normal(0, 4, shape).astype(np.float16)
    std = rng.uniform(0.05, 0.2, shape).astype(np.float16)
    per_shard = clips // shards
    for s in range(shards):
        rows = range(s * per_shard, (s + 1) * per_shard)
        batch = {
            "clip_id": np.array([f"{i:016x}" for i in rows]),
            "video_id": np.array([f"video{i // 2}" for i in rows]),
            "caption": np.array([f"a moving pattern number {i}" for i in rows]),
            "frame_indices": np.tile(
                np.arange(frames, dtype=np.int32) * cfg.data.stride, (per_shard, 1)
            ),
            "fps": np.full(per_shard, 8.0, np.float32),
            "source": np.array([f"synthetic://{i}" for i in rows]),
            "flipped": np.zeros(per_shard, bool),
            "latent_mean": mean[rows.start : rows.stop],
            "latent_std": std[rows.start : rows.stop],
        }
        store.commit(shard_table(batch), f"part-test-{s:06d}.parquet")
    store.write_manifest()
    return cfg.train.data_uri


def log_preprocess_run_for(cfg: Config, failed: int = 1) -> str:
    """What ``jobs.preprocess`` with ``data.log_mlflow`` records at the end of a run, for the
    shards of ``write_latent_shards``: an errors table with ``failed`` rows, the run's summary in
    the manifest's ``runs``, and the MLflow preprocess run (whose id the manifest then holds).
    Returns the MLflow run id."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from animatediff.storage import locate
    from pipelines.decode import OUTCOME_SCHEMA
    from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name, fingerprint_hash
    from pipelines.shards import ShardStore
    from tracking.preprocess import log_preprocess_run

    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, input="synthetic clips (tests/train_helpers.py)")
    )
    fingerprint = data_fingerprint(cfg)
    store = ShardStore(
        locate(cfg.train.data_uri, cfg.storage).join(fingerprint_dir_name(fingerprint)),
        fingerprint,
    )
    store.open()
    run = "20260101T000000-test00"
    rows = [
        {
            "key": f"missing{i}",
            "video_id": f"missing{i}",
            "source": f"videos/missing{i}.mp4",
            "status": "failed",
            "reason": "missing_file",
            "message": f"videos/missing{i}.mp4: no such file",
            "clips": 0,
            "cached_clips": 0,
        }
        for i in range(failed)
    ]
    errors = store.directory.join("runs", run, "errors.parquet")
    Path(errors.path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA), errors.path)
    clips = store.manifest["num_clips"]
    summary = {
        "run_id": run,
        "fingerprint_hash": fingerprint_hash(fingerprint),
        "output": store.directory.uri,
        "rows_read": clips // 2 + failed,
        "rows_encoded": clips // 2,
        "rows_cached": 0,
        "rows_failed": failed,
        "failed_by_reason": {"missing_file": failed} if failed else {},
        "clips_encoded": clips,
        "clips_cached": 0,
        "shards_written": len(store.manifest["shards"]),
        "cache_size_clips": clips,
        "elapsed_s": 1.0,
        "clips_per_s": float(clips),
    }
    store.manifest["runs"].append(summary)
    summary["mlflow_run_id"] = log_preprocess_run(
        cfg, summary, fingerprint, store.directory, store.manifest, errors
    )
    store.write_manifest()
    return summary["mlflow_run_id"]


@dataclass(frozen=True)
class KillOnce:
    """A step hook: the last rank SIGKILLs itself once ``step`` steps are done, on the first
    attempt only (the marker file, on this machine's disk, remembers it)."""

    step: int
    marker: str

    def __call__(self, info: StepInfo) -> None:
        if info.step != self.step or info.rank != info.world_size - 1:
            return
        if Path(self.marker).exists():
            return
        Path(self.marker).touch()
        # Ray Train collects reports every 2 s: let it register the last checkpoint first, so the
        # restart point is deterministic. Then a real crash: no cleanup, no report.
        time.sleep(5)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RecordBatches:
    """A step hook that makes each rank write down every training micro-batch it computes, one
    JSON line per micro-batch in ``<directory>/rank<r>.jsonl``: the step, the clips' captions
    (unique per clip in ``write_latent_shards``) and the dtypes the UNet computed in (its input,
    its output, its trainable weights).

    On its first call in a worker process it wraps the loop's ``batch_loss`` there (the workers
    are fresh processes for each run): the records are what the loop really fed the model."""

    directory: str

    def __call__(self, info: StepInfo) -> None:
        import trainer.loop as loop

        state = getattr(loop.batch_loss, "recording", None)
        if state is None:
            state = {"path": Path(self.directory) / f"rank{info.rank}.jsonl"}
            loop.batch_loss = _recording(loop.batch_loss, state)
        state["step"] = info.step


def _recording(batch_loss, state: dict):
    """``batch_loss`` that appends each micro-batch's record to ``state["path"]``."""

    def recorded(model, unet, batch, cfg, generator, **kwargs):
        seen = {}

        def forward(sample, timesteps, context):
            pred = unet(sample, timesteps, context)
            weight = next(p for p in model.unet.parameters() if p.requires_grad)
            seen.update(sample=str(sample.dtype), pred=str(pred.dtype), weights=str(weight.dtype))
            return pred

        loss = batch_loss(model, forward, batch, cfg, generator, **kwargs)
        record = {"step": state["step"], "captions": list(batch.captions), **seen}
        with open(state["path"], "a") as file:
            file.write(json.dumps(record) + "\n")
        return loss

    recorded.recording = state
    return recorded


def recorded_batches(directory: Path, world_size: int) -> list[list[dict]]:
    """What ``RecordBatches`` wrote: per rank, its micro-batch records in order."""
    return [
        [json.loads(line) for line in (directory / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in range(world_size)
    ]
