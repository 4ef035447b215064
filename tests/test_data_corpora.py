"""Inputs that are not a table (``pipelines.corpora``): a folder of videos with ``.txt`` or
``metadata.jsonl`` captions, and a long video cut by time ranges. Unit tests (no Ray) on videos
written here, then one small end-to-end run of each through the Ray pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_media import write_video

from animatediff.config import ConfigError, DataConfig, load_config
from animatediff.storage import locate
from pipelines import corpora, windows
from pipelines.decode import DecodeSpec, decode_rows
from pipelines.sources import (
    PlanSpec,
    check_input_columns,
    input_table_datasource,
    plan_batch,
    resolve_columns,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
EXTENSIONS = DataConfig().video_extensions


def _records(cfg: DataConfig, location, parallelism: int = 4) -> pa.Table:
    """What the input datasource reads, all tasks concatenated (no Ray)."""
    source = input_table_datasource(cfg, location, resolve_columns(cfg))
    return pa.concat_tables(
        [t for task in source.get_read_tasks(parallelism) for t in task.read_fn()]
    )


def _plan(cfg: DataConfig, root, records: pa.Table, cached=None, **spec) -> dict:
    plan = PlanSpec(
        **(
            dict(
                fmt=cfg.format,
                layout=cfg.layout,
                video_ext=cfg.video_ext,
                columns=resolve_columns(cfg),
                root=root,
                fingerprint_hash="fp",
                seed=0,
                clips_per_video=1,
                flip=False,
            )
            | spec
        )
    )
    batch = {
        name: np.array(records.column(name).to_pylist(), dtype=object)
        for name in records.column_names
    }
    return plan_batch(batch, plan, cached if cached is not None else np.zeros(0, np.uint64))


def _outcomes(directory: Path) -> list[dict]:
    rows = []
    for part in sorted(directory.glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Nested directories, every default extension (one upper-case), captions beside the
    videos, one video without a caption, one with a blank caption, files that are not videos."""
    root = tmp_path_factory.mktemp("folder")
    write_video(root / "b" / "deep" / "walk.mp4", frames=20, seed=1)
    (root / "b" / "deep" / "walk.txt").write_text("a person walking\n")
    write_video(root / "a.webm.mp4", frames=20, seed=2)  # only the last suffix counts
    (root / "a.webm.txt").write_text("a dotted name")
    write_video(root / "c" / "sea.MOV", frames=20, seed=3)
    (root / "c" / "sea.txt").write_text("waves on the sea")
    write_video(root / "c" / "uncaptioned.mkv", frames=20, seed=4)
    write_video(root / "d" / "blank.avi", frames=20, seed=5)
    (root / "d" / "blank.txt").write_text(" \u200b\n")
    (root / "d" / "junk.webm").write_bytes(b"not a video at all" * 20)
    (root / "d" / "junk.txt").write_text("junk")
    (root / "notes.pdf").write_text("not an input")
    (root / "orphan.txt").write_text("a caption with no video")
    return root


def test_a_folder_lists_every_video_sorted_and_recursively(folder):
    cfg = DataConfig(format="folder")
    rows = _records(cfg, locate(str(folder))).to_pylist()
    assert [r["video"] for r in rows] == [
        "a.webm.mp4",
        "b/deep/walk.mp4",
        "c/sea.MOV",
        "c/uncaptioned.mkv",
        "d/blank.avi",
        "d/junk.webm",
    ]
    assert [r["row"] for r in rows] == list(range(6))
    captions = {r["video"]: r["caption"] for r in rows}
    assert captions["b/deep/walk.mp4"] == b"a person walking\n"
    assert captions["c/uncaptioned.mkv"] is None
    only_mp4 = DataConfig(format="folder", video_extensions=(".mp4", ".MKV"))
    videos = [r["video"] for r in _records(only_mp4, locate(str(folder))).to_pylist()]
    assert videos == ["a.webm.mp4", "b/deep/walk.mp4", "c/uncaptioned.mkv"]


