"""`make demo`: the synthetic captioned clips, and (slow) the whole path end to end as a user
runs it."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
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
@pytest.mark.integration  # starts its own Ray cluster and Serve (in the subprocess)
def test_demo_end_to_end_as_a_user_runs_it(tmp_path):
    """`make demo` from a fresh working directory (minutes on 2 cores): `python -m jobs.demo`
    in a subprocess with the default MLflow store, checked by its outputs."""
    import json

    from mlflow import MlflowClient
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PYTHONPATH"] = str(ROOT)  # this checkout, in the driver and in Ray's workers
    done = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--config", str(ROOT / "configs/tiny.yaml")]
        + ["--clips", "4", "train.max_steps=6", "train.checkpoint_every=6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-4000:]
    work = tmp_path / "outputs" / "demo"  # the preset's output_dir, relative to the cwd
    video = work / "demo.gif"
    assert video.read_bytes()[:6] == b"GIF89a"
    with Image.open(video) as gif:
        assert gif.size == (64, 64) and gif.n_frames == 8  # the preset's sample size
    assert re.search(r"^  registry +animatediff-tiny-motion v1 \(@champion\)$", out, re.M), out
    assert re.search(rf"^  video +{re.escape(str(video))}$", out, re.M), out
    assert "POST /v1/generate -> 200 image/gif" in out and "model v1," in out
    assert re.search(r"^demo finished in \d+ s$", out, re.M), out
    # The default store: sqlite:///mlflow.db in the working directory, artifacts beside it.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri} " in out
    client = MlflowClient(uri, registry_uri=uri)
    for alias in ("candidate", "champion"):
        version = client.get_model_version_by_alias("animatediff-tiny-motion", alias)
        assert str(version.version) == "1", alias
    run = client.get_run(version.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert run.info.artifact_uri.startswith(experiment.artifact_location + "/")
    assert any((tmp_path / "mlartifacts").rglob("*.safetensors"))  # the logged weights
    assert not (tmp_path / "mlruns").exists()  # MLflow's own default, never used
    # In MLflow, the training run's data leads to the preprocess run that wrote it.
    (training,) = [i.dataset for i in run.inputs.dataset_inputs]
    (preprocess,) = json.loads(training.profile)["preprocess_runs"]
    assert client.get_run(preprocess).data.tags["job"] == "preprocess"
