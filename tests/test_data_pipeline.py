"""The preprocessing job end to end on a local Ray cluster: accounting, shards, cache, resume,
fingerprints. Runs are shared between tests through module fixtures (each costs seconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
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

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

NUM_GOOD = 6
FRAMES = 30  # good video i has FRAMES + int(videoid) % 7 frames


def _args(base: Path, csv: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(TINY),
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
    extra += ("data.max_error_fraction=0.9",)  # the collection is mostly bad on purpose
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
        version = mine[0]["source_version"]
        stat = Path(source).stat()
        assert version == f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}"
        drawn = windows.clip_windows(FRAMES + int(videoid) % 7, 8, 2, 2, 0, source)
        for ordinal, window in enumerate(drawn):
            for flipped in (False, True):
                cid = windows.clip_id(fp, source, 0, ordinal, flipped, version)
                (row,) = [r for r in mine if r["clip_id"] == cid]
                assert row["frame_indices"] == window.tolist()  # deterministic for the seed
                assert row["fps"] == pytest.approx(10.0)


def test_reading_shards_checks_the_fingerprint(first, tiny_base_dir):
    from pipelines.latents import find_shard_set, shard_set_dataset

    cfg = load_config(TINY, [f"model.base.pretrained={tiny_base_dir}"])
    expected = data_fingerprint(cfg)
    ds = shard_set_dataset(*find_shard_set(str(first["out"]), expected_fingerprint=expected))
    batch = ds.take_batch(3, batch_format="numpy")
    assert (
        batch["latent_mean"].shape == (3, 4, 8, 8, 8) and batch["latent_mean"].dtype == np.float16
    )
    assert batch["latent_std"].shape == (3, 4, 8, 8, 8) and np.all(batch["latent_std"] > 0)
    other = data_fingerprint(
        load_config(TINY, [f"model.base.pretrained={tiny_base_dir}", "data.resolution=128"])
    )
    with pytest.raises(FingerprintMismatchError, match="resolution: expected 128, found 64"):
        shard_set_dataset(*find_shard_set(str(first["out"]), expected_fingerprint=other))
    with pytest.raises(FingerprintMismatchError, match="resolution"):
        shard_set_dataset(*find_shard_set(first["summary"]["output"], expected_fingerprint=other))


def _footer_readers() -> int:
    """Footer-reader actors this cluster has started, alive or dead (GCS's actor table: the
    state API needs the dashboard, which the test cluster does not run)."""
    import ray._private.state

    return sum(a["ActorClassName"] == "FooterReader" for a in ray._private.state.actors().values())


def test_reading_a_shard_set_starts_no_footer_reader_actors(first):
    """Ray 2.60's default Parquet reader started 32 actors per read, a process each: 5 to 10 s
    before a one-shard set was read, at the start of every training job."""
    import ray.data

    from pipelines.latents import find_shard_set, shard_set_dataset

    default = ray.data.DataContext.get_current().use_datasource_v2
    before = _footer_readers()
    clips = shard_set_dataset(*find_shard_set(first["summary"]["output"])).materialize().count()
    assert clips == first["summary"]["clips_encoded"]
    assert _footer_readers() == before
    assert ray.data.DataContext.get_current().use_datasource_v2 == default  # restored


def test_reads_from_several_threads_leave_ray_datas_reader_as_it_was(first):
    """The reproduction reads shard sets from several threads at once (trainings side by side);
    each read switches Ray Data's process-wide reader and back, so unguarded they could restore
    each other's switch for good."""
    from concurrent.futures import ThreadPoolExecutor

    import ray.data

    from pipelines.latents import find_shard_set, shard_set_dataset

    default = ray.data.DataContext.get_current().use_datasource_v2
    found = find_shard_set(first["summary"]["output"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        datasets = list(pool.map(lambda _: shard_set_dataset(*found), range(16)))
    assert ray.data.DataContext.get_current().use_datasource_v2 == default
    assert datasets[-1].count() == first["summary"]["clips_encoded"]


def _on_a_copy(first: dict, out: Path) -> list[str]:
    """``first``'s arguments writing to ``out``, a copy of its shard set: a test that adds to
    the set leaves ``first``'s as the tests that read it expect, in any order."""
    shutil.copytree(first["out"], out)
    return [a if not a.startswith("data.output=") else f"data.output={out}" for a in first["args"]]


@pytest.fixture(scope="module")
def second(first, collection, tmp_path_factory):
    """The same table plus two new videos, in a run interrupted after its first shard (committed
    before the manifest's next flush), then resumed: only the new clips are encoded, each exactly
    once. (A SIGKILL, which leaves the shard unlisted, is covered in test_data_units.) It runs on
    a copy of ``first``'s shard set; the new videos sit beside the old ones, in no table of
    ``first``'s."""
    from pipelines.shards import ShardWriter

    for videoid, _, _ in good_rows(2, start=3000001):
        path = collection / "videos" / PAGE_DIR / f"{videoid}.mp4"
        write_video(path, frames=FRAMES, seed=int(videoid) % 1000)
    rows = good_rows(NUM_GOOD) + bad_rows() + good_rows(2, start=3000001)
    csv = write_webvid_csv(collection / "results_more.csv", rows)
    out = tmp_path_factory.mktemp("second") / "latents"
    args = _on_a_copy(first, out)
    args = [a if not a.startswith("data.input=") else f"data.input={csv}" for a in args]
    args.append("data.manifest_flush_shards=100")
    original = ShardWriter.write

    def killed_after_one_shard(self, batch):
        if self.shards_written == 1:
            raise KeyboardInterrupt("simulated kill")
        original(self, batch)

    directory = out / Path(first["summary"]["output"]).name
    listed_before = json.loads((directory / "manifest.json").read_text())["shards"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardWriter, "write", killed_after_one_shard)
        with pytest.raises(KeyboardInterrupt):
            _run(args)
    on_disk = sorted(p.name for p in (directory / "shards").glob("*.parquet"))
    manifest = json.loads((directory / "manifest.json").read_text())
    listed = manifest["shards"]
    # The interrupted run listed its shard, recorded itself and merged its outcome parts (the
    # manifest once showed fewer clips than the shards on disk, and parts/ stayed forever).
    assert len(on_disk) == len(listed) == len(listed_before) + 1
    assert manifest["num_clips"] == sum(entry["rows"] for entry in listed)
    interrupted = manifest["runs"][-1]
    assert interrupted["status"] == "interrupted" and interrupted["shards_written"] == 1
    run_dir = directory / "runs" / interrupted["run_id"]
    assert not (run_dir / "parts").exists() and (run_dir / "outcomes.parquet").exists()
    orphan = pq.read_table(directory / listed[-1]["path"])
    return {
        "summary": _run(args),
        "orphan_clips": orphan.column("clip_id").to_pylist(),
        "interrupted": interrupted["run_id"],
        "out": out,
    }


def test_added_rows_and_a_killed_run_encode_only_new_clips_once(first, second):
    summary, orphan = second["summary"], second["orphan_clips"]
    # The copy of first's shard set grew; first's own is as first wrote it.
    assert summary["output"] == str(second["out"] / Path(first["summary"]["output"]).name)
    first_manifest, first_rows = _shards(first["summary"])
    assert first_manifest["num_clips"] == len(first_rows) == NUM_GOOD * 4
    assert [r["run_id"] for r in first_manifest["runs"]] == [first["summary"]["run_id"]]
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
    assert [r["run_id"] for r in manifest["runs"]] == [
        first["summary"]["run_id"],
        second["interrupted"],
        summary["run_id"],
    ]
    assert [r["status"] for r in manifest["runs"]] == ["ok", "interrupted", "ok"]


def test_a_changed_fingerprint_never_mixes_with_old_shards(first, collection, tmp_path):
    out = tmp_path / "latents"
    args = _on_a_copy(first, out)
    directory = out / Path(first["summary"]["output"]).name
    before = (directory / "manifest.json").read_bytes()
    csv = write_webvid_csv(tmp_path / "one.csv", good_rows(1))
    args = [a if not a.startswith("data.input=") else f"data.input={csv}" for a in args]
    changed = _run([*args, "data.stride=1"])
    assert Path(changed["output"]) != directory and changed["clips_encoded"] == 4
    assert Path(changed["output"]).parent == out
    assert (directory / "manifest.json").read_bytes() == before
    from pipelines.latents import find_shard_set, shard_set_dataset

    with pytest.raises(FileNotFoundError, match="expected one fingerprint directory"):
        shard_set_dataset(*find_shard_set(str(out)))
    manifest = json.loads((Path(changed["output"]) / "manifest.json").read_text())
    assert shard_set_dataset(*find_shard_set(str(out), manifest["fingerprint"])).count() == 4


def test_outcomes_carry_their_input_row_number(first):
    """Each outcome names its input row (0 = the first record), errors included."""
    input_keys = [row[0] for row in good_rows(NUM_GOOD) + bad_rows()]
    run_dir = Path(first["summary"]["output"]) / "runs" / first["summary"]["run_id"]
    outcomes = pq.read_table(run_dir / "outcomes.parquet").to_pylist()
    assert sorted(r["row"] for r in outcomes) == list(range(len(input_keys)))
    assert all(input_keys[r["row"]] == r["key"] for r in outcomes)
    errors = pq.read_table(run_dir / "errors.parquet").to_pylist()
    assert {r["key"]: r["row"] for r in errors} == {key: input_keys.index(key) for key in BAD_KINDS}


def test_a_run_where_every_row_fails_exits_1(
    ray_cluster, tiny_base_dir, collection, tmp_path, capsys
):
    """Every row `missing_file` (a video root without the videos) once exited 0."""
    from jobs import cli, preprocess

    empty = tmp_path / "no_videos"
    empty.mkdir()
    args = _args(tiny_base_dir, collection / "results.csv", empty, tmp_path / "out")
    assert cli.run(preprocess.main, args) == 1
    captured = capsys.readouterr()
    assert "no clip was encoded" in captured.err and "missing_file" in captured.err
    assert "(failed)" in captured.out  # the summary table still shows what happened
    (manifest,) = (tmp_path / "out").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["runs"][-1]["status"] == "failed"


def test_a_replaced_video_is_encoded_again_and_its_old_clips_retired(
    ray_cluster, tiny_base_dir, tmp_path
):
    """The cache was keyed on the path: a file replaced by another video kept serving the old
    latents. Also pins the documented seed rule: another data.seed adds other clips."""
    from pipelines.latents import find_shard_set, shard_set_dataset

    rows = good_rows(2)
    videos = tmp_path / "videos" / PAGE_DIR
    for videoid, _, _ in rows:
        write_video(videos / f"{videoid}.mp4", frames=FRAMES, seed=int(videoid))
    csv = write_webvid_csv(tmp_path / "two.csv", rows)
    args = _args(tiny_base_dir, csv, tmp_path / "videos", tmp_path / "out")

    def latents() -> dict[str, np.ndarray]:
        ds = shard_set_dataset(*find_shard_set(str(tmp_path / "out")))
        batch = ds.take_batch(10, batch_format="numpy")
        return dict(zip(batch["video_id"], batch["latent_mean"]))

    assert _run(args)["clips_encoded"] == 2
    before = latents()
    replaced = rows[0][0]
    write_video(videos / f"{replaced}.mp4", frames=FRAMES + 5, seed=99)  # same path, new video
    again = _run(args)
    assert (again["clips_encoded"], again["clips_cached"]) == (1, 1)
    manifest = json.loads((Path(again["output"]) / "manifest.json").read_text())
    assert manifest["num_clips"] == 2 and manifest["retired"]["clips"] == 1
    after = latents()
    assert sorted(after) == sorted(before)  # one clip per video: the old one no longer read
    assert not np.array_equal(after[replaced], before[replaced])
    np.testing.assert_array_equal(after[rows[1][0]], before[rows[1][0]])
    assert _run(args)["clips_encoded"] == 0  # and now it is cached
    seeded = _run([*args, "data.seed=1"])
    assert seeded["clips_encoded"] == 2 and seeded["cache_size_clips"] == 4


def test_shards_hold_the_clips_in_input_order_even_when_the_first_video_decodes_last(
    ray_cluster, tiny_base_dir, tmp_path
):
    """Shards were written in the order the decode tasks and encode actors finished, so two runs
    of one input trained on different orders (the reproduction's runs differed from step 25 on).
    The first video here is the largest by far: its decode task finishes after the others'."""
    rows = good_rows(8)
    videos = tmp_path / "videos" / PAGE_DIR
    for index, (videoid, _, _) in enumerate(rows):
        size = (1920, 1080) if index == 0 else (64, 48)
        write_video(videos / f"{videoid}.mp4", frames=FRAMES, width=size[0], height=size[1])
    csv = write_webvid_csv(tmp_path / "rows.csv", rows)
    extra = ("data.decode_rows_per_task=1", "data.shard_size=3", "data.clips_per_video=2")
    summary = _run(_args(tiny_base_dir, csv, tmp_path / "videos", tmp_path / "out", *extra))
    _, clips = _shards(summary)
    assert [clip["video_id"] for clip in clips] == [videoid for videoid, _, _ in rows for _ in "ab"]
