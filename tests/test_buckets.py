"""Aspect-ratio buckets (``data.buckets``): the choice, the decoded sizes, the shards, the
per-bucket batch stream and its resume. No Ray here (the end-to-end runs are in
``test_buckets_train.py``)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from data_media import PAGE_DIR, plan_rows, write_video

from animatediff.config import ConfigError, DataConfig, load_config
from animatediff.storage import Location, locate
from pipelines import windows
from pipelines.buckets import center_crop_to, cover_shape, nearest_bucket
from pipelines.decode import DecodeSpec, decode_rows
from pipelines.shards import ShardStore, ShardWriter, load_manifest
from trainer.checkpoint import Position, TrainerState
from trainer.data import BucketStream, bucket_for_step, validation_batches

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
FIVE = ((256, 256), (224, 288), (288, 224), (192, 320), (320, 192))
"""The five buckets of the option's docstring: square, two landscape, two portrait."""


# -- the choice ---------------------------------------------------------------------------------


def test_each_video_goes_to_the_bucket_nearest_its_aspect_ratio():
    assert nearest_bucket(256, 256, FIVE) == 0
    assert nearest_bucket(1920, 1080, FIVE) == 3  # 16:9 -> 320x192 (5:3), not 288x224
    assert nearest_bucket(1080, 1920, FIVE) == 4  # its portrait twin
    assert nearest_bucket(640, 480, FIVE) == 1  # 4:3 -> 288x224 (9:7)
    assert nearest_bucket(480, 640, FIVE) == 2
    assert nearest_bucket(48, 80, FIVE) == 4  # the portrait test clips: 3:5
    # In log ratio 1.45:1 is nearer 2:1 than 1:1 (0.32 vs 0.37); in plain ratio it would not be.
    assert nearest_bucket(145, 100, ((64, 64), (64, 128))) == 1
    # Log ratio: a 2:1 video is as far from 1:1 as a 1:2 one, mirrored buckets mirror the choice.
    for width, height in ((300, 200), (500, 210), (1000, 999), (7, 3)):
        a, b = nearest_bucket(width, height, FIVE), nearest_bucket(height, width, FIVE)
        assert FIVE[a] == FIVE[b][::-1], (width, height)


def test_ties_go_to_the_earlier_bucket():
    # 1:1 lies exactly halfway (in log ratio) between 2:1 and 1:2: whichever is listed first wins.
    wide, tall = (128, 256), (256, 128)
    assert nearest_bucket(100, 100, (wide, tall)) == 0
    assert nearest_bucket(100, 100, (tall, wide)) == 0
    # sqrt(2):1 is halfway between 1:1 and 2:1 in log ratio; the rounding keeps float error out.
    assert nearest_bucket(round(1000 * math.sqrt(2)), 1000, ((64, 64), (64, 128))) in (0, 1)
    assert nearest_bucket(3, 2, ((64, 96), (128, 192))) == 0  # equal ratios: the earlier one
    with pytest.raises(ValueError, match="data.buckets"):
        nearest_bucket(3, 2, ())


def test_resize_covers_the_bucket_and_the_crop_keeps_the_centre():
    assert cover_shape(1920, 1080, (192, 320)) == (341, 192)
    assert cover_shape(1080, 1920, (320, 192)) == (192, 341)
    assert cover_shape(48, 80, (80, 48)) == (48, 80)  # same ratio: no crop
    assert cover_shape(640, 480, (256, 256)) == (341, 256)
    for width, height in ((1919, 1081), (33, 57), (4000, 10), (10, 4000)):
        for bucket in FIVE:
            out_width, out_height = cover_shape(width, height, bucket)
            assert out_height >= bucket[0] and out_width >= bucket[1]
            assert out_height == bucket[0] or out_width == bucket[1]  # the smallest cover
    frames = np.arange(2 * 6 * 10 * 3, dtype=np.uint8).reshape(2, 6, 10, 3)
    np.testing.assert_array_equal(center_crop_to(frames, (4, 6)), frames[:, 1:5, 2:8])
    with pytest.raises(ValueError, match="smaller than the bucket"):
        center_crop_to(frames, (8, 8))


