"""Data pipeline pieces without Ray: window sampling, path safety, decoding of every bad kind,
encoding, shards and their commit protocol, fingerprints, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_media import BAD_KINDS, PAGE_DIR, plan_rows, write_bad_videos, write_video

from animatediff.config import ConfigError, DataConfig, load_config
from animatediff.storage import Location, locate
from pipelines import windows
from pipelines.decode import (
    OUTCOME_SCHEMA,
    DecodeSpec,
    center_crop,
    decode_rows,
    resize_shape,
    truncation,
)
from pipelines.fingerprint import (
    FingerprintMismatchError,
    fingerprint_differences,
    fingerprint_from_models,
    fingerprint_hash,
)
from pipelines.paths import UnsafePathError, manifest_relative_path, webvid_relative_path
from pipelines.shards import ShardStore, load_manifest, shard_table
from pipelines.sources import Columns, PlanSpec, plan_batch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

# --------------------------------------------------------------------------------------------
# Window sampling (AnimateDiff's rule)
# --------------------------------------------------------------------------------------------


def test_window_rule_matches_animatediff():
    # Long video: window (16 - 1) * 4 + 1 = 61 frames, indices evenly spaced at stride 4.
    (indices,) = windows.clip_windows(200, 16, 4, 1, seed=0, source="a.mp4")
    assert indices.dtype == np.int32 and len(indices) == 16
    assert np.all(np.diff(indices) == 4)
    assert 0 <= indices[0] and indices[-1] < 200
    # Shorter video: the whole video, a smaller effective stride (linspace as the original).
    (short,) = windows.clip_windows(40, 16, 4, 1, seed=0, source="a.mp4")
    np.testing.assert_array_equal(short, np.linspace(0, 39, 16, dtype=np.int64))
    # Exactly num_frames frames: every frame once.
    (exact,) = windows.clip_windows(16, 16, 4, 1, seed=0, source="a.mp4")
    np.testing.assert_array_equal(exact, np.arange(16))
    with pytest.raises(windows.TooFewFramesError, match="15 decodable frames"):
        windows.clip_windows(15, 16, 4, 1, seed=0, source="a.mp4")


def test_windows_are_deterministic_distinct_and_prefix_stable():
    a = windows.clip_windows(300, 16, 4, 5, seed=7, source="s3://b/x.mp4")
    b = windows.clip_windows(300, 16, 4, 5, seed=7, source="s3://b/x.mp4")
    assert [w.tolist() for w in a] == [w.tolist() for w in b]
    assert len({int(w[0]) for w in a}) == 5  # distinct starts
    # Asking for fewer clips keeps the first ones (cache ids stay valid when clips grow).
    fewer = windows.clip_windows(300, 16, 4, 2, seed=7, source="s3://b/x.mp4")
    assert [w.tolist() for w in fewer] == [w.tolist() for w in a[:2]]
    other_seed = windows.clip_windows(300, 16, 4, 5, seed=8, source="s3://b/x.mp4")
    assert [w.tolist() for w in other_seed] != [w.tolist() for w in a]
    # Fewer distinct starts than asked: as many as exist.
    assert len(windows.clip_windows(62, 16, 4, 5, seed=0, source="x")) == 2


def test_clip_id_is_stable_and_separates_what_matters():
    base = windows.clip_id("fp1", "/v/a.mp4", 0, 0, False)
    assert base == windows.clip_id("fp1", "/v/a.mp4", 0, 0, False)
    assert len(base) == 16 and int(base, 16) >= 0
    others = {
        windows.clip_id("fp2", "/v/a.mp4", 0, 0, False),
        windows.clip_id("fp1", "/v/b.mp4", 0, 0, False),
        windows.clip_id("fp1", "/v/a.mp4", 1, 0, False),
        windows.clip_id("fp1", "/v/a.mp4", 0, 1, False),
        windows.clip_id("fp1", "/v/a.mp4", 0, 0, True),
    }
    assert base not in others and len(others) == 5


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def test_webvid_paths_and_traversal():
    assert webvid_relative_path("123", "000_050", "page_dir", ".mp4") == "000_050/123.mp4"
    assert webvid_relative_path("123", None, "flat", ".mp4") == "123.mp4"
    for videoid, page_dir in [
        ("../123", "p"),
        ("..", "p"),
        ("/etc/passwd", "p"),
        ("a\\..\\b", "p"),
        ("123", ".."),
        ("123", "../.."),
        ("123", "/abs"),
        ("s3://other/x", "p"),
        ("", "p"),
    ]:
        with pytest.raises(UnsafePathError):
            webvid_relative_path(videoid, page_dir, "page_dir", ".mp4")


def test_manifest_paths_stay_under_the_root(tmp_path):
    root = locate(str(tmp_path))
    assert manifest_relative_path("a/b.mp4", root) == "a/b.mp4"
    assert manifest_relative_path(f"{tmp_path}/a/b.mp4", root) == "a/b.mp4"
    for path in [
        "../x.mp4",
        "a/../../x.mp4",
        "/etc/passwd",
        f"{tmp_path}/../x.mp4",
        "s3://bucket/x.mp4",
        "file:///etc/passwd",
        "",
        "a\\b.mp4",
    ]:
        with pytest.raises(UnsafePathError):
            manifest_relative_path(path, root)
    s3_root = locate("s3://bucket/videos")
    assert manifest_relative_path("s3://bucket/videos/x.mp4", s3_root) == "x.mp4"
    with pytest.raises(UnsafePathError):
        manifest_relative_path("s3://bucket/videos-other/x.mp4", s3_root)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def test_resize_and_center_crop():
    assert resize_shape(1280, 720, 256) == (455, 256)
    assert resize_shape(48, 64, 32) == (32, 43)
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    crop = center_crop(frames, 4)
    assert crop.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(crop, frames[:, :, 1:5])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_bad_videos(root / PAGE_DIR)
    write_video(root / PAGE_DIR / "1.mp4", frames=30, seed=1)
    write_video(root / PAGE_DIR / "2.mp4", frames=12, width=48, height=64, seed=2)
    return root


def _decode_spec(root, outcomes, **kwargs):
    args = dict(num_frames=8, stride=2, resolution=32, seed=0, clips_per_video=1, threads=1)
    return DecodeSpec(**(args | kwargs), root=root, outcomes=outcomes)


def _outcomes(directory: Path) -> list[dict]:
    rows = []
    for part in sorted(directory.glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def test_every_bad_kind_is_recorded_with_its_reason(media, tmp_path):
    root = locate(str(media))
    keys = [k for k in BAD_KINDS if not k.startswith(("../", "/", "s3"))] + ["1"]
    captions = [b"ok"] * len(keys)
    captions[keys.index("2000009")] = b"  "
    captions[keys.index("2000010")] = b"\xff\xfe"
    _, plan = plan_rows(keys, root, captions=captions)
    clips = decode_rows(plan, _decode_spec(root, locate(str(tmp_path / "out"))))
    assert list(clips["key"]) == ["1"]
    assert clips["pixels"].shape == (1, 8, 32, 32, 3) and clips["pixels"].dtype == np.uint8
    records = {r["key"]: r for r in _outcomes(tmp_path / "out")}
    assert set(records) == set(keys) - {"1"}
    for key, record in records.items():
        assert record["status"] == "failed"
        assert record["reason"] == BAD_KINDS[key], (key, record)
        assert record["message"]
    assert "moov" in records["2000005"]["message"]
    assert "inside box 'mdat'" in records["2000006"]["message"]


def test_decoded_frames_follow_the_windows(media, tmp_path):
    import decord

    root = locate(str(media))
    spec, plan = plan_rows(["1", "2"], root, {"clips_per_video": 2, "flip": True})
    assert plan["need_mask"].tolist() == [0b1111, 0b1111]
    decode = _decode_spec(root, locate(str(tmp_path)), clips_per_video=2)
    clips = decode_rows(plan, decode)
    # Video 2 has 12 frames: window 15 > 12, one possible start, so one clip (two variants).
    assert list(clips["key"]) == ["1", "1", "2"]
    assert clips["row_first"].tolist() == [True, False, True]
    assert clips["row_clips"].tolist() == [4, 4, 2]
    source = str(clips["source"][0])
    expected = windows.clip_windows(30, 8, 2, 2, 0, source)
    np.testing.assert_array_equal(clips["frame_indices"][:2], np.stack(expected))
    # Portrait 48x64 video: resized to 32x43 and centre-cropped, values match decord's own.
    reader = decord.VideoReader(str(media / PAGE_DIR / "2.mp4"), width=32, height=43)
    reference = reader.get_batch(clips["frame_indices"][2].tolist()).asnumpy()[:, 5:37]
    np.testing.assert_array_equal(clips["pixels"][2], reference)
    # Deterministic: the same plan decodes to the same clips.
    again = decode_rows(plan, decode)
    np.testing.assert_array_equal(again["pixels"], clips["pixels"])


def test_plan_skips_cached_clips_and_in_batch_duplicates(media):
    root = locate(str(media))
    spec, plan = plan_rows(["1", "1", "2"], root, {"flip": True})
    assert plan["status"].tolist() == ["todo", "failed", "todo"]
    assert plan["reason"][1] == "duplicate"
    source, version = str(plan["source"][0]), str(plan["source_version"][0])
    assert version.startswith("size=")  # the plan stat'ed the file: its content identity
    cached = np.sort(windows.clip_id_to_int([windows.clip_id("fp", source, 0, 0, False, version)]))
    _, plan = plan_rows(["1", "2"], root, {"flip": True}, cached=cached)
    assert plan["need_mask"].tolist() == [0b10, 0b11]  # only the flipped clip of video 1
    assert plan["cached_clips"].tolist() == [1, 0]
    both = windows.clip_id_to_int(
        [windows.clip_id("fp", source, 0, 0, f, version) for f in (False, True)]
    )
    _, plan = plan_rows(["1"], root, {"flip": True}, cached=np.sort(both))
    assert plan["status"].tolist() == ["cached"]


def test_truncation_detection():
    assert truncation(b"not an mp4 at all") is None
    ftyp = (16).to_bytes(4, "big") + b"ftypisom" + b"\0" * 4
    mdat = (1000).to_bytes(4, "big") + b"mdat" + b"\0" * 100
    assert "mdat" in truncation(ftyp + mdat)
    moov = (16).to_bytes(4, "big") + b"moov" + b"\0" * 8
    assert truncation(ftyp + moov) is None
    assert "moov" in truncation(ftyp + (16).to_bytes(4, "big") + b"mdat" + b"\0" * 8)


# --------------------------------------------------------------------------------------------
# Encoding, shards, fingerprint
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cfg(tiny_base_dir):
    return load_config(TINY, [f"model.base.pretrained={tiny_base_dir}"])


def test_encoder_stores_posterior_mean_std_and_flipped_rows(tiny_cfg, tiny_base_dir):
    import torch

    from pipelines.encode import EncodeClips

    encoder = EncodeClips(tiny_cfg.model.base, "fp", seed=0, cache_text_embeddings=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 8, 64, 64, 3), dtype=np.uint8)
    batch = {
        "row": np.array([0, 1]),
        "key": np.array(["a", "b"], dtype=object),
        "video_id": np.array(["a", "b"], dtype=object),
        "caption": np.array(["a red ball", "a blue cube"], dtype=object),
        "source": np.array(["/v/a.mp4", "/v/b.mp4"], dtype=object),
        "source_version": np.array(["size=1;mtime_ns=2", "size=3;mtime_ns=4"], dtype=object),
        "ordinal": np.array([0, 0], np.int32),
        "frame_indices": np.tile(np.arange(8, dtype=np.int32), (2, 1)),
        "fps": np.array([10.0, 10.0], np.float32),
        "pixels": pixels,
        "need_mask": np.array([0b11, 0b10]),  # a: plain + flipped; b: flipped only
        "row_first": np.array([True, True]),
        "row_clips": np.array([2, 1], np.int32),
        "row_cached": np.array([0, 1], np.int32),
    }
    out = encoder(batch)
    assert out["flipped"].tolist() == [False, True, True]
    assert out["video_id"].tolist() == ["a", "a", "b"]
    assert out["row_first"].tolist() == [True, False, True]
    assert out["latent_mean"].shape == (3, 4, 8, 8, 8) and out["latent_mean"].dtype == np.float16
    assert out["latent_std"].shape == (3, 4, 8, 8, 8) and np.all(out["latent_std"] > 0)
    assert out["text_embedding"].shape == (3, 77, 32) and out["input_ids"].shape == (3, 77)
    assert out["clip_id"][1] == windows.clip_id("fp", "/v/a.mp4", 0, 0, True, "size=1;mtime_ns=2")
    assert out["source_version"].tolist() == ["size=1;mtime_ns=2"] * 2 + ["size=3;mtime_ns=4"]
    # Each row is the VAE posterior of its frames, unscaled, laid out (C, frames, h, w): the mean
    # and the std, from pixels scaled here by hand (uint8 0..255 -> -1..1).
    clips = [pixels[0], pixels[0, :, :, ::-1], pixels[1, :, :, ::-1]]  # a, a mirrored, b mirrored
    for row, frames in enumerate(clips):
        x = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
        with torch.no_grad():
            posterior = encoder.vae.encode(x).latent_dist  # (frames, C, h, w)
        for column, expected in (("latent_mean", posterior.mean), ("latent_std", posterior.std)):
            np.testing.assert_allclose(
                out[column][row].astype(np.float32),
                expected.permute(1, 0, 2, 3).numpy(),
                rtol=2e-3,
                atol=2e-3,
                err_msg=f"{column} of row {row}",
            )


def _latent_batch(ids, frames=8):
    n = len(ids)
    return {
        "clip_id": np.array(ids, dtype=object),
        "video_id": np.array(ids, dtype=object),
        "caption": np.array(["c"] * n, dtype=object),
        "frame_indices": np.tile(np.arange(frames, dtype=np.int32), (n, 1)),
        "fps": np.full(n, 10.0, np.float32),
        "source": np.array([f"/v/{i}" for i in ids], dtype=object),
        "source_version": np.array(["size=1;mtime_ns=1"] * n, dtype=object),
        "flipped": np.zeros(n, bool),
        "latent_mean": np.ones((n, 4, frames, 8, 8), np.float16),
        "latent_std": np.ones((n, 4, frames, 8, 8), np.float16),
    }


def test_interrupted_commits_are_adopted_or_discarded(tmp_path):
    directory = locate(str(tmp_path / "fp-x"))
    fingerprint = {"resolution": 64}
    store = ShardStore(directory, fingerprint)
    assert len(store.open()) == 0
    ids = [windows.clip_id("f", str(i), 0, 0, False) for i in range(3)]
    store.commit(shard_table(_latent_batch(ids[:2])), "part-a.parquet")
    store.write_manifest()
    # A run killed after writing a shard but before listing it, and one killed mid-write.
    store.commit(shard_table(_latent_batch(ids[2:])), "part-b.parquet")
    (tmp_path / "fp-x" / "shards" / ".tmp-123-part-c.parquet").write_bytes(b"PAR1 partial")
    listed = [e["path"] for e in load_manifest(directory)["shards"]]
    assert listed == ["shards/part-a.parquet"]  # readers see only complete, listed shards

    reopened = ShardStore(directory, fingerprint)
    index = reopened.open()
    assert sorted(index.tolist()) == sorted(windows.clip_id_to_int(ids).tolist())
    manifest = load_manifest(directory)
    assert [e["path"] for e in manifest["shards"]] == [
        "shards/part-a.parquet",
        "shards/part-b.parquet",
    ]
    assert manifest["num_clips"] == 3 and manifest["shards"][1]["adopted"]
    assert not list((tmp_path / "fp-x" / "shards").glob(".tmp-*"))
    import hashlib

    for entry in manifest["shards"]:
        data = (tmp_path / "fp-x" / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    with pytest.raises(FingerprintMismatchError, match="resolution"):
        ShardStore(directory, {"resolution": 128}).open()


def test_shard_schema_reads_back_as_tensors(tmp_path):
    batch = _latent_batch(["a", "b"])
    batch["text_embedding"] = np.zeros((2, 77, 32), np.float16)
    batch["input_ids"] = np.tile(np.arange(77, dtype=np.int32), (2, 1))
    table = shard_table(batch)
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.column("text_embedding").chunk(0).to_numpy().shape == (2, 77, 32)
    assert table.schema.field("frame_indices").type == pa.list_(pa.int32())
    assert table.schema.field("clip_id").type == pa.string()
    pq.write_table(table, tmp_path / "s.parquet")
    back = pq.read_table(tmp_path / "s.parquet").column("latent_mean").chunk(0)
    assert "TensorType" in type(back.type).__name__  # Ray's fixed-shape tensor extension
    np.testing.assert_array_equal(back.to_numpy(), np.ones((2, 4, 8, 8, 8), np.float16))


def test_fingerprint_changes_with_what_latents_mean(tiny_cfg):
    from animatediff.base_model import load_vae

    vae = load_vae(tiny_cfg.model.base)
    fp = fingerprint_from_models(tiny_cfg, vae)
    assert fp["scaling_factor"] == pytest.approx(0.18215)
    assert (fp["num_frames"], fp["stride"], fp["resolution"]) == (8, 2, 64)
    assert fingerprint_hash(fp) == fingerprint_hash(json.loads(json.dumps(fp)))
    other = load_config(TINY, ["data.resolution=128"])
    fp2 = fingerprint_from_models(other, vae)
    assert fingerprint_hash(fp2) != fingerprint_hash(fp)
    assert fingerprint_differences(fp, fp2) == ["resolution: expected 64, found 128"]
    # Settings that only choose clips (seed, flip, clips) do not change what a latent means.
    same = load_config(TINY, ["data.seed=3", "data.flip=true"])
    assert fingerprint_hash(fingerprint_from_models(same, vae)) == fingerprint_hash(fp)


def test_data_config_validation_names_the_option():
    cfg = load_config(ROOT / "configs/sd15_webvid.yaml")
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.resolution) == (16, 4, 256)
    for override, option in [
        ("data.resolution=100", "data.resolution"),
        ("data.num_frames=0", "data.num_frames"),
        ("data.layout=nested", "data.layout"),
        ("data.format=xml", "data.format"),
        ("data.clips_per_video=40", "data.clips_per_video"),
        ("data.video_ext=mp4", "data.video_ext"),
        ("data.shard_size=0", "data.shard_size"),
    ]:
        with pytest.raises(ConfigError, match=option):
            load_config(TINY, [override])


def test_outcome_schema_is_complete():
    assert OUTCOME_SCHEMA.names == [
        "row",
        "key",
        "video_id",
        "source",
        "status",
        "reason",
        "message",
        "clips",
        "cached_clips",
    ]


# --------------------------------------------------------------------------------------------
# Object stores that fail, input tables, MLflow
# --------------------------------------------------------------------------------------------


class _FlakyStore(pa.fs.FileSystemHandler):
    """An object store where ``deny/`` fails on HEAD, ``broken/`` on GET, and others serve bytes."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_type_name(self):
        return "flaky"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        infos = []
        for path in paths:
            if "/deny/" in path:
                raise OSError("AWS Error ACCESS_DENIED during HeadObject operation")
            size = (
                len(self.objects.get(path, b"x" * 100))
                if "/broken/" in path or path in self.objects
                else None
            )
            kind = pa.fs.FileType.File if size is not None else pa.fs.FileType.NotFound
            infos.append(pa.fs.FileInfo(path, kind, size=size))
        return infos

    def open_input_stream(self, path):
        if "/broken/" in path:
            raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: reset")
        return pa.BufferReader(self.objects[path])

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError

    get_file_info_selector = create_dir = delete_dir = delete_dir_contents = _unsupported
    delete_root_dir_contents = delete_file = move = copy_file = open_input_file = _unsupported
    open_output_stream = open_append_stream = _unsupported