def test_row_numbers_follow_the_listing_however_the_read_is_split(folder, monkeypatch):
    from pipelines import sources

    monkeypatch.setattr(sources, "FOLDER_ROWS_PER_TASK", 4)
    cfg = DataConfig(format="folder")
    source = input_table_datasource(cfg, locate(str(folder)), resolve_columns(cfg))
    tasks = source.get_read_tasks(8)
    assert len(tasks) == 2
    rows = pa.concat_tables([t for task in tasks for t in task.read_fn()]).to_pylist()
    assert [r["row"] for r in rows] == list(range(6))
    assert rows[4]["video"] == "d/blank.avi"


def test_missing_or_empty_captions_are_error_rows_with_their_reason(folder):
    cfg = DataConfig(format="folder")
    root = locate(str(folder))
    plan = _plan(cfg, root, _records(cfg, root))
    by_key = {k: i for i, k in enumerate(plan["key"])}
    failed = {k: (plan["reason"][i], plan["message"][i]) for k, i in by_key.items()}
    failed = {k: v for k, v in failed.items() if plan["status"][by_key[k]] == "failed"}
    assert set(failed) == {"c/uncaptioned.mkv", "d/blank.avi"}
    assert failed["c/uncaptioned.mkv"][0] == "bad_caption"
    assert "'c/uncaptioned.txt'" in failed["c/uncaptioned.mkv"][1]
    assert failed["d/blank.avi"] == (
        "bad_caption",
        "caption ' \\u200b\\n' is empty or shows nothing",
    )
    todo = [i for i, s in enumerate(plan["status"]) if s == "todo"]
    assert [plan["caption"][i] for i in todo] == [
        "a dotted name",
        "a person walking",
        "waves on the sea",
        "junk",  # the decoder records it as not_a_video
    ]
    assert plan["source"][by_key["c/sea.MOV"]] == str(folder / "c" / "sea.MOV")
    assert plan["video_id"][by_key["c/sea.MOV"]] == "c/sea.MOV"