def test_bucket_option_is_validated_naming_it():
    assert DataConfig(buckets=((64, 64), (48, 80))).buckets == ((64, 64), (48, 80))
    cfg = load_config(TINY, ["data.buckets=[[64, 64], [48, 80], [80, 48]]"])
    assert cfg.data.buckets == ((64, 64), (48, 80), (80, 48))
    cases = [
        ([[64, 60]], r"data.buckets\[0\]: .*multiples of 8"),
        ([[64, 64], [0, 64]], r"data.buckets\[1\]: .*multiples of 8"),
        ([[64, 64, 8]], r"data.buckets\[0\]: expected 2 items"),
        ([[64, 64], [128, 128]], "data.buckets: two buckets share the aspect ratio"),
        ([[64, 64], [64, 192]], "data.buckets: areas range from 4096 to 12288"),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY, [f"data.buckets={value}"])
    with pytest.raises(ConfigError, match="data.buckets: data.camera_motion=zoom_in"):
        DataConfig(buckets=((64, 64), (48, 80)), camera_motion="zoom_in")
    assert DataConfig(buckets=((64, 64),), camera_motion="zoom_in").buckets == ((64, 64),)


def test_fingerprint_holds_the_buckets(tiny_base_dir):
    from animatediff.base_model import load_vae
    from pipelines.fingerprint import fingerprint_from_models, fingerprint_hash

    plain = load_config(TINY, [f"model.base.pretrained={tiny_base_dir}"])
    vae = load_vae(plain.model.base)
    square = fingerprint_from_models(plain, vae)
    assert "buckets" not in square  # caches made without buckets keep their fingerprint
    hashes = {fingerprint_hash(square)}
    for value in ("[[64, 64], [48, 80]]", "[[64, 64], [80, 48]]", "[[48, 80], [64, 64]]"):
        cfg = load_config(TINY, [f"model.base.pretrained={tiny_base_dir}", f"data.buckets={value}"])
        fp = fingerprint_from_models(cfg, vae)
        assert fp["buckets"] == [list(b) for b in cfg.data.buckets]
        hashes.add(fingerprint_hash(fp))
    assert len(hashes) == 4  # other buckets, or another order (ties), are another cache


# -- decoding -----------------------------------------------------------------------------------


BUCKETS = ((64, 64), (64, 96), (96, 64))
"""Square, landscape (height 64, width 96) and portrait (height 96, width 64). No side of 48:
decord 0.6 fails ("from_size == to_size") to decode to some small widths (16, 24, 48 and 72 of
16..328, measured), scaled or not."""


@pytest.fixture(scope="module")
def shaped_media(tmp_path_factory) -> Path:
    """Three videos: landscape 120x80, portrait 80x120 and square 40x40 (width x height)."""
    root = tmp_path_factory.mktemp("shaped")
    for key, (width, height) in {"wide": (120, 80), "tall": (80, 120), "square": (40, 40)}.items():
        write_video(root / PAGE_DIR / f"{key}.mp4", frames=12, width=width, height=height)
    return root


def _plan(root, keys):
    return plan_rows(keys, root, captions=[f"a {k} video".encode() for k in keys])[1]


def _spec(root, outcomes, **kwargs):
    args = dict(num_frames=4, stride=2, resolution=32, seed=0, clips_per_video=1, threads=1)
    return DecodeSpec(**(args | kwargs), root=root, outcomes=outcomes)


def test_decoded_clips_take_their_bucket_shape(shaped_media, tmp_path):
    import decord

    root = locate(str(shaped_media))
    plan = _plan(root, ["wide", "tall", "square"])
    clips = decode_rows(plan, _spec(root, locate(str(tmp_path)), buckets=BUCKETS))
    assert list(clips["key"]) == ["wide", "tall", "square"]
    assert [c.shape for c in clips["pixels"]] == [(4, 64, 96, 3), (4, 96, 64, 3), (4, 64, 64, 3)]
    assert clips["pixels"].dtype == object  # mixed shapes: one array per clip
    assert clips["height"].tolist() == [64, 96, 64] and clips["width"].tolist() == [96, 64, 64]
    # The square 40x40 video is enlarged to cover 64x64 exactly; the values are decord's own.
    reader = decord.VideoReader(str(shaped_media / PAGE_DIR / "square.mp4"), width=64, height=64)
    reference = reader.get_batch(clips["frame_indices"][2].tolist()).asnumpy()
    np.testing.assert_array_equal(clips["pixels"][2], reference)
    # One bucket only: a regular (clips, frames, H, W, 3) array.
    portrait = decode_rows(
        _plan(root, ["tall"]), _spec(root, locate(str(tmp_path)), buckets=BUCKETS)
    )
    assert portrait["pixels"].shape == (1, 4, 96, 64, 3) and portrait["pixels"].dtype == np.uint8