def _todo_plan(keys: list[str], sources: list[str]) -> dict[str, np.ndarray]:
    """Plan rows as ``plan_batch`` makes them: every row still to decode."""
    count = len(keys)
    return {
        "row": np.arange(count),
        "key": np.array(keys, dtype=object),
        "video_id": np.array(keys, dtype=object),
        "caption": np.array(["c"] * count, dtype=object),
        "source": np.array(sources, dtype=object),
        "source_version": np.array([""] * count, dtype=object),
        "status": np.array(["todo"] * count, dtype=object),
        "reason": np.array([""] * count, dtype=object),
        "message": np.array([""] * count, dtype=object),
        "need_mask": np.ones(count, np.int64),
        "cached_clips": np.zeros(count, np.int32),
    }


def test_unreadable_object_store_objects_are_recorded(media, tmp_path):
    video = (media / PAGE_DIR / "1.mp4").read_bytes()
    fs = pa.fs.PyFileSystem(_FlakyStore({f"bucket/root/{PAGE_DIR}/ok/1.mp4": video}))
    root = Location(fs, "bucket/root", "s3://bucket/root")
    keys = ["deny/1", "broken/1", "ok/1"]
    sources = [f"s3://bucket/root/{PAGE_DIR}/{k}.mp4" for k in keys]
    plan = _todo_plan(keys, sources)
    out = tmp_path / "out"
    clips = decode_rows(plan, _decode_spec(root, locate(str(out))))
    assert clips["source"].tolist() == [f"s3://bucket/root/{PAGE_DIR}/ok/1.mp4"]  # bytes decode
    assert clips["pixels"].shape == (1, 8, 32, 32, 3)
    reasons = {r["source"].split("/")[-2]: r for r in _outcomes(out)}
    assert reasons["deny"]["reason"] == reasons["broken"]["reason"] == "unreadable"
    assert "ACCESS_DENIED" in reasons["deny"]["message"]
    assert "NETWORK_CONNECTION" in reasons["broken"]["message"]