def _metadata(path: Path, records: list[dict | str]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")


def test_metadata_jsonl_captions_win_over_txt_files(tmp_path):
    write_video(tmp_path / "top.mp4", frames=12, seed=1)
    (tmp_path / "top.txt").write_text("from the txt file")
    write_video(tmp_path / "part" / "inner.mp4", frames=12, seed=2)
    (tmp_path / "part" / "inner.txt").write_text("inner txt")
    write_video(tmp_path / "part" / "no_entry.mp4", frames=12, seed=3)
    (tmp_path / "part" / "no_entry.txt").write_text("no entry: the txt is used")
    write_video(tmp_path / "part" / "blank_entry.mp4", frames=12, seed=4)
    (tmp_path / "part" / "blank_entry.txt").write_text("never used: the entry wins")
    _metadata(tmp_path / "metadata.jsonl", [{"file_name": "top.mp4", "text": "from metadata"}])
    _metadata(
        tmp_path / "part" / "metadata.jsonl",  # file names relative to its own directory
        [
            {"file_name": "./inner.mp4", "caption": "inner metadata"},
            {"file_name": "blank_entry.mp4", "text": ""},
            {"file_name": "gone.mp4", "text": "listed, not on disk"},
            {"file_name": "no_caption.mp4", "tags": ["x"]},
            {"file_name": "../../outside.mp4", "text": "escapes"},
        ],
    )
    cfg = DataConfig(format="folder")
    root = locate(str(tmp_path))
    plan = _plan(cfg, root, _records(cfg, root))
    rows = {
        k: (s, r, c, m)
        for k, s, r, c, m in zip(
            plan["key"], plan["status"], plan["reason"], plan["caption"], plan["message"]
        )
    }
    assert list(rows) == [
        "part/../../outside.mp4",
        "part/blank_entry.mp4",
        "part/gone.mp4",
        "part/inner.mp4",
        "part/no_caption.mp4",
        "part/no_entry.mp4",
        "top.mp4",
    ]
    assert rows["top.mp4"][2] == "from metadata"
    assert rows["part/inner.mp4"][2] == "inner metadata"
    assert rows["part/no_entry.mp4"][2] == "no entry: the txt is used"
    assert rows["part/blank_entry.mp4"][:2] == ("failed", "bad_caption")
    assert rows["part/no_caption.mp4"][:2] == ("failed", "bad_caption")
    assert "has no caption field (text or caption)" in rows["part/no_caption.mp4"][3]
    assert rows["part/../../outside.mp4"][:2] == ("failed", "unsafe_path")
    assert rows["part/gone.mp4"][:2] == ("todo", "")  # the decoder records missing_file

    # A named caption field; a line that is not JSON stops the run, naming the file and line.
    named = DataConfig(format="folder", caption_column="caption")
    plan = _plan(named, root, _records(named, root))
    status = dict(zip(plan["key"], plan["status"]))
    assert status["top.mp4"] == "failed" and status["part/inner.mp4"] == "todo"
    _metadata(tmp_path / "metadata.jsonl", ['{"file_name": "top.mp4", "text": "x"}', "{oops"])
    with pytest.raises(ConfigError, match=r"data.input: .*metadata.jsonl line 2 is not JSON"):
        _records(cfg, root)


def test_folder_links_follow_the_video_root_rules(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_video(root / "inside" / "ok.mp4", frames=12, seed=1)
    (root / "inside" / "ok.txt").write_text("fine")
    write_video(outside / "far.mp4", frames=12, seed=2)
    (outside / "far.txt").write_text("far away")
    (outside / "secret.txt").write_text("must not be read")
    os.symlink(outside, root / "linked_dir")  # a directory out of the root
    os.symlink(outside / "far.mp4", root / "far_link.mp4")  # a video out of the root
    write_video(root / "leaky.mp4", frames=12, seed=3)
    os.symlink(outside / "secret.txt", root / "leaky.txt")  # a caption out of the root
    os.symlink(root / "inside", root / "inside" / "loop")  # a loop inside the root
    os.symlink(root / "inside", root / "alias")  # a second way into one directory

    cfg = DataConfig(format="folder")
    location = locate(str(root))
    records = _records(cfg, location)
    assert b"must not be read" not in records.column("caption").to_pylist()
    plan = _plan(cfg, location, records)
    rows = {k: (s, r) for k, s, r in zip(plan["key"], plan["status"], plan["reason"])}
    # The directory reached twice and the loop are walked once (by real path).
    assert [k for k in rows if k.endswith("ok.mp4")] == ["inside/ok.mp4"]  # its real name
    assert rows["far_link.mp4"] == ("failed", "unsafe_path")
    assert rows["linked_dir"] == ("failed", "unsafe_path")  # one row, never entered
    assert rows["leaky.mp4"] == ("failed", "unsafe_path")
    assert [s for k, (s, _) in rows.items() if k.endswith("ok.mp4")] == ["todo"]

    followed = DataConfig(format="folder", follow_symlinks=True)
    plan = _plan(followed, location, _records(followed, location), follow_symlinks=True)
    rows = {k: (s, c) for k, s, c in zip(plan["key"], plan["status"], plan["caption"])}
    assert rows["linked_dir/far.mp4"] == ("todo", "far away")
    assert rows["far_link.mp4"][0] == "failed"  # its caption would be far_link.txt: none
    assert rows["leaky.mp4"] == ("todo", "must not be read")


def test_a_folder_in_an_object_store(s3, tmp_path):
    s3.create_bucket(Bucket="corpus")
    for name, seed in (("set/x/one.mp4", 1), ("set/two.webm", 2)):
        path = write_video(tmp_path / f"{seed}.mp4", frames=12, seed=seed)
        s3.upload_file(str(path), "corpus", name)
    s3.put_object(Bucket="corpus", Key="set/x/one.txt", Body=b"first")
    s3.put_object(
        Bucket="corpus",
        Key="set/metadata.jsonl",
        Body=b'{"file_name": "two.webm", "text": "second"}\n',
    )
    cfg = DataConfig(format="folder")
    root = locate("s3://corpus/set")
    rows = _records(cfg, root).to_pylist()
    assert [(r["video"], r["caption"], r["row"]) for r in rows] == [
        ("two.webm", b"second", 0),
        ("x/one.mp4", b"first", 1),
    ]
    plan = _plan(cfg, root, _records(cfg, root))
    assert list(plan["source"]) == ["s3://corpus/set/two.webm", "s3://corpus/set/x/one.mp4"]
    assert list(plan["status"]) == ["todo", "todo"]


# --- time ranges -------------------------------------------------------------------------------


def test_times_and_srt_cues_parse():
    assert corpora.seconds("12.5") == 12.5 and corpora.seconds(b"3") == 3.0
    assert corpora.seconds("01:02:03,250") == 3723.25 and corpora.seconds("2:03.5") == 123.5
    assert corpora.seconds(7) == 7.0
    for bad in ("", "soon", None, b"\xff", float("nan"), "inf", True):
        assert corpora.seconds(bad) is None, bad
    srt = (
        "\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\nfirst line\r\nsecond line\r\n\r\n"
        "2\n00:00:03,000 --> 00:00:04,000 X1:10\n<i>styled</i>\n\n"
        "3\nno time here\n\n"
        "00:00:05.000 --> 00:00:06.000\nno counter\n"
    )
    cues = corpora.parse_srt(srt)
    assert [(c["start"], c["end"], c["caption"]) for c in cues] == [
        (1.0, 2.5, "first line second line"),
        (3.0, 4.0, "<i>styled</i>"),
        (None, None, "3\nno time here"),
        (5.0, 6.0, "no counter"),
    ]
    assert cues[2]["message"] and not cues[0]["message"]


def test_segment_frames_keep_to_the_range():
    timestamps = np.stack([np.arange(100) / 10, np.arange(1, 101) / 10], axis=1)  # 10 s, 10 fps
    assert windows.segment_frames(timestamps, 2.0, 4.0) == (20, 20)
    assert windows.segment_frames(timestamps, 2.05, 4.0) == (21, 19)
    assert windows.segment_frames(timestamps, 9.0, 10.1) == (90, 10)  # one frame of slack
    for start, end, words in [
        (10.0, 11.0, "starts at 10 s, past the video's end"),
        (9.0, 12.0, "ends at 12 s, past the video's end at 10 s"),
        (2.01, 2.05, "holds no frame"),
    ]:
        with pytest.raises(windows.RangeError, match=words):
            windows.segment_frames(timestamps, start, end)
    assert windows.segment_fragment(2.0, 4.25) == "#t=2,4.25"


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """10 s at 10 fps (100 frames), each frame's red level its own (``data_media``)."""
    root = tmp_path_factory.mktemp("long")
    write_video(root / "talk.mp4", frames=100, fps=10, seed=7)
    return root


RANGES = [
    ("2", "4", "the first part"),
    ("5", "9.5", "the second part"),
    ("9", "12", "past the end"),
    ("11", "12", "starts past the end"),
    ("3", "3", "empty"),
    ("-1", "2", "negative"),
    ("soon", "4", "not a number"),
    ("0", "0.5", "too short for a clip"),
    ("2", "4", "the first part again"),
    ("6", "8", ""),
]


def _ranges_csv(path: Path) -> Path:
    path.write_text("start,end,caption\n" + "".join(f'{s},{e},"{c}"\n' for s, e, c in RANGES))
    return path


def test_long_video_ranges_become_rows_and_bad_ranges_error_rows(long_video, tmp_path):
    cfg = DataConfig(format="ranges", long_video="talk.mp4")
    ranges = locate(str(_ranges_csv(long_video / "talk.csv")))
    root = locate(str(long_video))
    assert check_input_columns(cfg, ranges).start == "start"
    records = _records(cfg, ranges)
    assert records.column("row").to_pylist() == list(range(len(RANGES)))
    plan = _plan(cfg, root, records, clips_per_video=2)
    rows = list(zip(plan["key"], plan["status"], plan["reason"], plan["message"]))
    assert [r[0] for r in rows[:2]] == ["talk.mp4#t=2,4", "talk.mp4#t=5,9.5"]
    assert plan["source"][0] == str(long_video / "talk.mp4") + "#t=2,4"
    assert [(r[1], r[2]) for r in rows] == [
        ("todo", ""),
        ("todo", ""),
        ("todo", ""),  # the decoder knows the video's length
        ("todo", ""),
        ("failed", "bad_range"),
        ("failed", "bad_range"),
        ("failed", "bad_range"),
        ("todo", ""),
        ("failed", "duplicate"),
        ("failed", "bad_caption"),
    ]
    assert "empty" in rows[4][3] and "not a time" in rows[6][3]
    assert plan["start_s"][1] == 5.0 and plan["end_s"][1] == 9.5

    decode = DecodeSpec(
        num_frames=8, stride=2, resolution=32, seed=0, clips_per_video=2, threads=1,
        root=root, outcomes=locate(str(tmp_path / "outcomes")),
    )  # fmt: skip
    clips = decode_rows(plan, decode)
    indices = {}
    for key, frame_indices in zip(clips["key"], clips["frame_indices"]):
        indices.setdefault(key, []).append(frame_indices)
    # Windows of 15 frames drawn among the segment's frames only (the same rule, offset).
    first = windows.clip_windows(20, 8, 2, 2, 0, str(plan["source"][0]))
    np.testing.assert_array_equal(np.stack(indices["talk.mp4#t=2,4"]), np.stack(first) + 20)
    for window in indices["talk.mp4#t=2,4"]:
        assert 20 <= window.min() and window.max() < 40
    for window in indices["talk.mp4#t=5,9.5"]:
        assert 50 <= window.min() and window.max() < 95
    assert len(indices["talk.mp4#t=5,9.5"]) == 2
    # The pixels are those frames of the video (decord's own decode of the same indices).
    import decord

    reader = decord.VideoReader(str(long_video / "talk.mp4"), width=43, height=32)
    position = list(clips["key"]).index("talk.mp4#t=5,9.5")
    expected = reader.get_batch(clips["frame_indices"][position].tolist()).asnumpy()[:, :, 5:37]
    np.testing.assert_array_equal(clips["pixels"][position], expected)
    outcomes = {r["key"]: r for r in _outcomes(tmp_path / "outcomes")}
    assert outcomes["talk.mp4#t=9,12"]["reason"] == "bad_range"
    assert "ends at 12 s, past the video's end at 10 s" in outcomes["talk.mp4#t=9,12"]["message"]
    assert outcomes["talk.mp4#t=11,12"]["reason"] == "bad_range"
    too_short = outcomes["talk.mp4#t=0,0.5"]
    assert too_short["reason"] == "too_few_frames" and "range 0-0.5 s" in too_short["message"]


def test_srt_and_jsonl_ranges_read_like_csv(long_video):
    (long_video / "talk.srt").write_text(
        "1\n00:00:02,000 --> 00:00:04,000\nthe first part\n\n2\nbroken\n\n"
    )
    (long_video / "talk.jsonl").write_text(
        json.dumps({"start": 2, "end": 4.0, "text": "the first part"}) + "\n"
    )
    root = locate(str(long_video))
    srt = DataConfig(format="ranges", long_video="talk.mp4")
    plan = _plan(srt, root, _records(srt, locate(str(long_video / "talk.srt"))))
    assert list(plan["key"]) == ["talk.mp4#t=2,4", "talk.mp4#t=,"]
    assert list(plan["reason"]) == ["", "bad_range"] and "time line" in plan["message"][1]
    jsonl = DataConfig(format="ranges", long_video="talk.mp4", caption_column="text")
    location = locate(str(long_video / "talk.jsonl"))
    check_input_columns(jsonl, location)
    plan = _plan(jsonl, root, _records(jsonl, location))
    assert (plan["key"][0], plan["caption"][0], plan["status"][0]) == (
        "talk.mp4#t=2,4",
        "the first part",
        "todo",
    )
    with pytest.raises(ConfigError, match="data.caption_column: column 'caption' not in"):
        check_input_columns(DataConfig(format="ranges", long_video="talk.mp4"), location)


# --- configuration and messages ----------------------------------------------------------------


def test_a_manifest_read_as_webvid_says_to_set_data_format(tmp_path):
    table = tmp_path / "clips.csv"
    table.write_text("video,caption\na.mp4,a clip\n")
    with pytest.raises(ConfigError, match="data.id_column: .*set data.format=csv"):
        check_input_columns(load_config(TINY).data, locate(str(table)))


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        (["data.format=folder", "data.video_root=/videos"], "data.video_root"),
        (["data.format=ranges"], "data.long_video"),
        (["data.long_video=talk.mp4"], "data.long_video"),
        (["data.format=folder", "data.video_extensions=[mp4]"], "data.video_extensions"),
    ],
)
def test_corpus_options_are_checked(overrides, option):
    with pytest.raises(ConfigError, match=option):
        load_config(TINY, overrides)