def test_without_buckets_every_clip_is_the_square_crop(shaped_media, tmp_path):
    root = locate(str(shaped_media))
    spec = _spec(root, locate(str(tmp_path)), resolution=64)
    clips = decode_rows(_plan(root, ["wide", "tall", "square"]), spec)
    assert clips["pixels"].shape == (3, 4, 64, 64, 3) and clips["pixels"].dtype == np.uint8
    assert "height" not in clips and "width" not in clips


def test_the_encoder_encodes_each_bucket_apart_and_exactly(tiny_base_dir):
    from pipelines.encode import EncodeClips

    cfg = load_config(TINY, [f"model.base.pretrained={tiny_base_dir}"])
    encoder = EncodeClips(cfg.model.base, "fp", seed=0, batch_size=2)
    rng = np.random.default_rng(0)
    shapes = [(4, 64, 96, 3), (4, 96, 64, 3), (4, 64, 96, 3)]
    frames = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]
    pixels = np.empty(3, dtype=object)
    for i, f in enumerate(frames):
        pixels[i] = f
    batch = {
        "row": np.array([0, 1, 2]),
        "key": np.array(["a", "b", "c"], dtype=object),
        "video_id": np.array(["a", "b", "c"], dtype=object),
        "caption": np.array(["x", "y", "z"], dtype=object),
        "source": np.array(["/v/a", "/v/b", "/v/c"], dtype=object),
        "source_version": np.array(["v"] * 3, dtype=object),
        "ordinal": np.zeros(3, np.int32),
        "frame_indices": np.tile(np.arange(4, dtype=np.int32), (3, 1)),
        "fps": np.full(3, 10.0, np.float32),
        "pixels": pixels,
        "need_mask": np.array([0b01, 0b11, 0b01]),  # b also flipped
        "row_first": np.ones(3, bool),
        "row_clips": np.array([1, 2, 1], np.int32),
        "row_cached": np.zeros(3, np.int32),
        "height": np.array([64, 96, 64], np.int32),
        "width": np.array([96, 64, 96], np.int32),
    }
    out = encoder(batch)
    assert out["flipped"].tolist() == [False, False, True, False]
    assert out["height"].tolist() == [64, 96, 96, 64]
    shapes_out = [m.shape for m in out["latent_mean"]]
    assert shapes_out == [(4, 4, 8, 12), (4, 4, 12, 8), (4, 4, 12, 8), (4, 4, 8, 12)]
    # Each clip's latents are those of the clip encoded alone (same chunk size, same arithmetic).
    clips = [frames[0], frames[1], frames[1][:, :, ::-1], frames[2]]
    for row, clip in enumerate(clips):
        mean, std = encoder.encode_latents(clip[None].copy())
        np.testing.assert_array_equal(out["latent_mean"][row], mean[0], err_msg=str(row))
        np.testing.assert_array_equal(out["latent_std"][row], std[0], err_msg=str(row))


# -- shards -------------------------------------------------------------------------------------


