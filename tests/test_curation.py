"""Curation stages without Ray: cuts and windows inside shots, motion filters, text-overlay
score, perceptual hashes and the keep-once rule, the writer's deduplication, reports."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_media import noise, scene, static, write_frames
from data_media import PAGE_DIR

from animatediff.config import ConfigError, DataConfig
from animatediff.storage import locate
from pipelines import curation, decode, dedup, motion, overlay, shots, windows
from pipelines.curation_report import histogram_panel, write_reports
from pipelines.decode import (
    DecodeSpec,
    decode_clips,
    decode_rows,
    open_video,
    shot_pass,
    thumbnails,
)
from pipelines.preprocess import format_summary
from pipelines.shards import ShardStore, ShardWriter, load_retired
from pipelines.sources import STATUS_TODO

# --------------------------------------------------------------------------------------------
# Shots


def three_scenes() -> np.ndarray:
    """Three moving scenes of 20 frames each: cuts at frames 20 and 40."""
    return np.concatenate([scene(0, 20), scene(1, 20), scene(2, 20)])


def test_cuts_are_found_at_their_exact_frames():
    cuts = shots.detect_cuts(shots.cut_scores(three_scenes()), threshold=30.0)
    assert cuts.tolist() == [20, 40]
    assert shots.shots_from_cuts(cuts, 60) == [(0, 20), (20, 40), (40, 60)]


def test_motion_inside_a_shot_is_not_a_cut():
    assert len(shots.detect_cuts(shots.cut_scores(scene(0, 40)), threshold=30.0)) == 0


def test_no_window_crosses_a_cut_and_short_shots_are_dropped():
    spans = [(0, 20), (20, 30), (30, 50), (50, 65)]
    drawn, dropped = windows.shot_windows(spans, 65, num_frames=8, stride=2, clips=32, seed=3,
                                          source="v")  # fmt: skip
    assert dropped == [(20, 30)]  # 10 frames: enough for 8 frames, not for the 15-frame window
    # every valid start of the three long shots (6 + 6 + 0), none crossing a boundary
    assert len(drawn) == 6 + 6 + 1
    for indices in drawn:
        assert any(a <= indices[0] and indices[-1] < b for a, b in spans if b - a >= 15)
    assert len({int(w[0]) for w in drawn}) == len(drawn)


def test_one_shot_draws_exactly_the_windows_of_today():
    for frames in (15, 40, 200):
        uncut = windows.clip_windows(frames, 8, 2, 3, 7, "s3://b/v.mp4")
        drawn, dropped = windows.shot_windows([(0, frames)], frames, 8, 2, 3, 7, "s3://b/v.mp4")
        assert dropped == [] and [w.tolist() for w in drawn] == [w.tolist() for w in uncut]


def test_a_video_whose_every_shot_is_short_yields_no_window():
    drawn, dropped = windows.shot_windows([(0, 10), (10, 20)], 20, 8, 2, 1, 0, "v")
    assert drawn == [] and dropped == [(0, 10), (10, 20)]


# --------------------------------------------------------------------------------------------
# Motion


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (static(8), motion.STATIC),
        (noise(8), motion.JITTER),
        (scene(0, 8), ""),
    ],
)
def test_static_and_jittery_windows_are_dropped(frames, reason):
    got, score = motion.motion_verdict(motion.frame_steps(frames), 2.0, 60.0, 0.0)
    assert got == reason
    assert score == pytest.approx(np.abs(np.diff(frames.astype(float), axis=0)).mean(), rel=1e-5)


def test_one_flash_in_calm_footage_is_a_spike():
    frames = scene(0, 8).copy()
    frames[4] = 255  # a white flash
    steps = motion.frame_steps(frames)
    assert motion.motion_verdict(steps, 2.0, 150.0, 0.0)[0] == ""  # the mean alone misses it
    reason, ratio = motion.motion_verdict(steps, 2.0, 150.0, 4.0)
    assert reason == motion.SPIKE and ratio > 4.0


# --------------------------------------------------------------------------------------------
# Text overlay


def test_a_constant_sharp_overlay_scores_its_area():
    frames = noise(8, seed=1) // 4 + 96  # busy footage, no strong static edge
    clean = overlay.overlay_score(frames)
    marked = frames.copy()
    marked[:, 40:56, 8:40] = np.where((np.arange(32) // 2) % 2, 255, 0)[None, None, :, None]
    assert clean == 0.0
    assert 0.05 < overlay.overlay_score(marked) <= 16 * 32 / 63**2
    # sharp edges that stay in place while their colours change are footage, not an overlay
    checker = (np.indices((64, 64)).sum(axis=0) // 4) % 2 * 255
    flicker = np.stack([checker if i % 2 else 255 - checker for i in range(8)])
    assert overlay.overlay_score(np.repeat(flicker[..., None], 3, -1).astype(np.uint8)) == 0.0


# --------------------------------------------------------------------------------------------
# Perceptual hashes and the keep-once rule


def blobs(seed: int, shift: int = 0) -> np.ndarray:
    """Smooth random footage (low frequencies, what pHash sees), ``(8, 64, 64, 3)``."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3)).astype(np.float64)
    image = np.kron(coarse, np.ones((8, 8, 1)))
    frames = [np.roll(image, shift + i, axis=1) for i in range(8)]
    return np.stack(frames).astype(np.uint8)


