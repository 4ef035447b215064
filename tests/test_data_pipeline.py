"""The preprocessing job end to end on a local Ray cluster: accounting, shards, cache, resume,
fingerprints. Runs are shared between tests through module fixtures (each costs seconds)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_media import (
    BAD_KINDS,
    PAGE_DIR,
    bad_rows,
    build_collection,
    good_rows,
    write_video,
    write_webvid_csv,
)

from animatediff.config import load_config
from pipelines import windows
from pipelines.fingerprint import FingerprintMismatchError, data_fingerprint

NUM_GOOD = 6
FRAMES = 30  # good video i has FRAMES + int(videoid) % 7 frames


def _args(base: Path, csv: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "configs/tiny.yaml",
        f"model.base.pretrained={base}",
        f"data.input={csv}",
        f"data.video_root={root}",
        f"data.output={out}",
        *extra,
    ]


def _run(args: list[str]) -> dict:
    """What ``python -m jobs.preprocess <args>`` does, returning its summary."""
    from jobs import cli
    from jobs.preprocess import JOB
    from pipelines.preprocess import run_preprocess

    cfg, _ = cli.parse(args, JOB)
    return run_preprocess(cfg)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("webvid")
    build_collection(root, NUM_GOOD, frames=FRAMES)
    return root


@pytest.fixture(scope="module")
def first(ray_cluster, tiny_base_dir, collection, tmp_path_factory):
    """Good and bad rows, two windows per video, flipped copies, shards of 5 clips."""
    out = tmp_path_factory.mktemp("latents")
    extra = ("data.clips_per_video=2", "data.flip=true", "data.shard_size=5")
    args = _args(tiny_base_dir, collection / "results.csv", collection / "videos", out, *extra)
    summary = _run(args)
    return {"summary": summary, "args": args, "out": out}


def _shards(summary: dict) -> tuple[dict, list[dict]]:
    directory = Path(summary["output"])
    manifest = json.loads((directory / "manifest.json").read_text())
    rows = []
    for entry in manifest["shards"]:
        rows += (
            pq.read_table(directory / entry["path"])
            .drop_columns(["latent_mean", "latent_std"])
            .to_pylist()
        )
    return manifest, rows


def test_every_input_row_is_accounted_for_exactly_once(first, collection):
    summary = first["summary"]
    input_keys = [row[0] for row in good_rows(NUM_GOOD) + bad_rows()]
    assert summary["rows_read"] == len(input_keys)
    assert summary["rows_encoded"] + summary["rows_cached"] + summary["rows_failed"] == len(
        input_keys
    )
    assert (summary["rows_encoded"], summary["rows_cached"]) == (NUM_GOOD, 0)
    assert summary["failed_by_reason"] == dict(Counter(BAD_KINDS.values()))
    run_dir = Path(summary["output"]) / "runs" / summary["run_id"]
    outcomes = pq.read_table(run_dir / "outcomes.parquet").to_pylist()
    assert sorted(r["key"] for r in outcomes) == sorted(input_keys)  # each key exactly once
    errors = pq.read_table(run_dir / "errors.parquet").to_pylist()
    assert {r["key"]: r["reason"] for r in errors} == BAD_KINDS
    assert all(r["message"] for r in errors)
    assert json.loads((run_dir / "summary.json").read_text())["rows_read"] == len(input_keys)


def test_shards_hold_every_window_and_flip_once(first):
    summary = first["summary"]
    manifest, rows = _shards(summary)
    assert summary["clips_encoded"] == NUM_GOOD * 2 * 2 == len(rows) == manifest["num_clips"]
    assert all(entry["rows"] <= 5 for entry in manifest["shards"]) and len(manifest["shards"]) >= 5
    assert len({r["clip_id"] for r in rows}) == len(rows)
    for entry in manifest["shards"]:
        data = (Path(summary["output"]) / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert (
            pq.ParquetFile(Path(summary["output"]) / entry["path"])
            .metadata.row_group(0)
            .column(0)
            .compression
            == "ZSTD"
        )
    fp = summary["fingerprint_hash"]
    for videoid, _, caption in good_rows(NUM_GOOD):
        mine = [r for r in rows if r["video_id"] == videoid]
        assert sorted(r["flipped"] for r in mine) == [False, False, True, True]
        source = mine[0]["source"]
        assert (
            source.endswith(f"/videos/{PAGE_DIR}/{videoid}.mp4") and mine[0]["caption"] == caption
        )
        drawn = windows.clip_windows(FRAMES + int(videoid) % 7, 8, 2, 2, 0, source)
        for ordinal, window in enumerate(drawn):
            for flipped in (False, True):
                cid = windows.clip_id(fp, source, 0, ordinal, flipped)
                (row,) = [r for r in mine if r["clip_id"] == cid]
                assert row["frame_indices"] == window.tolist()  # deterministic for the seed
                assert row["fps"] == pytest.approx(10.0)


def test_reading_shards_checks_the_fingerprint(first, tiny_base_dir):
    from pipelines.latents import find_shard_set, shard_set_dataset

    cfg = load_config("configs/tiny.yaml", [f"model.base.pretrained={tiny_base_dir}"])
    expected = data_fingerprint(cfg)
    ds = shard_set_dataset(*find_shard_set(str(first["out"]), expected_fingerprint=expected))
    batch = ds.take_batch(3, batch_format="numpy")
    assert (
        batch["latent_mean"].shape == (3, 4, 8, 8, 8) and batch["latent_mean"].dtype == np.float16
    )
    assert batch["latent_std"].shape == (3, 4, 8, 8, 8) and np.all(batch["latent_std"] > 0)
    other = data_fingerprint(
        load_config(
            "configs/tiny.yaml", [f"model.base.pretrained={tiny_base_dir}", "data.resolution=128"]
        )
    )
    with pytest.raises(FingerprintMismatchError, match="resolution: expected 128, found 64"):
        shard_set_dataset(*find_shard_set(str(first["out"]), expected_fingerprint=other))
    with pytest.raises(FingerprintMismatchError, match="resolution"):
        shard_set_dataset(*find_shard_set(first["summary"]["output"], expected_fingerprint=other))


@pytest.fixture(scope="module")
def second(first, collection):
    """The same table plus two new videos, in a run killed after its first shard (committed but
    not yet in the manifest), then resumed: only the new clips are encoded, each exactly once."""
    from pipelines.shards import ShardWriter

    for videoid, _, _ in good_rows(2, start=3000001):
        path = collection / "videos" / PAGE_DIR / f"{videoid}.mp4"
        write_video(path, frames=FRAMES, seed=int(videoid) % 1000)
    rows = good_rows(NUM_GOOD) + bad_rows() + good_rows(2, start=3000001)
    csv = write_webvid_csv(collection / "results_more.csv", rows)
    args = [a if not a.startswith("data.input=") else f"data.input={csv}" for a in first["args"]]
    args.append("data.manifest_flush_shards=100")
    original = ShardWriter.write

    def killed_after_one_shard(self, batch):
        if self.shards_written == 1:
            raise KeyboardInterrupt("simulated kill")
        original(self, batch)

    directory = Path(first["summary"]["output"])
    listed_before = json.loads((directory / "manifest.json").read_text())["shards"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardWriter, "write", killed_after_one_shard)
        with pytest.raises(KeyboardInterrupt):
            _run(args)
    on_disk = sorted(p.name for p in (directory / "shards").glob("*.parquet"))
    listed = json.loads((directory / "manifest.json").read_text())["shards"]
    assert listed == listed_before and len(on_disk) == len(listed) + 1  # committed, not listed
    orphan = pq.read_table(
        directory / "shards" / sorted(set(on_disk) - {Path(e["path"]).name for e in listed})[0]
    )
    return {"summary": _run(args), "orphan_clips": orphan.column("clip_id").to_pylist()}


def test_added_rows_and_a_killed_run_encode_only_new_clips_once(first, second):
    summary, orphan = second["summary"], second["orphan_clips"]
    assert summary["output"] == first["summary"]["output"]
    assert 1 <= len(orphan) <= 5
    # The 6 old videos are cached (nothing encoded again); the killed run's shard was adopted.
    assert summary["clips_encoded"] == 2 * 4 - len(orphan)
    assert summary["clips_cached"] == NUM_GOOD * 4 + len(orphan)
    assert summary["rows_cached"] >= NUM_GOOD and summary["rows_failed"] == len(BAD_KINDS)
    assert summary["rows_read"] == NUM_GOOD + 2 + len(BAD_KINDS)
    assert (
        summary["rows_encoded"] + summary["rows_cached"] + summary["rows_failed"]
        == summary["rows_read"]
    )
    manifest, rows = _shards(summary)
    assert manifest["num_clips"] == len(rows) == (NUM_GOOD + 2) * 4
    assert len({r["clip_id"] for r in rows}) == len(rows)  # nothing written twice
    assert sum(bool(e.get("adopted")) for e in manifest["shards"]) == 1
    assert [r["run_id"] for r in manifest["runs"]] == [
        first["summary"]["run_id"],
        summary["run_id"],
    ]


def test_a_changed_fingerprint_never_mixes_with_old_shards(first, second, collection):
    directory = Path(first["summary"]["output"])
    before = (directory / "manifest.json").read_bytes()
    csv = write_webvid_csv(collection / "one.csv", good_rows(1))
    args = [a if not a.startswith("data.input=") else f"data.input={csv}" for a in first["args"]]
    changed = _run([*args, "data.stride=1"])
    assert changed["output"] != first["summary"]["output"] and changed["clips_encoded"] == 4
    assert Path(changed["output"]).parent == directory.parent
    assert (directory / "manifest.json").read_bytes() == before
    from pipelines.latents import find_shard_set, shard_set_dataset

    with pytest.raises(FileNotFoundError, match="expected one fingerprint directory"):
        shard_set_dataset(*find_shard_set(str(first["out"])))
    manifest = json.loads((Path(changed["output"]) / "manifest.json").read_text())
    assert (
        shard_set_dataset(*find_shard_set(str(first["out"]), manifest["fingerprint"])).count() == 4
    )
