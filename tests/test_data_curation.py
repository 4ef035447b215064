"""Curation through the real Ray path: shots, motion filters and near-duplicates in one small run;
every row accounted for, scores in the shards, drops in the summary, the report PNGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from curation_media import noise, scene, static, write_frames
from data_media import PAGE_DIR, write_webvid_csv

from animatediff.config import load_config
from animatediff.storage import locate
from pipelines.preprocess import format_summary, run_preprocess
from trainer.data import read_clips

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

ROWS = {  # videoid -> what it is; read in this order (row 0 first)
    "3000001": "cuts",  # shots of 20, 6, 20, 20 frames
    "3000002": "still",
    "3000003": "noise",
    "3000004": "single",  # one 15-frame window only (the tiny config's window)
    "3000005": "copy",  # the same file as 3000004, later in the table
    "3000006": "moving",
}


@pytest.fixture(scope="module")
def curated(ray_cluster, tiny_base_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("curation")
    videos = root / "videos" / PAGE_DIR
    footage = {
        "cuts": np.concatenate([scene(0, 20), scene(1, 6), scene(2, 20), scene(3, 20)]),
        "still": static(30),
        "noise": noise(30),
        "single": scene(2, 15, start=3),
        "moving": scene(3, 30),
    }
    for videoid, kind in ROWS.items():
        if kind != "copy":
            write_frames(videos / f"{videoid}.mp4", footage[kind])
    shutil.copy(videos / "3000004.mp4", videos / "3000005.mp4")
    table = write_webvid_csv(
        root / "results.csv", [(v, PAGE_DIR, f"a {k} video") for v, k in ROWS.items()]
    )
    out = root / "latents"
    overrides = [
        f"model.base.pretrained={tiny_base_dir}",
        f"data.input={table}",
        f"data.video_root={root / 'videos'}",
        f"data.output={out}",
        "data.clips_per_video=2",
        "data.shots=true",
        "data.min_motion=2.0",
        "data.max_motion=40.0",
        "data.dedup=true",
        "data.report_sample_fraction=1.0",
        "data.max_error_fraction=0.9",
    ]
    cfg = load_config(TINY, overrides)
    summary = run_preprocess(cfg)
    return {"summary": summary, "run_dir": Path(summary["output"]) / "runs" / summary["run_id"]}


def test_every_row_ends_encoded_or_filtered_with_its_reason(curated):
    summary = curated["summary"]
    outcomes = pq.read_table(curated["run_dir"] / "outcomes.parquet").to_pylist()
    by_key = {r["key"]: r for r in outcomes}
    assert sorted(by_key) == sorted(ROWS) and len(outcomes) == len(ROWS)
    reasons = {ROWS[k]: (r["status"], r["reason"]) for k, r in by_key.items()}
    assert reasons == {
        "cuts": ("encoded", ""),
        "still": ("filtered", "static"),
        "noise": ("filtered", "jitter"),
        "single": ("encoded", ""),
        "copy": ("filtered", "near_duplicate"),
        "moving": ("encoded", ""),
    }
    assert summary["rows_read"] == summary["rows_encoded"] + summary["rows_filtered"] == 6
    assert summary["status"] == "ok"


def test_drops_are_counted_in_the_summary_and_listed_with_scores(curated):
    summary = curated["summary"]
    assert summary["filtered_by_reason"] == {
        "jitter": 2,
        "near_duplicate": 1,
        "short_shot": 1,
        "static": 2,
    }
    assert summary["shots_detected"] == 4 + 5  # the cut video's four, one per other video
    assert summary["clips_deduplicated"] == 1
    text = format_summary(summary)
    assert ["near_duplicate", "1"] in [line.split() for line in text.splitlines()]
    filtered = pq.read_table(curated["run_dir"] / "filtered.parquet").to_pylist()
    assert sorted(r["reason"] for r in filtered) == sorted(
        ["jitter", "jitter", "near_duplicate", "short_shot", "static", "static"]
    )
    duplicate = next(r for r in filtered if r["reason"] == "near_duplicate")
    assert duplicate["key"] == "3000005" and duplicate["score"] == 0.0
    shards = Path(curated["summary"]["output"]) / "shards"
    kept_ids = pq.read_table(shards, columns=["clip_id", "video_id"]).to_pylist()
    original = {r["clip_id"] for r in kept_ids if r["video_id"] == "3000004"}
    assert duplicate["detail"] in {f"duplicate of clip {c}" for c in original}


def test_shards_carry_scores_and_windows_never_cross_a_cut(curated):
    output = Path(curated["summary"]["output"])
    manifest = json.loads((output / "manifest.json").read_text())
    columns = ["video_id", "frame_indices", "motion_score", "phash"]
    clips = read_clips(locate(str(output)), manifest, 100, columns)
    # the copy's clip is retired as a near-duplicate: readers never see it
    assert sorted(set(clips["video_id"])) == ["3000001", "3000004", "3000006"]
    assert len(clips["video_id"]) == 2 + 1 + 2
    assert all(2.0 <= s <= 40.0 for s in clips["motion_score"])
    assert all(len(h) == 3 for h in clips["phash"])
    for video_id, indices in zip(clips["video_id"], clips["frame_indices"]):
        if video_id == "3000001":
            assert any(
                a <= indices[0] and indices[-1] < b for a, b in [(0, 20), (26, 46), (46, 66)]
            )
    assert manifest["num_clips"] == 5


def test_the_run_writes_its_report_pngs(curated):
    from PIL import Image

    reports = curated["summary"]["curation_reports"]
    histograms = np.asarray(Image.open(reports["histograms"]).convert("RGB"))
    samples = Image.open(reports["samples"])
    assert (histograms == (200, 60, 60)).all(-1).any()  # dropped bars
    assert (histograms == (60, 150, 80)).all(-1).any()  # kept bars
    # kept (up to 4) and each drop reason with a sampled window: a row of 64-pixel frames each
    assert samples.height >= 4 * 64 and np.asarray(samples).std() > 10