def test_phash_matches_an_independent_dct():
    from PIL import Image
    from scipy.fft import dctn

    frame = blobs(1)[0]
    grey = np.asarray(Image.fromarray(frame).convert("L").resize((32, 32), Image.Resampling.BOX))
    low = dctn(grey.astype(np.float64), norm="ortho")[:8, :8]
    bits = "".join("1" if v > np.median(low) else "0" for v in low.reshape(-1))
    assert dedup.phash(frame) == int(bits, 2)


def test_near_copies_are_close_and_other_footage_is_far():
    a = dedup.clip_hash(blobs(1))
    brighter = dedup.clip_hash(np.clip(blobs(1).astype(int) + 12, 0, 255).astype(np.uint8))
    assert dedup.hamming(a, brighter) <= 8
    assert min(dedup.hamming(a, dedup.clip_hash(blobs(s))) for s in range(2, 8)) > 40


def test_the_first_of_duplicates_is_kept_whatever_else_is_there():
    a, b = dedup.clip_hash(blobs(1)), dedup.clip_hash(blobs(2))
    near_a = a.copy()
    near_a[0] ^= np.uint64(0b101)  # two bits off
    items = [("r0", a), ("r1", b), ("r2", near_a), ("r3", a)]
    assert dedup.find_duplicates(items, 4) == {"r2": ("r0", 2), "r3": ("r0", 0)}
    assert dedup.find_duplicates(items, 1) == {"r3": ("r0", 0)}
    # A clip already in the cache (a seed) wins over every clip of this run.
    assert dedup.find_duplicates(items, 4, seeds=[("old", a)]) == {
        "r0": ("old", 0),
        "r2": ("old", 2),
        "r3": ("old", 0),
    }