def test_input_tables_must_have_the_mapped_columns(tmp_path):
    from pipelines.sources import check_input_columns

    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "text": "x"}\n')
    pq.write_table(pa.table({"video": ["a.mp4"], "caption": ["x"]}), tmp_path / "m.parquet")
    (tmp_path / "w.csv").write_text("videoid,page_dir,name\n1,p,x\n")
    ok = DataConfig(format="parquet")
    assert check_input_columns(ok, locate(str(tmp_path / "m.parquet"))).path == "video"
    jsonl = DataConfig(format="jsonl", caption_column="text")
    assert check_input_columns(jsonl, locate(str(tmp_path / "m.jsonl"))).caption == "text"
    with pytest.raises(ConfigError, match="data.caption_column: column 'caption' not in"):
        check_input_columns(DataConfig(format="jsonl"), locate(str(tmp_path / "m.jsonl")))
    webvid = DataConfig(format="webvid")
    assert check_input_columns(webvid, locate(str(tmp_path / "w.csv"))).page_dir == "page_dir"
    with pytest.raises(ConfigError, match="data.id_column"):
        bad = DataConfig(format="webvid", id_column="video_id")
        check_input_columns(bad, locate(str(tmp_path / "w.csv")))


def test_mlflow_logging_records_counts_and_fingerprint(tmp_path):
    import mlflow

    from tracking.preprocess import log_preprocess_run

    cfg = load_config(TINY, [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    summary = {
        "run_id": "r1",
        "fingerprint_hash": "abc",
        "rows_read": 5,
        "rows_encoded": 3,
        "rows_cached": 0,
        "rows_failed": 2,
        "clips_encoded": 3,
        "clips_cached": 0,
        "clips_per_s": 1.5,
        "failed_by_reason": {"missing_file": 2},
    }
    before = mlflow.get_tracking_uri()
    run_id = log_preprocess_run(cfg, summary, {"resolution": 64})
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = store.get_run(run_id)
    assert run.data.metrics["rows_read"] == 5 and run.data.metrics["failed.missing_file"] == 2
    assert run.data.params["data.resolution"] == "64" and run.data.tags["fingerprint_hash"] == "abc"
    # Provenance and the searchable tags; only the sections preprocessing reads as params.
    tags = run.data.tags
    assert (tags["job"], tags["data_fingerprint"], tags["preset"]) == (
        "preprocess",
        "fp-abc",
        "tiny",
    )
    assert tags["mlflow.source.name"] == "jobs.preprocess" and tags["mlflow.user"]
    assert "2 failed (missing_file 2)" in tags["mlflow.note.content"]
    assert {key.split(".")[0] for key in run.data.params} == {"data", "model"}
    assert run.info.status == "FINISHED"
    assert store.get_experiment(run.info.experiment_id).name == "animatediff-tiny-preprocess"
    local = store.download_artifacts(run_id, "fingerprint.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"resolution": 64}
    assert mlflow.get_tracking_uri() == before  # the process-wide setting is left alone


# --------------------------------------------------------------------------------------------
# Hardening (issue 12): paths, symbolic links, captions, row numbers, content identity, killed
# runs, failed runs
# --------------------------------------------------------------------------------------------


def test_path_errors_quote_the_input_value_escaped(tmp_path):
    root = locate(str(tmp_path))
    with pytest.raises(UnsafePathError) as info:
        manifest_relative_path(f"{tmp_path}/../x.mp4", root)
    assert repr(f"{tmp_path}/../x.mp4") in str(info.value)  # not the stripped '../x.mp4'
    for path in ("a\nb.mp4", "a\rb.mp4", "a\x1bb.mp4", "a\u2028b.mp4", "a\x00b.mp4"):
        with pytest.raises(UnsafePathError) as info:
            manifest_relative_path(path, root)
        message = str(info.value)
        assert message.isprintable() and "\n" not in message, message
    with pytest.raises(UnsafePathError, match=r"control character \(U\+000A\)"):
        webvid_relative_path("12\n3", PAGE_DIR, "page_dir", ".mp4")
    with pytest.raises(UnsafePathError, match="control character"):
        webvid_relative_path("123", "p\td", "page_dir", ".mp4")
    for itself in (str(tmp_path), f"{tmp_path}/", f"file://{tmp_path}"):
        with pytest.raises(UnsafePathError, match="names the video root itself"):
            manifest_relative_path(itself, root)


@pytest.fixture
def linked_root(tmp_path, media) -> Path:
    """A video root with links: out of the root (a video, a text file, a directory) and one
    that stays inside. ``outside/`` holds a real video, so following a link would encode it."""
    outside = tmp_path / "outside"
    write_video(outside / "secret.mp4", frames=30, seed=3)
    (outside / "hostname").write_text("host\n")
    root = tmp_path / "root"
    pages = root / PAGE_DIR
    pages.mkdir(parents=True)
    (pages / "1.mp4").write_bytes((media / PAGE_DIR / "1.mp4").read_bytes())
    (pages / "out.mp4").symlink_to(outside / "secret.mp4")
    (pages / "host.mp4").symlink_to(outside / "hostname")
    (pages / "in.mp4").symlink_to(pages / "1.mp4")
    (root / "linked").symlink_to(outside)  # a linked directory
    (outside / "9.mp4").symlink_to(outside / "secret.mp4")
    return root


def _webvid_plan(root: Path, rows, layout="page_dir", **spec):
    keys = [k for k, _ in rows]
    spec_kwargs = {"layout": layout, **spec}
    batch_spec, plan = plan_rows(keys, locate(str(root)), spec_kwargs)
    if layout == "page_dir":
        batch = {
            "videoid": np.array([k.encode() for k in keys], dtype=object),
            "page_dir": np.array([p.encode() for _, p in rows], dtype=object),
            "name": np.array([b"a caption"] * len(rows), dtype=object),
        }
        plan = plan_batch(batch, batch_spec, np.zeros(0, np.uint64))
    return plan


def test_symlinks_out_of_the_root_are_unsafe_in_every_layout(linked_root, tmp_path):
    """A link inside the root that points outside it was followed: its target was encoded into
    the shards (or parsed and reported `not_a_video`). Now: `unsafe_path`, never opened."""
    rows = [("out", PAGE_DIR), ("host", PAGE_DIR), ("in", PAGE_DIR), ("secret", "linked")]
    rows += [("1", PAGE_DIR)]
    plan = _webvid_plan(linked_root, rows)
    assert plan["status"].tolist() == ["failed", "failed", "todo", "failed", "todo"]
    assert plan["reason"].tolist()[:2] == ["unsafe_path"] * 2 and plan["reason"][3] == "unsafe_path"
    assert "outside the video root" in plan["message"][0] and "secret.mp4" in plan["message"][0]
    assert "data.follow_symlinks" in plan["message"][0]
    flat = _webvid_plan(linked_root / PAGE_DIR, [("out", ""), ("1", "")], layout="flat")
    assert flat["status"].tolist() == ["failed", "todo"] and flat["reason"][0] == "unsafe_path"
    # Manifests: a linked directory and a linked file.
    spec = PlanSpec(
        fmt="csv",
        layout="flat",
        video_ext=".mp4",
        columns=Columns("video", "caption", "video", None),
        root=locate(str(linked_root)),
        fingerprint_hash="fp",
        seed=0,
        clips_per_video=1,
        flip=False,
    )
    paths = ["linked/secret.mp4", f"{PAGE_DIR}/out.mp4", f"{PAGE_DIR}/in.mp4"]
    batch = {
        "video": np.array([p.encode() for p in paths], dtype=object),
        "caption": np.array([b"c"] * 3, dtype=object),
    }
    manifest = plan_batch(batch, spec, np.zeros(0, np.uint64))
    assert manifest["reason"].tolist() == ["unsafe_path", "unsafe_path", ""]
    # Opt-in: links may leave the root.
    followed = _webvid_plan(linked_root, rows[:1], follow_symlinks=True)
    assert followed["status"].tolist() == ["todo"]


def test_the_decoder_refuses_links_out_of_the_root_too(linked_root, tmp_path):
    """Defence in depth: a plan row naming a link (the file was swapped for a link after it was
    planned) is refused when the video is opened; a link inside the root decodes."""
    root = locate(str(linked_root))
    names = ["out", "host", "in"]
    sources = [root.join(PAGE_DIR, f"{n}.mp4").uri for n in names]
    plan = _todo_plan(names, sources)
    clips = decode_rows(plan, _decode_spec(root, locate(str(tmp_path / "o"))))
    assert clips["key"].tolist() == ["in"]
    assert clips["source_version"][0].startswith("size=")
    records = {r["key"]: r for r in _outcomes(tmp_path / "o")}
    assert {k: r["reason"] for k, r in records.items()} == {
        "out": "unsafe_path",
        "host": "unsafe_path",  # was parsed and reported not_a_video
    }
    assert [records[k]["row"] for k in ("out", "host")] == [0, 1]


def test_blank_captions_and_empty_ids(media):
    root = locate(str(media))
    captions = [b"\xe2\x80\x8b\xe2\x80\x8b", "\ufeff\u200d \u2060".encode(), b" ok \xe2\x80\x8b"]
    _, plan = plan_rows(["1", "2", "2000009"], root, captions=captions)
    assert plan["reason"].tolist() == ["bad_caption", "bad_caption", ""]
    assert plan["caption"][2] == "ok"
    assert "\\u200b" in plan["message"][0]  # shown escaped, so a reader sees why
    _, plan = plan_rows(["", "1"], root)
    assert plan["key"].tolist() == ["<row 0: empty videoid>", "1"]  # was '<None: >'
    assert plan["reason"][0] == "unsafe_path"


def test_plan_rows_keep_their_input_row_number(media, tmp_path):
    root = locate(str(media))
    spec, _ = plan_rows(["1"], root)
    batch = {
        "videoid": np.array([b"2000001", b"1", b"../x"], dtype=object),
        "page_dir": np.array([PAGE_DIR.encode()] * 3, dtype=object),
        "name": np.array([b"c"] * 3, dtype=object),
        "row": np.array([41, 42, 43]),
    }
    plan = plan_batch(batch, spec, np.zeros(0, np.uint64))
    assert plan["row"].tolist() == [41, 42, 43]
    clips = decode_rows(plan, _decode_spec(root, locate(str(tmp_path))))
    assert clips["row"].tolist() == [42]
    assert {r["key"]: r["row"] for r in _outcomes(tmp_path)} == {"2000001": 41, "../x": 43}


def test_a_replaced_file_is_not_served_from_the_cache(tmp_path):
    """The cache was keyed on the path alone: a file replaced by another video kept its old
    latents. Now the clip id includes the content identity (size + mtime, or a hash)."""
    import os

    pages = tmp_path / PAGE_DIR
    video = write_video(pages / "1.mp4", frames=30, seed=1)
    root = locate(str(tmp_path))

    def plan(cached, **spec):
        return plan_rows(["1"], root, spec, cached=cached)[1]

    first = plan(np.zeros(0, np.uint64))
    version = str(first["source_version"][0])
    cached = windows.clip_id_to_int(
        [windows.clip_id("fp", str(first["source"][0]), 0, 0, False, version)]
    )
    assert plan(cached)["status"].tolist() == ["cached"]
    write_video(video, frames=40, seed=2)  # another video at the same path
    replaced = plan(cached)
    assert replaced["status"].tolist() == ["todo"] and replaced["source_version"][0] != version
    # Same size and mtime but other bytes: only data.content_hash notices.
    stat = video.stat()
    data = bytearray(video.read_bytes())
    data[-1] ^= 0xFF
    video.write_bytes(bytes(data))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hashed = plan(np.zeros(0, np.uint64), content_hash=True)
    assert hashed["source_version"][0].startswith("sha256=")
    hashed_ids = windows.clip_id_to_int(
        [windows.clip_id("fp", str(first["source"][0]), 0, 0, False, hashed["source_version"][0])]
    )
    assert plan(hashed_ids, content_hash=True)["status"].tolist() == ["cached"]
    video.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan(hashed_ids, content_hash=True)["status"].tolist() == ["todo"]


def test_killed_runs_are_recorded_and_their_parts_merged(tmp_path):
    """A run killed outright (SIGKILL) leaves an unlisted shard, outcome parts and no summary;
    those parts were left forever and the run was missing from `runs`."""
    from pipelines.shards import RUNS

    directory = locate(str(tmp_path / "fp-x"))
    store = ShardStore(directory, {"resolution": 64})
    store.open()
    ids = [windows.clip_id("f", str(i), 0, 0, False) for i in range(2)]
    store.commit(shard_table(_latent_batch(ids)), "part-killed1-000000.parquet")  # not listed
    parts = tmp_path / "fp-x" / RUNS / "killed1" / "parts"
    parts.mkdir(parents=True)
    records = [
        {"row": 1, "key": "b", "video_id": "b", "source": "/v/b", "status": "failed"}
        | {"reason": "missing_file", "message": "gone", "clips": 0, "cached_clips": 0},
        {"row": 0, "key": "a", "video_id": "a", "source": "/v/a", "status": "encoded"}
        | {"reason": "", "message": "", "clips": 2, "cached_clips": 0},
    ]
    pq.write_table(pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA), parts / "part-1.parquet")

    ShardStore(directory, {"resolution": 64}).open()
    manifest = load_manifest(directory)
    assert manifest["num_clips"] == 2 and manifest["shards"][0]["adopted"]
    (run,) = manifest["runs"]
    assert run["run_id"] == "killed1" and run["status"] == "killed"
    assert (run["rows_read"], run["rows_failed"], run["clips_encoded"]) == (2, 1, 2)
    assert not parts.exists()
    run_dir = tmp_path / "fp-x" / RUNS / "killed1"
    assert pq.read_table(run_dir / "outcomes.parquet").column("row").to_pylist() == [0, 1]
    assert pq.read_table(run_dir / "errors.parquet").column("key").to_pylist() == ["b"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "killed"
    ShardStore(directory, {"resolution": 64}).open()  # recorded once only
    assert len(load_manifest(directory)["runs"]) == 1


@pytest.mark.parametrize(
    ("counts", "words"),
    [
        ({"rows_read": 0, "rows_encoded": 0, "rows_cached": 0, "rows_failed": 0}, "no rows"),
        ({"rows_read": 3, "rows_encoded": 0, "rows_cached": 0, "rows_failed": 3}, "all 3 rows"),
        ({"rows_read": 4, "rows_encoded": 1, "rows_cached": 0, "rows_failed": 3}, "75% > data"),
        ({"rows_read": 4, "rows_encoded": 2, "rows_cached": 0, "rows_failed": 2}, None),
        ({"rows_read": 4, "rows_encoded": 0, "rows_cached": 4, "rows_failed": 0}, None),
    ],
)
def test_a_run_fails_when_nothing_or_too_little_was_encoded(counts, words):
    from pipelines.preprocess import outcome_failure

    cfg = load_config(TINY, ["data.input=in.csv"])
    counts = counts | {"failed_by_reason": {"missing_file": counts["rows_failed"]}}
    failure = outcome_failure(cfg, counts)
    assert failure is None if words is None else words in failure, failure


def test_latents_do_not_depend_on_the_batch_a_clip_lands_in(tiny_cfg):
    """A resumed run batches clips differently; 3 of 57 clips once differed by one float16 step
    (convolutions pick their algorithm by batch shape: a clip alone vs in a batch of 5-6)."""
    import torch

    from pipelines.encode import EncodeClips

    torch.set_num_threads(1)
    encoder = EncodeClips(tiny_cfg.model.base, "fp", seed=0, batch_size=4)
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 8, 256, 256, 3), dtype=np.uint8)
    together, _ = encoder.encode_latents(frames)
    for part in (slice(0, 1), slice(4, 5), slice(3, 6)):
        alone, _ = encoder.encode_latents(frames[part])
        np.testing.assert_array_equal(alone, together[part])


def test_clips_of_a_replaced_video_are_retired(tmp_path):
    """Keying on content identity encodes a replaced video again; its earlier clips must then
    stop counting (and reaching training), while clips that only add to a video (another
    window, another seed) stay live."""
    from pipelines.shards import load_retired

    directory = locate(str(tmp_path / "fp-x"))
    store = ShardStore(directory, {"resolution": 64})
    store.open()

    def commit(name: str, rows: list[tuple[str, str, str]]) -> None:
        batch = _latent_batch([clip for clip, _, _ in rows])
        batch["source"] = np.array([source for _, source, _ in rows], dtype=object)
        batch["source_version"] = np.array([version for _, _, version in rows], dtype=object)
        store.commit(shard_table(batch), name)

    ids = {name: windows.clip_id("f", name, 0, 0, False) for name in ("a1", "b1", "a2", "b1s")}
    commit("part-1.parquet", [(ids["a1"], "/v/a", "v1"), (ids["b1"], "/v/b", "v1")])
    commit("part-2.parquet", [(ids["a2"], "/v/a", "v2")])  # /v/a replaced
    commit("part-3.parquet", [(ids["b1s"], "/v/b", "v1")])  # /v/b: one more clip, same video
    live = store.refresh()
    assert sorted(live.tolist()) == sorted(
        windows.clip_id_to_int([ids["a2"], ids["b1"], ids["b1s"]]).tolist()
    )
    manifest = load_manifest(directory)
    assert manifest["num_clips"] == 3 and manifest["retired"]["clips"] == 1
    assert load_retired(directory, manifest) == {"shards/part-1.parquet": {ids["a1"]}}
    # The old content comes back (a content hash gives its old id): the newest copy is live.
    commit("part-4.parquet", [(ids["a1"], "/v/a", "v1")])
    store.refresh()
    manifest = load_manifest(directory)
    assert manifest["num_clips"] == 3
    assert load_retired(directory, manifest) == {
        "shards/part-1.parquet": {ids["a1"]},
        "shards/part-2.parquet": {ids["a2"]},
    }
    assert len(list((tmp_path / "fp-x").glob("retired-*.parquet"))) == 1  # the old list removed
    reopened = ShardStore(directory, {"resolution": 64})
    assert len(reopened.open()) == 3


def test_input_tables_number_their_records_in_every_format(tmp_path):
    """The row number is each record's position in the input, whatever the format and however
    the read is split into tasks (Parquet: by row group)."""
    from pipelines.sources import input_table_datasource

    records = [{"video": f"{i}.mp4", "caption": f"c{i}"} for i in range(7)]
    (tmp_path / "m.csv").write_text(
        "video,caption\n" + "".join(f"{r['video']},{r['caption']}\n" for r in records)
    )
    lines = [json.dumps({"video": r["video"]}) for r in records[:-1]]
    lines.append(json.dumps(records[-1]))  # the caption key appears only on the last line
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "m.parquet", row_group_size=2)
    for fmt in ("csv", "jsonl", "parquet"):
        cfg = DataConfig(format=fmt)
        location = locate(str(tmp_path / f"m.{fmt}"))
        source = input_table_datasource(cfg, location, Columns("video", "caption", "video", None))
        tables = [t for task in source.get_read_tasks(3) for t in task.read_fn()]
        rows = pa.concat_tables(tables).to_pylist()
        assert [r["row"] for r in rows] == list(range(7)), fmt
        videos = [
            r["video"].decode() if isinstance(r["video"], bytes) else r["video"] for r in rows
        ]
        assert videos == [r["video"] for r in records], fmt