def test_a_folder_input_is_a_directory_and_the_video_root(tmp_path):
    from pipelines.sources import check_input, default_video_root

    (tmp_path / "videos").mkdir()
    folder = DataConfig(format="folder", input=str(tmp_path / "videos"))
    check_input(folder, folder.input)
    assert default_video_root(folder, locate(folder.input)) == str(tmp_path / "videos")
    table = tmp_path / "t.csv"
    table.write_text("video,caption\n")
    with pytest.raises(ConfigError, match="data.input: .* is a file, not a directory"):
        check_input(folder, str(table))
    with pytest.raises(ConfigError, match="data.input: .* is a directory, not a file"):
        check_input(DataConfig(format="csv"), str(tmp_path / "videos"))
    assert default_video_root(DataConfig(format="csv"), locate(str(table))) == str(tmp_path)


# --- end to end ----------------------------------------------------------------------------------


COMMON = ("data.max_error_fraction=0.9",)


def test_a_folder_preprocesses_end_to_end(ray_cluster, tiny_base_dir, folder, tmp_path):
    from pipelines.latents import find_shard_set, shard_set_dataset
    from pipelines.preprocess import run_preprocess

    common = [f"model.base.pretrained={tiny_base_dir}", *COMMON]
    cfg = load_config(
        TINY,
        [*common, "data.format=folder", f"data.input={folder}", f"data.output={tmp_path / 'f'}"],
    )
    summary = run_preprocess(cfg)
    assert (summary["rows_read"], summary["rows_encoded"], summary["rows_failed"]) == (6, 3, 3)
    assert summary["failed_by_reason"] == {"bad_caption": 2, "not_a_video": 1}
    run_dir = Path(summary["output"]) / "runs" / summary["run_id"]
    errors = {r["key"]: r["row"] for r in pq.read_table(run_dir / "errors.parquet").to_pylist()}
    assert errors == {"c/uncaptioned.mkv": 3, "d/blank.avi": 4, "d/junk.webm": 5}
    rows = shard_set_dataset(*find_shard_set(str(tmp_path / "f"))).take_all()
    assert sorted((r["video_id"], r["caption"]) for r in rows) == [
        ("a.webm.mp4", "a dotted name"),
        ("b/deep/walk.mp4", "a person walking"),
        ("c/sea.MOV", "waves on the sea"),
    ]


