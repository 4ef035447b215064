"""``data.buckets`` end to end on the session Ray cluster: portrait videos -> a portrait bucket ->
a trained tiny motion module -> portrait video; and a run over two buckets resumed from a
checkpoint sees exactly the batches of the uninterrupted run. Both run Ray Train (tens of seconds
each on 2 cores): marked ``slow``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_media import write_video
from safetensors.torch import load_file
from train_helpers import RecordBatches, recorded_batches, tiny_train_config

from trainer import run_training

pytestmark = pytest.mark.slow

BUCKETS = "[[32, 32], [64, 32], [32, 64]]"
"""Square, portrait (height 64, width 32), landscape (height 32, width 64)."""


def _motion(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "motion_module.safetensors"))


def test_a_model_trained_on_portrait_clips_generates_portrait_video(
    ray_cluster, tiny_base_dir, tmp_path
) -> None:
    from animatediff.checkpoints import load_motion_modules
    from animatediff.sampling import TextToVideo
    from pipelines.preprocess import run_preprocess

    # Six portrait videos, 40 wide and 80 high (1:2): the portrait bucket, scaled to 32x64.
    videos = tmp_path / "videos"
    with open(tmp_path / "clips.csv", "w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["video", "caption"])
        for i in range(6):
            write_video(videos / f"tall{i}.mp4", frames=12, width=40, height=80, seed=i)
            table.writerow([f"tall{i}.mp4", f"a tall moving bar {i}"])
    common = (f"model.base.pretrained={tiny_base_dir}", f"data.buckets={BUCKETS}")
    cfg = tiny_train_config(
        tmp_path,
        *common,
        "data.format=csv",
        f"data.input={tmp_path / 'clips.csv'}",
        f"data.video_root={videos}",
        f"data.output={tmp_path / 'latents'}",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.validation_prompts=[]",
        "train.register=false",
        "mlflow.enabled=false",
        "sample.height=64",
        "sample.width=32",
    )
    summary = run_preprocess(cfg)
    assert (summary["status"], summary["rows_encoded"], summary["rows_failed"]) == ("ok", 6, 0)
    manifest = json.loads((Path(summary["output"]) / "manifest.json").read_text())
    assert {tuple(e["bucket"]) for e in manifest["shards"]} == {(64, 32)}
    assert manifest["fingerprint"]["buckets"] == [[32, 32], [64, 32], [32, 64]]

    outcome = run_training(cfg)
    assert outcome.step == 2
    modules, _ = load_motion_modules(outcome.motion_dir)
    proj_out = [v for k, v in modules.state_dict().items() if k.endswith("proj_out.weight")]
    assert proj_out and all(v.abs().sum() > 0 for v in proj_out)  # trained: moved from zero
    frames = TextToVideo(cfg, modules, device="cpu")("a tall moving bar", seed=0)
    assert frames.shape == (4, 64, 32, 3) and frames.dtype == np.uint8  # portrait video


def _write_bucket_shards(cfg, sizes: dict[tuple[int, int], list[int]]) -> None:
    """Committed shards of random posteriors, one shard per entry of ``sizes``: its bucket
    ``(height, width)`` and its clips (numbered; captions name the bucket and the clip)."""
    from animatediff.storage import locate
    from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name
    from pipelines.shards import ShardStore, shard_table

    fingerprint = data_fingerprint(cfg)
    root = locate(cfg.train.data_uri, cfg.storage)
    store = ShardStore(root.join(fingerprint_dir_name(fingerprint)), fingerprint)
    store.open()
    rng = np.random.default_rng(0)
    frames = cfg.data.num_frames
    for s, ((height, width), clips) in enumerate(sizes.items()):
        n = len(clips)
        shape = (n, 4, frames, height // 8, width // 8)
        batch = {
            "clip_id": np.array([f"{i:016x}" for i in clips]),
            "video_id": np.array([f"video{i}" for i in clips]),
            "caption": np.array([f"{height}x{width} clip {i}" for i in clips]),
            "frame_indices": np.tile(np.arange(frames, dtype=np.int32), (n, 1)),
            "fps": np.full(n, 8.0, np.float32),
            "source": np.array([f"synthetic://{i}" for i in clips]),
            "flipped": np.zeros(n, bool),
            "latent_mean": rng.normal(0, 4, shape).astype(np.float16),
            "latent_std": rng.uniform(0.05, 0.2, shape).astype(np.float16),
            "height": np.full(n, height, np.int32),
            "width": np.full(n, width, np.int32),
        }
        store.commit(shard_table(batch), f"part-test-{s:06d}.parquet")
    store.write_manifest()


def test_a_resumed_bucketed_run_sees_the_batches_of_the_uninterrupted_run(
    ray_cluster, tiny_base_dir, tmp_path
) -> None:
    common = [
        f"model.base.pretrained={tiny_base_dir}",
        f"data.buckets={BUCKETS}",
        "train.checkpoint_every=2",
        "train.validation_prompts=[]",
        "train.register=false",
        "mlflow.enabled=false",
        "train.shuffle_buffer=4",
        "train.batch_size=2",
    ]
    cfg = tiny_train_config(tmp_path, *common, "train.max_steps=6", "train.run_name=whole")
    # A square shard of 10 clips and a landscape one of 8; 2 workers x 2 clips a batch; 2 clips
    # (of 2 videos) held out for validation.
    _write_bucket_shards(cfg, {(32, 32): list(range(0, 10)), (32, 64): list(range(10, 18))})

    whole_dir, part_dir = tmp_path / "whole", tmp_path / "part"
    whole_dir.mkdir()
    part_dir.mkdir()
    whole = run_training(cfg, hooks=[RecordBatches(str(whole_dir))])
    first = tiny_train_config(tmp_path, *common, "train.max_steps=2", "train.run_name=part")
    run_training(first, hooks=[RecordBatches(str(part_dir))])
    second = tiny_train_config(tmp_path, *common, "train.max_steps=6", "train.run_name=part")
    resumed = run_training(second, hooks=[RecordBatches(str(part_dir))])
    assert resumed.step == whole.step == 6

    reference = recorded_batches(whole_dir, 2)
    again = recorded_batches(part_dir, 2)
    for rank in range(2):
        assert [r["captions"] for r in again[rank]] == [r["captions"] for r in reference[rank]]
    # Every micro-batch holds one bucket, the same on both ranks at each step; both are used.
    buckets = []
    for step in range(6):
        batches = [r["captions"] for rank in reference for r in rank if r["step"] == step]
        at_step = {caption.split()[0] for captions in batches for caption in captions}
        assert len(batches) == 2 and len(at_step) == 1, (step, batches)
        buckets += at_step
    assert set(buckets) == {"32x32", "32x64"}
    a, b = _motion(whole.motion_dir), _motion(resumed.motion_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
