"""The preprocessing job against an S3-compatible server (moto, on 127.0.0.1): videos and a
JSONL manifest read from a bucket, shards written to another, read back for training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_media import write_video

from animatediff.config import load_config
from pipelines.fingerprint import data_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture
def bucket_with_videos(s3, tmp_path):
    s3.create_bucket(Bucket="videos")
    s3.create_bucket(Bucket="latents")
    local = tmp_path / "s3media"
    for i in range(3):
        path = write_video(local / f"clip{i}.mp4", frames=20 + i, seed=i)
        s3.upload_file(str(path), "videos", f"openvid/part0/clip{i}.mp4")
    s3.put_object(Bucket="videos", Key="openvid/part0/junk.mp4", Body=b"\x00" * 500)
    rows = [
        {"video": "part0/clip0.mp4", "caption": "a first clip"},
        {"video": "s3://videos/openvid/part0/clip1.mp4", "caption": "a second clip"},
        {"video": "part0/clip2.mp4", "caption": "a third clip"},
        {"video": "part0/missing.mp4", "caption": "no such object"},
        {"video": "part0/junk.mp4", "caption": "not a video"},
        {"video": "../secret/clip.mp4", "caption": "traversal"},
        {"video": "s3://latents/other.mp4", "caption": "another bucket"},
        {"video": "part0/clip0.mp4", "caption": ""},
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3.put_object(Bucket="videos", Key="openvid/manifest.jsonl", Body=body)
    return s3


def test_s3_videos_to_s3_shards(ray_cluster, tiny_base_dir, bucket_with_videos):
    from pipelines.latents import find_shard_set, shard_set_dataset
    from pipelines.preprocess import run_preprocess

    overrides = [
        f"model.base.pretrained={tiny_base_dir}",
        "data.format=jsonl",
        "data.input=s3://videos/openvid/manifest.jsonl",
        "data.video_root=s3://videos/openvid",
        "data.output=s3://latents/run1",
    ]
    summary = run_preprocess(load_config(TINY, overrides))
    assert summary["output"].startswith("s3://latents/run1/fp-")
    assert (summary["rows_read"], summary["rows_encoded"], summary["clips_encoded"]) == (8, 3, 3)
    assert summary["failed_by_reason"] == {
        "bad_caption": 1,
        "missing_file": 1,
        "not_a_video": 1,
        "unsafe_path": 2,
    }
    keys = {o["Key"] for o in bucket_with_videos.list_objects_v2(Bucket="latents")["Contents"]}
    prefix = summary["output"].removeprefix("s3://latents/")
    assert f"{prefix}/manifest.json" in keys
    assert f"{prefix}/runs/{summary['run_id']}/errors.parquet" in keys
    assert not [k for k in keys if "/parts/" in k], keys  # outcome parts merged and removed

    cfg = load_config(TINY, overrides)
    ds = shard_set_dataset(
        *find_shard_set("s3://latents/run1", expected_fingerprint=data_fingerprint(cfg))
    )
    rows = ds.select_columns(["video_id", "source", "latent_mean"]).take_all()
    assert sorted(r["video_id"] for r in rows) == [
        "part0/clip0.mp4",
        "part0/clip1.mp4",
        "part0/clip2.mp4",
    ]
    assert all(r["source"].startswith("s3://videos/openvid/part0/") for r in rows)
    assert rows[0]["latent_mean"].shape == (4, 8, 8, 8)

    # The same manifest again: everything is cached, nothing is encoded.
    again = run_preprocess(load_config(TINY, overrides))
    assert (again["rows_cached"], again["clips_encoded"], again["rows_failed"]) == (3, 0, 5)
