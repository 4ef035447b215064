"""Small test videos (PyAV), good and every kind of bad, and a WebVid-style collection of them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PAGE_DIR = "000001_000050"


def plan_rows(keys, root, spec_kwargs=None, captions=None, cached=None):
    """``(PlanSpec, plan rows)`` of WebVid rows ``keys`` under ``root/PAGE_DIR`` (``root``: a
    ``Location``), as ``plan_batch`` makes them for the decode stage."""
    from pipelines.sources import Columns, PlanSpec, plan_batch

    defaults = dict(
        fmt="webvid",
        layout="page_dir",
        video_ext=".mp4",
        columns=Columns("videoid", "name", None, "page_dir"),
        root=root,
        fingerprint_hash="fp",
        seed=0,
        clips_per_video=1,
        flip=False,
    )
    spec = PlanSpec(**(defaults | (spec_kwargs or {})))
    batch = {
        "videoid": np.array([k.encode() for k in keys], dtype=object),
        "page_dir": np.array([PAGE_DIR.encode()] * len(keys), dtype=object),
        "name": np.array(captions or [b"a caption"] * len(keys), dtype=object),
    }
    return spec, plan_batch(batch, spec, cached if cached is not None else np.zeros(0, np.uint64))


def write_video(
    path: Path,
    frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    faststart: bool = False,
    seed: int = 0,
) -> Path:
    """An MPEG-4 video whose frames differ (a moving bar, colour ramp) so windows are tellable."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, size=3)
    options = {"movflags": "faststart"} if faststart else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = base
            image[:, :, 0] = (i * 7 + int(base[0])) % 256
            image[:, : (i * 3) % width, 1] = 220
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# key -> expected reason ("" = encodes); the keys are WebVid video ids.
BAD_KINDS = {
    "2000001": "missing_file",
    "2000002": "empty_file",
    "2000003": "not_a_video",
    "2000004": "no_video_stream",
    "2000005": "truncated",  # moov (index) missing
    "2000006": "truncated",  # cut mid-stream: the index promises frames the data lacks
    "2000007": "too_few_frames",
    "2000008": "decode_error",  # corrupt frames
    "2000009": "bad_caption",  # empty caption
    "2000010": "bad_caption",  # not valid UTF-8
    "../2000011": "unsafe_path",
    "/etc/passwd": "unsafe_path",
    "s3:": "unsafe_path",  # with page_dir "/" below: outside the root
}


def write_bad_videos(directory: Path) -> None:
    """The files behind ``BAD_KINDS`` (in ``directory``, the page directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "2000002.mp4").write_bytes(b"")
    (directory / "2000003.mp4").write_text("this is not a video\n" * 40)
    write_audio_only(directory / "2000004.mp4")
    whole = write_video(directory / "tmp_a.mp4", frames=40, seed=5).read_bytes()
    (directory / "2000005.mp4").write_bytes(whole[: len(whole) // 2])  # moov is at the end
    fast = write_video(directory / "tmp_b.mp4", frames=40, faststart=True, seed=6).read_bytes()
    (directory / "2000006.mp4").write_bytes(fast[: len(fast) // 2])
    write_video(directory / "2000007.mp4", frames=4, seed=7)
    corrupt = bytearray(fast)
    noise = np.random.default_rng(0).integers(0, 256, len(corrupt) // 2, dtype=np.uint8)
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + len(noise) - 64] = noise[:-64].tobytes()
    (directory / "2000008.mp4").write_bytes(bytes(corrupt))
    for name in ("tmp_a.mp4", "tmp_b.mp4"):
        (directory / name).unlink()
    write_video(directory / "2000009.mp4", seed=9)
    write_video(directory / "2000010.mp4", seed=10)


def write_webvid_csv(path: Path, rows: list[tuple[str, str, bytes | str]]) -> Path:
    """A WebVid metadata CSV: ``rows`` of ``(videoid, page_dir, caption)``; bytes captions are
    written raw (to produce invalid UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"videoid,contentUrl,duration,page_dir,name\n")
        for videoid, page_dir, caption in rows:
            text = caption if isinstance(caption, bytes) else caption.encode()
            line = f'{videoid},https://example.invalid/{videoid}.mp4,PT00H00M05S,{page_dir},"'
            file.write(line.encode() + text + b'"\n')
    return path


def good_rows(count: int, start: int = 1000001) -> list[tuple[str, str, str]]:
    return [
        (str(start + i), PAGE_DIR, f"clip number {i} of a test collection") for i in range(count)
    ]


def bad_rows() -> list[tuple[str, str, bytes | str]]:
    rows: list[tuple[str, str, bytes | str]] = []
    for key in BAD_KINDS:
        caption: bytes | str = f"caption of {key}"
        page_dir = PAGE_DIR
        if key == "2000009":
            caption = "   "
        elif key == "2000010":
            caption = b"bad \xff\xfe bytes"
        elif key == "s3:":
            page_dir = "/"
        rows.append((key, page_dir, caption))
    return rows


def build_collection(root: Path, num_good: int, frames: int = 30) -> Path:
    """``root/videos/{PAGE_DIR}/*.mp4`` plus ``root/results.csv`` listing good and bad rows."""
    videos = root / "videos" / PAGE_DIR
    for videoid, _, _ in good_rows(num_good):
        write_video(videos / f"{videoid}.mp4", frames=frames + int(videoid) % 7, seed=int(videoid))
    write_bad_videos(videos)
    return write_webvid_csv(root / "results.csv", good_rows(num_good) + bad_rows())


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="replace") as file:
        return list(csv.DictReader(file))
