"""GIF/MP4/WebP export, decoded back with PIL and PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from animatediff.export import export_video, save_video


def _frames(count: int, height: int, width: int) -> np.ndarray:
    """A moving gradient: every frame differs, so no encoder merges frames."""
    y, x = np.mgrid[0:height, 0:width]
    video = np.stack(
        [
            np.stack([(x * 8 + 20 * t) % 256, (y * 8) % 256, np.full_like(x, 30 * t % 256)], -1)
            for t in range(count)
        ]
    )
    return video.astype(np.uint8)


def _decode_image(data: bytes) -> tuple[list[np.ndarray], Image.Image]:
    image = Image.open(io.BytesIO(data))
    return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)], image


def _decode_mp4(data: bytes) -> tuple[list[np.ndarray], tuple[str, str, float]]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, float(stream.average_rate))
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return frames, info


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_images_roundtrip(fmt: str) -> None:
    video = _frames(6, 24, 40)
    data = export_video(video, fmt, fps=10)
    decoded, image = _decode_image(data)
    assert image.format == fmt.upper()
    assert len(decoded) == 6
    assert all(frame.shape == (24, 40, 3) for frame in decoded)
    assert image.info.get("loop") == 0
    assert image.info.get("duration") == 100  # ms per frame at 10 fps
    # Lossy/palette coding, but the content is the same video.
    error = np.abs(np.stack(decoded).astype(int) - video.astype(int)).mean()
    assert error < 12


@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_mp4_is_h264_yuv420p_and_pads_odd_sizes(size: tuple[int, int]) -> None:
    height, width = size
    video = _frames(9, height, width)
    data = export_video(video, "mp4", fps=8)
    decoded, (codec, pix_fmt, rate) = _decode_mp4(data)
    assert (codec, pix_fmt, rate) == ("h264", "yuv420p", 8.0)
    assert len(decoded) == 9
    padded = (height + height % 2, width + width % 2)
    assert all(frame.shape == (*padded, 3) for frame in decoded)
    error = np.abs(np.stack(decoded)[:, :height, :width].astype(int) - video.astype(int)).mean()
    assert error < 12


def test_save_video_picks_format_from_suffix(tmp_path: Path) -> None:
    video = _frames(3, 16, 16)
    for suffix, check in ((".gif", b"GIF8"), (".webp", b"RIFF"), (".mp4", b"ftyp")):
        path = save_video(video, tmp_path / "sub" / f"clip{suffix}", fps=4)
        assert path.exists() and check in path.read_bytes()[:12]
    with pytest.raises(ValueError, match="suffix"):
        save_video(video, tmp_path / "clip.avi")


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="uint8"):
        export_video(np.zeros((2, 8, 8, 3), dtype=np.float32), "gif")
    with pytest.raises(ValueError, match=r"\(frames, height, width, 3\)"):
        export_video(np.zeros((8, 8, 3), dtype=np.uint8), "gif")
    with pytest.raises(ValueError, match="format"):
        export_video(np.zeros((2, 8, 8, 3), dtype=np.uint8), "avi")
    with pytest.raises(ValueError, match="fps"):
        export_video(np.zeros((2, 8, 8, 3), dtype=np.uint8), "gif", fps=0)