def _latent_rows(ids: list[str], sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Encoder output rows of the given pixel sizes (object latent columns when they mix)."""
    n = len(ids)
    mean = np.empty(n, dtype=object)
    for i, (height, width) in enumerate(sizes):
        mean[i] = np.full((4, 2, height // 8, width // 8), i, np.float16)
    return {
        "clip_id": np.array(ids, dtype=object),
        "video_id": np.array(ids, dtype=object),
        "caption": np.array([f"clip {i}" for i in ids], dtype=object),
        "frame_indices": np.tile(np.arange(2, dtype=np.int32), (n, 1)),
        "fps": np.full(n, 10.0, np.float32),
        "source": np.array([f"/v/{i}" for i in ids], dtype=object),
        "source_version": np.array(["v"] * n, dtype=object),
        "flipped": np.zeros(n, bool),
        "latent_mean": mean,
        "latent_std": mean.copy(),
        "height": np.array([h for h, _ in sizes], np.int32),
        "width": np.array([w for _, w in sizes], np.int32),
        "row": np.arange(n),
        "key": np.array(ids, dtype=object),
        "row_first": np.ones(n, bool),
        "row_clips": np.ones(n, np.int32),
        "row_cached": np.zeros(n, np.int32),
    }


MIXED = [(64, 96), (96, 64), (64, 96), (64, 64), (96, 64)]
"""(height, width) of five clips in three buckets, interleaved."""


def _write_mixed(tmp_path: Path) -> tuple[Location, ShardWriter, list[str]]:
    """One batch of the ``MIXED`` clips written to a bucketed store:
    ``(store directory, writer, clip ids)``."""
    directory = locate(str(tmp_path / "fp-x"))
    store = ShardStore(directory, {"buckets": [list(b) for b in BUCKETS]})
    store.open()
    writer = ShardWriter(store, "run", flush_every=1)
    ids = [windows.clip_id("f", str(i), 0, 0, False) for i in range(len(MIXED))]
    writer.write(_latent_rows(ids, MIXED))
    return directory, writer, ids


def test_a_batch_of_mixed_buckets_becomes_one_shard_per_bucket(tmp_path):
    directory, writer, ids = _write_mixed(tmp_path)
    manifest = load_manifest(directory)
    assert [e["bucket"] for e in manifest["shards"]] == [[64, 96], [96, 64], [64, 64]]
    assert [e["rows"] for e in manifest["shards"]] == [2, 2, 1]
    assert writer.clips_written == 5 and writer.shards_written == 3
    for entry, rows in zip(manifest["shards"], ([0, 2], [1, 4], [3])):
        table = pq.read_table(tmp_path / "fp-x" / entry["path"])
        height, width = entry["bucket"]
        assert table["height"].to_pylist() == [height] * len(rows)
        assert table["width"].to_pylist() == [width] * len(rows)
        assert table["clip_id"].to_pylist() == [ids[i] for i in rows]
        latents = table["latent_mean"].chunk(0)
        assert "TensorType" in type(latents.type).__name__  # fixed shape within the shard
        values = latents.to_numpy()
        assert values.shape == (len(rows), 4, 2, height // 8, width // 8)
        assert values[:, 0, 0, 0, 0].tolist() == rows  # each row where it belongs
    # A shard a killed run left unlisted is adopted with its bucket.
    (tmp_path / "fp-x" / "manifest.json").unlink()
    reopened = ShardStore(directory, writer.store.fingerprint)
    reopened.open()
    adopted = sorted((e["path"], e["bucket"]) for e in load_manifest(directory)["shards"])
    assert adopted == sorted((e["path"], e["bucket"]) for e in manifest["shards"])


# -- training batches ---------------------------------------------------------------------------


def test_bucket_draws_are_pure_rank_free_and_follow_the_weights():
    weights = [3, 1, 0, 4]
    draws = [bucket_for_step(7, k, weights) for k in range(2000)]
    assert draws == [bucket_for_step(7, k, weights) for k in range(2000)]  # pure
    assert draws[1000:1100] == [bucket_for_step(7, k, weights) for k in range(1000, 1100)]
    counts = Counter(draws)
    assert counts[2] == 0  # a bucket without full batches is never drawn
    for bucket, weight in enumerate(weights):
        assert abs(counts[bucket] / 2000 - weight / 8) < 0.04, counts
    assert draws != [bucket_for_step(8, k, weights) for k in range(2000)]  # the seed matters
    with pytest.raises(ValueError, match="weights"):
        bucket_for_step(0, 0, [0, 0])


class FakeShard:
    """What ``ray.train.get_dataset_shard`` gives, for ``batch_stream``: ``iter_torch_batches``
    over fixed rows, shuffled by the seed it is given (as Ray's local shuffle is)."""

    def __init__(self, rows: int, shape: tuple[int, ...], tag: str):
        self.rows, self.shape, self.tag = rows, shape, tag

    def iter_torch_batches(self, batch_size, drop_last, collate_fn, local_shuffle_seed, **_):
        order = np.random.default_rng(local_shuffle_seed).permutation(self.rows)
        for start in range(0, self.rows - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield collate_fn(
                {
                    "caption": np.array([f"{self.tag}{i}" for i in index], dtype=object),
                    "latent_mean": np.zeros((len(index), *self.shape), np.float16),
                    "latent_std": np.ones((len(index), *self.shape), np.float16),
                }
            )


def _cfg(*overrides: str):
    return load_config(TINY, ["train.batch_size=2", "train.shuffle_buffer=8", *overrides])


def _shards():
    return [FakeShard(6, (4, 2, 6, 10), "wide"), FakeShard(10, (4, 2, 10, 6), "tall")]


def _take(stream, steps: int, accum: int, position: Position) -> list[list[str]]:
    batches = []
    for step in range(position.step, position.step + steps):
        for _ in range(accum):
            _, _, batch = next(stream)
            shapes = {tuple(batch.latent_mean.shape[1:])}
            assert len(shapes) == 1 and batch.latent_std.shape == batch.latent_mean.shape
            batches.append(batch.captions)
        position.step = step + 1
        position.buckets = [list(p) for p in stream.positions]
    return batches


def test_every_batch_holds_one_bucket_and_a_resumed_stream_continues_exactly():
    cfg = _cfg("train.grad_accum_steps=2")
    weights = [3, 5]
    whole = _take(BucketStream(_shards(), weights, cfg, Position()), 12, 2, Position())
    tags = {caption.rstrip("0123456789") for batch in whole for caption in batch}
    assert tags == {"wide", "tall"}
    for batch in whole:  # one bucket per batch
        assert len({caption.rstrip("0123456789") for caption in batch}) == 1
    # Stop after 5 steps, keep the position as a checkpoint does (JSON), resume from it.
    position = Position()
    first = _take(BucketStream(_shards(), weights, cfg, position), 5, 2, position)
    saved = TrainerState(position, 1, None, {}, None)
    restored = TrainerState.from_json(_json(saved)).position
    assert restored.buckets == position.buckets and restored.step == 5
    rest = _take(BucketStream(_shards(), weights, cfg, restored), 7, 2, restored)
    assert first + rest == whole
    # Without the bucket positions the continuation differs (the test can tell).
    restored_wrong = Position(step=5)
    wrong = _take(BucketStream(_shards(), weights, cfg, restored_wrong), 7, 2, restored_wrong)
    assert first + wrong != whole


def _json(state: TrainerState) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        state.write(directory)
        return (Path(directory) / "trainer_state.json").read_text()


def test_a_checkpoint_from_other_buckets_is_refused():
    with pytest.raises(ValueError, match="positions in 3 buckets, the data has 2"):
        BucketStream(_shards(), [1, 1], _cfg(), Position(step=1, buckets=[[0, 1]] * 3))


def test_validation_batches_hold_one_bucket_each():
    shapes = [(4, 2, 6, 10)] * 3 + [(4, 2, 10, 6)] * 2
    latents = np.empty(5, dtype=object)
    for i, shape in enumerate(shapes):
        latents[i] = np.full(shape, i, np.float16)
    clips = {
        "caption": np.array([f"c{i}" for i in range(5)], dtype=object),
        "latent_mean": latents,
        "latent_std": latents.copy(),
    }
    batches = validation_batches(clips, batch_size=2)
    assert [b.captions for b in batches] == [["c0", "c1"], ["c2"], ["c3", "c4"]]
    assert [tuple(b.latent_mean.shape) for b in batches] == [
        (2, 4, 2, 6, 10),
        (1, 4, 2, 6, 10),
        (2, 4, 2, 10, 6),
    ]
    assert torch.equal(batches[2].latent_mean[1], torch.full((4, 2, 10, 6), 4.0).half())
    # Without buckets: the batches they always were.
    plain = {
        "caption": clips["caption"],
        "latent_mean": np.zeros((5, 4, 2, 4, 4), np.float16),
        "latent_std": np.ones((5, 4, 2, 4, 4), np.float16),
    }
    assert [len(b) for b in validation_batches(plain, 2)] == [2, 2, 1]


def test_validation_clips_of_several_buckets_are_read_bucket_by_bucket(tmp_path):
    from trainer.data import read_bucket_clips

    directory, writer, ids = _write_mixed(tmp_path)
    writer.store.write_manifest()
    manifest = load_manifest(directory)
    columns = ["caption", "latent_mean"]
    clips = read_bucket_clips(directory, manifest, 4, columns)
    # Bucket order (as the manifest lists them), shard order inside; the limit counts them all.
    assert clips["caption"].tolist() == [f"clip {ids[i]}" for i in (0, 2, 1, 4)]
    assert [m.shape[2:] for m in clips["latent_mean"]] == [(8, 12)] * 2 + [(12, 8)] * 2
    chosen = read_bucket_clips(directory, manifest, 3, columns, [ids[3], ids[1], ids[0], ids[2]])
    assert chosen["caption"].tolist() == [f"clip {ids[i]}" for i in (0, 1, 3)]
    one = read_bucket_clips(directory, manifest, 2, columns)  # one bucket: a regular array
    assert one["latent_mean"].shape == (2, 4, 2, 8, 12)