@pytest.mark.slow  # a second Ray run; the unit tests above cover the segment rule and decode
def test_a_long_video_with_ranges_preprocesses_end_to_end(
    ray_cluster, tiny_base_dir, long_video, tmp_path
):
    from pipelines.latents import find_shard_set, shard_set_dataset
    from pipelines.preprocess import run_preprocess

    common = [f"model.base.pretrained={tiny_base_dir}", *COMMON]
    _ranges_csv(long_video / "talk.csv")
    cfg = load_config(
        TINY,
        [
            *common,
            "data.format=ranges",
            f"data.input={long_video / 'talk.csv'}",
            "data.long_video=talk.mp4",
            f"data.output={tmp_path / 'r'}",
        ],
    )
    summary = run_preprocess(cfg)
    assert (summary["rows_read"], summary["rows_encoded"]) == (len(RANGES), 2)
    assert summary["failed_by_reason"] == {
        "bad_caption": 1,
        "bad_range": 5,
        "duplicate": 1,
        "too_few_frames": 1,
    }
    rows = shard_set_dataset(*find_shard_set(str(tmp_path / "r"))).take_all()
    spans = {"talk.mp4#t=2,4": (20, 40), "talk.mp4#t=5,9.5": (50, 95)}
    assert sorted(r["video_id"] for r in rows) == sorted(spans)
    for row in rows:
        low, high = spans[row["video_id"]]
        assert low <= min(row["frame_indices"]) and max(row["frame_indices"]) < high
        assert row["source"] == str(long_video / "talk.mp4") + row["video_id"].removeprefix(
            "talk.mp4"
        )