def test_the_band_index_finds_what_comparing_every_pair_finds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, (40, 3), dtype=np.uint64)
    items = []
    for i in range(200):  # clusters of near copies with 0-10 flipped bits
        hashes = base[i % 40].copy()
        for bit in rng.choice(192, rng.integers(0, 11), replace=False):
            hashes[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        items.append((f"c{i}", hashes))
    for distance in (0, 3, 8):
        kept, expected = [], {}
        for ident, hashes in items:  # the rule by brute force
            near = [(k, dedup.hamming(hashes, h)) for k, h in kept]
            near = [(k, d) for k, d in near if d <= distance]
            if near:
                expected[ident] = near[0]
            else:
                kept.append((ident, hashes))
        assert dedup.find_duplicates(items, distance) == expected


# --------------------------------------------------------------------------------------------
# Decode with curation (a real video, no Ray)


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("footage")
    cut = np.concatenate([scene(0, 20), scene(1, 6), scene(2, 20), scene(3, 20)])
    write_frames(root / PAGE_DIR / "cuts.mp4", cut)
    write_frames(root / PAGE_DIR / "still.mp4", static(30))
    write_frames(root / PAGE_DIR / "noisy.mp4", noise(30))
    return root


def _decode(footage: Path, tmp_path: Path, names: list[str], **curate) -> tuple[dict, Path]:
    spec = DecodeSpec(
        num_frames=8,
        stride=2,
        resolution=64,
        seed=0,
        clips_per_video=32,
        threads=1,
        root=locate(str(footage)),
        outcomes=locate(str(tmp_path / "parts")),
        curation=curation.CurationSpec(**curate),
        curation_dir=locate(str(tmp_path / "curation-parts")),
    )
    n = len(names)
    batch = {
        "row": np.arange(n),
        "key": np.array(names, dtype=object),
        "video_id": np.array(names, dtype=object),
        "source": np.array([str(footage / PAGE_DIR / f"{n}.mp4") for n in names], dtype=object),
        "caption": np.array(["c"] * n, dtype=object),
        "status": np.array([STATUS_TODO] * n, dtype=object),
        "reason": np.array([""] * n, dtype=object),
        "message": np.array([""] * n, dtype=object),
        "need_mask": np.full(n, 0x5555555555555555, np.int64),  # plain clips of 32 ordinals
        "cached_clips": np.zeros(n, np.int32),
    }
    return decode_rows(batch, spec), tmp_path


def _records(directory: Path) -> list[dict]:
    return [r for p in sorted(directory.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_decoded_windows_stay_inside_the_detected_shots(footage, tmp_path):
    clips, _ = _decode(footage, tmp_path, ["cuts"], shots=True, motion_score=True)
    records = _records(tmp_path / "curation-parts")
    found = [(r["start"], r["end"], r["reason"]) for r in records if r["stage"] == "shots"]
    assert found == [(0, 20, ""), (20, 26, curation.SHORT_SHOT), (26, 46, ""), (46, 66, "")]
    kept = [(0, 20), (26, 46), (46, 66)]
    assert len(clips["frame_indices"]) == 3 * 6  # every window of the three long shots
    for indices in clips["frame_indices"]:
        assert any(a <= indices[0] and indices[-1] < b for a, b in kept)
    assert clips["motion_score"].shape == (18,) and (clips["motion_score"] > 2).all()


def test_static_and_noisy_videos_end_as_filtered_rows_with_their_scores(footage, tmp_path):
    clips, _ = _decode(
        footage, tmp_path, ["still", "noisy", "cuts"], min_motion=2.0, max_motion=40.0,
        motion_score=True, sample_fraction=1.0,
    )  # fmt: skip
    outcomes = {r["key"]: r for r in _records(tmp_path / "parts")}
    assert outcomes["still"]["status"] == curation.STATUS_FILTERED
    assert outcomes["still"]["reason"] == motion.STATIC
    assert outcomes["noisy"]["reason"] == motion.JITTER
    assert "cuts" not in outcomes  # it has clips: its outcome is the writer's
    dropped = [r for r in _records(tmp_path / "curation-parts") if r["decision"] == "dropped"]
    assert {"still", "noisy"} <= {r["key"] for r in dropped}
    # without shot detection, the cut video's windows that span a cut may be jitter; the
    # others never are
    crossing = [any(r["start"] < c < r["end"] for c in (20, 26, 46)) for r in dropped]
    assert all(c for c, r in zip(crossing, dropped) if r["key"] == "cuts")
    assert all(r["score"] < 2.0 for r in dropped if r["reason"] == motion.STATIC)
    assert all(r["score"] > 40.0 for r in dropped if r["reason"] == motion.JITTER)
    assert all(r["thumbnail"] for r in dropped)  # sampled for the report
    assert set(clips["key"]) == {"cuts"} and (clips["motion_score"] >= 2.0).all()


def test_shots_of_a_ranges_segment_are_found_among_its_frames_only(footage, tmp_path):
    # cuts.mp4 at 10 fps: shots [0, 20), [20, 26), [26, 46), [46, 66). The range 2.25-6.6 s
    # holds frames 23..65, so its shots are [23, 26) (short), [26, 46) and [46, 66).
    spec = DecodeSpec(
        num_frames=8, stride=2, resolution=64, seed=0, clips_per_video=32, threads=1,
        root=locate(str(footage)), outcomes=locate(str(tmp_path / "parts")),
        curation=curation.CurationSpec(shots=True),
    )  # fmt: skip
    source = str(footage / PAGE_DIR / "cuts.mp4") + windows.segment_fragment(2.25, 6.6)
    curated = curation.VideoCuration()
    clips, _, _ = decode_clips(source, spec, 0x5555555555555555, (2.25, 6.6), curated)
    shots_found = [r for r in curated.records if r["stage"] == "shots"]
    found = [(r["start"], r["end"], r["reason"]) for r in shots_found]
    assert found == [(23, 26, curation.SHORT_SHOT), (26, 46, ""), (46, 66, "")]
    assert len(clips) == 2 * 6  # every 15-frame window of the two long shots
    for _, indices, _ in clips:
        assert any(a <= indices[0] and indices[-1] < b for a, b in [(26, 46), (46, 66)])


# The shot pass: one PyAV decode for the thumbnails and the windows' frames, checked against
# decord, which decodes them apart.

SEGMENT = (2.25, 6.6)  # frames 23..65 of cuts.mp4


def _index(path: str, segment: tuple[float, float] | None) -> tuple[np.ndarray, int, int]:
    """``(every frame's start time, first frame, frame count)`` from decord's index."""
    import decord

    reader = decord.VideoReader(path)
    timestamps = reader.get_frame_timestamp(list(range(len(reader))))
    first, count = (
        (0, len(reader)) if segment is None else windows.segment_frames(timestamps, *segment)
    )
    return timestamps[:, 0], first, count


@pytest.mark.parametrize("segment", [None, SEGMENT], ids=["video", "segment"])
def test_the_shot_pass_decodes_the_pixels_decord_decodes(footage, segment):
    import decord

    path = str(footage / PAGE_DIR / "cuts.mp4")
    starts, first, count = _index(path, segment)
    container, _, _ = open_video(path)
    with container:
        found = shot_pass(container, starts, first, count, (40, 40), threads=1)
    assert found is not None and len(found.frames) == count  # every frame held, none skipped
    frames = list(range(first, first + count))
    small = decord.VideoReader(path, width=32, height=32).get_batch(frames).asnumpy()
    np.testing.assert_array_equal(found.thumbnails, small)
    picks = np.array([first, first + 7, first + count - 1])
    sized = decord.VideoReader(path, width=40, height=40).get_batch(picks.tolist()).asnumpy()
    np.testing.assert_array_equal(found.window(picks), sized)


def _decode_cuts(footage: Path, tmp_path: Path, segment, **options) -> tuple[list, list]:
    spec = DecodeSpec(
        num_frames=8, stride=2, resolution=64, seed=0, clips_per_video=32, threads=1,
        root=locate(str(footage)), outcomes=locate(str(tmp_path / "parts")),
        curation=curation.CurationSpec(shots=True, motion_score=True), **options,
    )  # fmt: skip
    source = str(footage / PAGE_DIR / "cuts.mp4")
    if segment is not None:
        source += windows.segment_fragment(*segment)
    curated = curation.VideoCuration()
    clips, _, _ = decode_clips(source, spec, 0x5555555555555555, segment, curated)
    return clips, curated.records


@pytest.mark.parametrize("segment", [None, SEGMENT], ids=["video", "segment"])
def test_the_clips_do_not_depend_on_how_shots_were_decoded(footage, tmp_path, segment, monkeypatch):
    passes, real = [], decode.shot_pass
    monkeypatch.setattr(
        decode, "shot_pass", lambda *a, **k: passes.append(real(*a, **k)) or passes[-1]
    )
    shared = _decode_cuts(footage, tmp_path, segment)
    # over the frame budget: the pass keeps thumbnails only and decord decodes the windows
    apart = _decode_cuts(footage, tmp_path, segment, shot_pass_bytes=0)
    assert [p.frames is not None for p in passes] == [True, False]
    monkeypatch.setattr(decode, "shot_pass", lambda *args, **kwargs: None)
    legacy = _decode_cuts(footage, tmp_path, segment)  # decord's thumbnails, then its windows
    for clips, records in (apart, legacy):
        assert records == shared[1]
        assert [(o, i.tolist()) for o, i, _ in clips] == [(o, i.tolist()) for o, i, _ in shared[0]]
        for (_, _, frames), (_, _, expected) in zip(clips, shared[0]):
            np.testing.assert_array_equal(frames, expected)
    cuts = [r["start"] for r in shared[1] if r["stage"] == "shots"]
    assert cuts == ([0, 20, 26, 46] if segment is None else [23, 26, 46])


def test_cuts_in_large_frames_are_found_at_their_exact_frames(footage, tmp_path):
    # 192-pixel frames are point-sampled to 64 pixels before the thumbnail's bilinear scale
    large = np.repeat(np.repeat(read_cuts(footage), 3, axis=1), 3, axis=2)
    path = write_frames(tmp_path / PAGE_DIR / "large.mp4", large)
    starts, first, count = _index(str(path), None)
    container, _, _ = open_video(str(path))
    with container:
        found = shot_pass(container, starts, first, count, (64, 64), threads=1)
    assert found is not None
    direct = thumbnails(str(path), 192, 192, count)  # decord: bilinear from 192 pixels
    assert not np.array_equal(found.thumbnails, direct)  # the point-sampling did run
    scores, reference = shots.cut_scores(found.thumbnails), shots.cut_scores(direct)
    assert np.abs(scores - reference).max() < 3.0
    assert shots.detect_cuts(scores, 30.0).tolist() == [20, 26, 46]
    assert shots.detect_cuts(reference, 30.0).tolist() == [20, 26, 46]


def read_cuts(footage: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(footage / PAGE_DIR / "cuts.mp4"))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_a_frame_missing_from_the_index_hands_shots_back_to_decord(footage):
    path = str(footage / PAGE_DIR / "cuts.mp4")
    starts, first, count = _index(path, None)
    for index in (starts + 0.06, starts[1:], np.delete(starts, 30)):  # 10 fps: 0.05 s tolerance
        container, _, _ = open_video(path)
        with container:
            assert shot_pass(container, index, 0, min(count, len(index)), (64, 64), 1) is None


def test_over_its_budget_the_shot_pass_keeps_thumbnails_only(footage):
    path = str(footage / PAGE_DIR / "cuts.mp4")
    starts, first, count = _index(path, None)
    sizes = []
    for budget in (count * 64 * 64 * 4, 64 * 64):  # 64-pixel yuv420p frames fit, then do not
        container, _, _ = open_video(path)
        with container:
            found = shot_pass(container, starts, first, count, (64, 64), 1, budget=budget)
        sizes.append(None if found.frames is None else len(found.frames))
        assert found.thumbnails.shape == (count, 32, 32, 3)
    assert sizes == [count, None]


# --------------------------------------------------------------------------------------------
# Deduplication in the writer (decided at the end, whatever the arrival order)


def _latents(rows: list[int], hashes: list[np.ndarray], run: str) -> dict:
    n = len(rows)
    ids = [windows.clip_id("fp", f"v{r}", 0, 0, False, run) for r in rows]
    return {
        "clip_id": np.array(ids, dtype=object),
        "video_id": np.array([f"v{r}" for r in rows], dtype=object),
        "caption": np.array(["c"] * n, dtype=object),
        "frame_indices": np.tile(np.arange(8, dtype=np.int32), (n, 1)),
        "fps": np.full(n, 10.0, np.float32),
        "source": np.array([f"/v/{r}" for r in rows], dtype=object),
        "source_version": np.array(["v1"] * n, dtype=object),
        "flipped": np.zeros(n, bool),
        "latent_mean": np.ones((n, 4, 8, 2, 2), np.float16),
        "latent_std": np.ones((n, 4, 8, 2, 2), np.float16),
        "motion_score": np.full(n, 5.0, np.float32),
        "phash": np.stack(hashes),
        "row": np.array(rows, np.int64),
        "key": np.array([f"v{r}" for r in rows], dtype=object),
        "ordinal": np.zeros(n, np.int32),
        "row_first": np.ones(n, bool),
        "row_clips": np.ones(n, np.int32),
        "row_cached": np.zeros(n, np.int32),
    }


def test_the_lowest_row_of_duplicates_is_kept_whatever_order_they_arrive_in(tmp_path):
    a, b = dedup.clip_hash(blobs(1)), dedup.clip_hash(blobs(2))
    store = ShardStore(locate(str(tmp_path / "fp")), {"x": 1})
    store.open()
    writer = ShardWriter(store, "run1", flush_every=1, curation=True, dedup_distance=4)
    writer.write(_latents([3, 1], [a, b], "one"))  # row 3 first: a duplicate of row 0 below
    writer.write(_latents([0], [a], "one"))
    counts = writer.finish()
    store.refresh()
    assert counts["clips_deduplicated"] == 1 and counts["rows_filtered"] == 1
    assert counts["filtered_by_reason"] == {dedup.NEAR_DUPLICATE: 1}
    outcomes = pq.read_table(tmp_path / "fp" / "runs" / "run1" / "outcomes.parquet").to_pylist()
    status = {r["row"]: (r["status"], r["reason"]) for r in outcomes}
    assert status == {
        0: ("encoded", ""),
        1: ("encoded", ""),
        3: (curation.STATUS_FILTERED, dedup.NEAR_DUPLICATE),
    }
    row0 = _latents([0], [a], "one")["clip_id"][0]
    row3 = _latents([3], [a], "one")["clip_id"][0]
    filtered = pq.read_table(tmp_path / "fp" / "runs" / "run1" / "filtered.parquet").to_pylist()
    assert [(r["row"], r["detail"]) for r in filtered] == [(3, f"duplicate of clip {row0}")]
    retired = set().union(*load_retired(store.directory, store.manifest).values())
    assert retired == {row3} and store.manifest["num_clips"] == 2
    # A later run's copy loses to the clip already in the cache.
    writer = ShardWriter(store, "run2", flush_every=1, curation=True, dedup_distance=4)
    writer.write(_latents([0], [b], "two"))
    assert writer.finish()["clips_deduplicated"] == 1
    assert len(store.deduplicated()) == 2


# --------------------------------------------------------------------------------------------
# Reports and config


def test_the_histogram_draws_kept_and_dropped_bars():
    panel = histogram_panel(np.array([1.0, 2, 2, 3]), np.array([0.1, 9.0]), "motion")
    colours = {tuple(c) for c in panel.reshape(-1, 3)}
    assert (60, 150, 80) in colours and (200, 60, 60) in colours
    empty = histogram_panel(np.zeros(0), np.zeros(0), "motion")
    assert (60, 150, 80) not in {tuple(c) for c in empty.reshape(-1, 3)}


def test_reports_are_written_from_the_curation_table(tmp_path):
    from PIL import Image

    picture = curation.thumbnail(scene(0, 8))
    record = {"key": "k", "video_id": "k", "source": "s", "detail": "", "thumbnail": None}
    rows = [
        record | {"row": 0, "stage": "shots", "ordinal": -1, "start": 0, "end": 20,
                  "decision": "kept", "reason": "", "score": 20.0},
        record | {"row": 0, "stage": "motion", "ordinal": 0, "start": 0, "end": 15,
                  "decision": "kept", "reason": "", "score": 12.0, "thumbnail": picture},
        record | {"row": 1, "stage": "motion", "ordinal": 0, "start": 0, "end": 15,
                  "decision": "dropped", "reason": "static", "score": 0.1, "thumbnail": picture},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=curation.CURATION_SCHEMA),
                   tmp_path / "curation.parquet")  # fmt: skip
    written = write_reports(locate(str(tmp_path)))
    assert set(written) == {"histograms", "samples"}
    sheet = Image.open(tmp_path / "curation_samples.png")
    assert sheet.height >= 2 * 64  # one row per sampled window
    hist = np.asarray(Image.open(tmp_path / "curation_histograms.png").convert("RGB"))
    assert (hist == (200, 60, 60)).all(axis=-1).any()


def test_the_summary_table_lists_drops_by_reason():
    summary = {
        "run_id": "r", "output": "o", "rows_read": 4, "rows_encoded": 1, "rows_cached": 0,
        "rows_failed": 0, "failed_by_reason": {}, "rows_filtered": 3, "shots_detected": 5,
        "clips_filtered": 4, "clips_deduplicated": 1, "clips_encoded": 2, "clips_cached": 0,
        "filtered_by_reason": {"near_duplicate": 1, "static": 2, "short_shot": 1},
        "shards_written": 1, "cache_size_clips": 1, "elapsed_s": 1.0, "clips_per_s": 2.0,
    }  # fmt: skip
    text = format_summary(summary)
    assert "rows filtered             3" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["static", "2"] in lines and ["short_shot", "1"] in lines
    assert ["near_duplicate", "1"] in lines


def test_curation_options_are_checked_by_name():
    with pytest.raises(ConfigError, match="data.max_motion"):
        DataConfig(min_motion=5.0, max_motion=3.0)
    with pytest.raises(ConfigError, match="data.dedup_distance"):
        DataConfig(dedup_distance=200)
    with pytest.raises(ConfigError, match="data.min_motion"):
        DataConfig(min_motion=-1.0)
    assert not curation.CurationSpec.from_data(DataConfig()).active
    assert curation.CurationSpec.from_data(DataConfig(min_motion=1.0)).motion_score


def test_thumbnail_is_a_png_strip_of_three_frames():
    from PIL import Image

    image = Image.open(io.BytesIO(curation.thumbnail(scene(0, 8))))
    assert image.size == (3 * 64, 64)


def test_a_run_whose_rows_were_all_filtered_says_so():
    from animatediff.config import load_config
    from pipelines.preprocess import outcome_failure

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    counts = {"rows_read": 3, "rows_encoded": 0, "rows_cached": 0, "rows_failed": 1}
    counts |= {"failed_by_reason": {"missing_file": 1}, "rows_filtered": 2}
    counts["filtered_by_reason"] = {"static": 2}
    assert outcome_failure(cfg, counts) == (
        "no clip was encoded: 1 rows failed (1 missing_file), 2 were filtered (2 static)"
    )
