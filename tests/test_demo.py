"""`make demo`: the synthetic captioned clips, and (slow) the whole path end to end."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from jobs.demo import clip_frames, write_clips

ROOT = Path(__file__).resolve().parents[1]


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero((frame != 110).any(axis=-1))
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(("motion", "direction"), [("right", (1, 0)), ("up", (0, -1))])
def test_clips_move_as_their_captions_say(motion, direction):
    video = clip_frames("disc", "red", motion, frames=12, size=64)
    assert video.shape == (12, 64, 64, 3) and video.dtype == np.uint8
    shift = _centroid(video[-1]) - _centroid(video[0])
    assert np.sign(shift).tolist() == list(direction) and np.abs(shift).max() > 10
    assert (video[0] == (220, 40, 40)).all(axis=-1).sum() > 50  # red pixels present


def test_write_clips_makes_decodable_videos_and_a_caption_table(tmp_path):
    import av

    table = write_clips(tmp_path, count=3, frames=10, size=32)
    with open(table) as file:
        rows = list(csv.DictReader(file))
    assert [r["caption"] for r in rows] == [
        "a red square moving left",
        "a red square moving right",
        "a red square moving up",
    ]
    with av.open(io.BytesIO((tmp_path / rows[1]["video"]).read_bytes())) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (32, 32, 3)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """Everything `make demo` does, in a temporary output directory (minutes on 2 cores)."""
    import ray

    from jobs.demo import demo_config, run_demo

    if ray.is_initialized():
        pytest.skip("the demo starts its own Ray; run it without the session cluster")
    work = tmp_path / "demo"
    cfg = demo_config(
        str(ROOT / "configs/tiny.yaml"),
        work,
        [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "train.max_steps=6"],
    )
    summary = run_demo(cfg, work, clips=4)
    assert summary["promoted"] and summary["version"] == "1"
    assert (work / "demo.gif").read_bytes()[:6] == b"GIF89a"
    assert summary["headers"]["x-model-version"] == "1"
    assert not ray.is_initialized()
    # In MLflow, the training run's data leads to the preprocess run that wrote it.
    import json

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (training,) = [i.dataset for i in client.get_run(summary["run_id"]).inputs.dataset_inputs]
    (preprocess,) = json.loads(training.profile)["preprocess_runs"]
    assert client.get_run(preprocess).data.tags["job"] == "preprocess"
