"""Camera-motion data by rule: crop trajectories, where a point of the scene lands in each frame,
and their place in the decode stage, the shards and the fingerprint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from data_media import PAGE_DIR, plan_rows, write_video

from animatediff.config import ConfigError, load_config
from animatediff.storage import locate
from pipelines.camera import CAMERA_MOTIONS, apply_camera_motion, crop_box
from pipelines.decode import DecodeSpec, decode_rows
from pipelines.fingerprint import fingerprint_from_models, fingerprint_hash
from pipelines.shards import shard_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

SIZE = 64
STRENGTH = 0.3


def _blob_frames(frames: int, x: float, y: float) -> np.ndarray:
    """``frames`` identical dark frames with a 4x4 bright square whose centre sits at ``(x, y)``
    (fractions of the frame from its centre, y down)."""
    image = np.full((SIZE, SIZE, 3), 20, np.uint8)
    cx, cy = (x + 0.5) * SIZE, (y + 0.5) * SIZE
    image[round(cy) - 2 : round(cy) + 2, round(cx) - 2 : round(cx) + 2] = 250
    return np.repeat(image[None], frames, axis=0)


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    """Pixel-space centre of the bright part, as fractions from the frame centre."""
    weight = frame[..., 0].astype(float) - 20
    weight[weight < 0] = 0
    ys, xs = np.indices(weight.shape) + 0.5
    total = weight.sum()
    return (weight * xs).sum() / total / SIZE - 0.5, (weight * ys).sum() / total / SIZE - 0.5


def _where_the_window_shows(point: tuple[float, float], motion: str, index: int, frames: int):
    """Where a scene point appears in a frame cut from ``crop_box``: into the window's frame
    (translate, turn back, scale), written independently of the sampling code."""
    box = crop_box(motion, STRENGTH, index, frames)
    dx, dy = point[0] - box.center_x, point[1] - box.center_y
    a = math.radians(box.angle)
    u = (math.cos(a) * dx + math.sin(a) * dy) / box.size
    v = (-math.sin(a) * dx + math.cos(a) * dy) / box.size
    return u, v


def test_the_config_takes_the_supported_motions_and_names_the_option_for_others():
    assert CAMERA_MOTIONS[0] == "none" and len(CAMERA_MOTIONS) == 9  # none + the paper's eight
    for motion in CAMERA_MOTIONS:
        assert load_config(TINY, [f"data.camera_motion={motion}"]).data.camera_motion == motion
    with pytest.raises(ConfigError, match="data.camera_motion"):
        load_config(TINY, ["data.camera_motion=dolly"])


def test_trajectories_start_and_end_where_documented():
    s = STRENGTH
    first, last = (lambda m: crop_box(m, s, 0, 9)), (lambda m: crop_box(m, s, 8, 9))
    assert (first("zoom_in").size, last("zoom_in").size) == (1.0, pytest.approx(1 - s))
    assert (first("zoom_out").size, last("zoom_out").size) == (pytest.approx(1 - s), 1.0)
    assert (first("pan_left").center_x, last("pan_left").center_x) == (s / 2, -s / 2)
    assert (first("pan_right").center_x, last("pan_right").center_x) == (-s / 2, s / 2)
    assert (first("tilt_up").center_y, last("tilt_up").center_y) == (s / 2, -s / 2)
    assert last("roll_clockwise").angle == pytest.approx(90 * s)
    assert last("roll_anticlockwise").angle == pytest.approx(-90 * s)
    assert crop_box("none", s, 4, 9) == crop_box("zoom_in", s, 0, 9)
    # Every window stays inside the frame: its turned corners never leave [-0.5, 0.5].
    for motion in CAMERA_MOTIONS:
        for index in range(9):
            box = crop_box(motion, s, index, 9)
            a = math.radians(box.angle)
            for cu, cv in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                u, v = cu * box.size / 2, cv * box.size / 2
                x = box.center_x + math.cos(a) * u - math.sin(a) * v
                y = box.center_y + math.sin(a) * u + math.cos(a) * v
                assert abs(x) <= 0.5 + 1e-9 and abs(y) <= 0.5 + 1e-9, (motion, index)
    with pytest.raises(ValueError, match="camera_strength"):
        crop_box("zoom_in", 1.0, 0, 9)
    with pytest.raises(ValueError, match="camera_motion"):
        crop_box("dolly", 0.2, 0, 9)


@pytest.mark.parametrize("motion", CAMERA_MOTIONS)
def test_a_scene_point_moves_as_the_camera_says(motion):
    """A bright point at (0.1, 0.05) of the scene, tracked through the clip: it lands where the
    moving window puts it, frame by frame (within half a pixel)."""
    frames = 9
    clip = _blob_frames(frames, 0.1, 0.05)
    point = _centroid(clip[0])  # where the pixel grid put it
    moved = apply_camera_motion(clip, motion, STRENGTH)
    assert moved.shape == clip.shape and moved.dtype == np.uint8
    if motion == "none":
        assert moved is clip
    tracked = [_centroid(frame) for frame in moved]
    for index, (x, y) in enumerate(tracked):
        u, v = _where_the_window_shows(point, motion, index, frames)
        assert abs(x - u) * SIZE < 0.5 and abs(y - v) * SIZE < 0.5, (index, (x, y), (u, v))
    (x0, y0), (x1, y1) = tracked[0], tracked[-1]
    angle = lambda x, y: math.atan2(-y, x)  # noqa: E731 - anticlockwise on screen is positive
    expectations = {
        "pan_left": x1 > x0 + 0.1,  # the camera goes left: the scene slides right
        "pan_right": x1 < x0 - 0.1,
        "tilt_up": y1 > y0 + 0.1,  # the camera goes up: the scene slides down
        "tilt_down": y1 < y0 - 0.1,
        "zoom_in": math.hypot(x1, y1) > 1.3 * math.hypot(x0, y0),
        "zoom_out": math.hypot(x1, y1) < math.hypot(x0, y0) / 1.3,
        "roll_clockwise": angle(x1, y1) > angle(x0, y0) + 0.3,  # the scene turns anticlockwise
        "roll_anticlockwise": angle(x1, y1) < angle(x0, y0) - 0.3,
        "none": (x0, y0) == (x1, y1),
    }
    assert expectations[motion], tracked


def test_the_first_zoom_in_frame_is_the_frame_itself():
    clip = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(apply_camera_motion(clip, "zoom_in", STRENGTH)[0], clip[0])


def test_flip_with_a_mirrored_motion_and_bad_strengths_are_refused():
    with pytest.raises(ConfigError, match="data.flip"):
        load_config(None, ["data.flip=true", "data.camera_motion=pan_left"])
    load_config(None, ["data.flip=true", "data.camera_motion=zoom_in"])  # flip-invariant
    for value in ("0", "1.0", "-0.2"):
        with pytest.raises(ConfigError, match="data.camera_strength"):
            load_config(None, [f"data.camera_strength={value}"])


def test_decode_applies_the_motion_and_records_it_per_clip(tmp_path):
    write_video(tmp_path / PAGE_DIR / "1.mp4", frames=30, seed=1)
    root = locate(str(tmp_path))
    _, plan = plan_rows(["1"], root)
    args = dict(num_frames=8, stride=2, resolution=32, seed=0, clips_per_video=1, threads=1)
    plain = decode_rows(plan, DecodeSpec(**args, root=root, outcomes=locate(str(tmp_path / "a"))))
    moving = decode_rows(
        plan,
        DecodeSpec(
            **args,
            root=root,
            outcomes=locate(str(tmp_path / "b")),
            camera_motion="pan_left",
            camera_strength=STRENGTH,
        ),
    )
    assert "camera_motion" not in plain
    assert moving["camera_motion"].tolist() == ["pan_left"]
    assert moving["camera_strength"].tolist() == [pytest.approx(STRENGTH)]
    expected = apply_camera_motion(plain["pixels"][0], "pan_left", STRENGTH)
    np.testing.assert_array_equal(moving["pixels"][0], expected)


def test_shards_and_fingerprints_record_the_motion(tiny_base_dir):
    from animatediff.base_model import load_vae

    base = [f"model.base.pretrained={tiny_base_dir}"]
    vae = load_vae(load_config(TINY, base).model.base)
    plain = fingerprint_from_models(load_config(TINY, base), vae)
    assert "camera_motion" not in plain  # caches made before camera motion keep their hash
    hashes = {fingerprint_hash(plain)}
    for motion in CAMERA_MOTIONS[1:]:
        cfg = load_config(TINY, [*base, f"data.camera_motion={motion}"])
        fingerprint = fingerprint_from_models(cfg, vae)
        assert fingerprint["camera_motion"] == {"kind": motion, "strength": 0.25}
        hashes.add(fingerprint_hash(fingerprint))
    stronger = load_config(TINY, [*base, "data.camera_motion=zoom_in", "data.camera_strength=0.5"])
    hashes.add(fingerprint_hash(fingerprint_from_models(stronger, vae)))
    assert len(hashes) == 10  # one corpus, one cache per motion (and strength)

    from pipelines.encode import EncodeClips

    encoder = EncodeClips(load_config(TINY, base).model.base, "fp", seed=0)
    clips = {
        "row": np.array([0], np.int64),
        "key": np.array(["a"], dtype=object),
        "video_id": np.array(["a"], dtype=object),
        "caption": np.array(["a ball"], dtype=object),
        "source": np.array(["/v/a.mp4"], dtype=object),
        "source_version": np.array(["size=1,mtime=1"], dtype=object),
        "ordinal": np.array([0], np.int32),
        "frame_indices": np.arange(4, dtype=np.int32)[None],
        "fps": np.array([8.0], np.float32),
        "pixels": np.zeros((1, 4, 16, 16, 3), np.uint8),
        "need_mask": np.array([0b01]),
        "row_first": np.array([True]),
        "row_clips": np.array([1], np.int32),
        "row_cached": np.array([0], np.int32),
        "camera_motion": np.array(["roll_clockwise"], dtype=object),
        "camera_strength": np.array([0.25], np.float32),
    }
    latents = encoder(clips)
    assert latents["camera_motion"].tolist() == ["roll_clockwise"]
    assert latents["camera_strength"].tolist() == [0.25]

    n = 2
    batch = {
        "clip_id": np.array(["a", "b"], dtype=object),
        "video_id": np.array(["a", "b"], dtype=object),
        "caption": np.array(["c", "c"], dtype=object),
        "frame_indices": np.zeros((n, 4), np.int32),
        "fps": np.ones(n, np.float32),
        "source": np.array(["/v/a", "/v/b"], dtype=object),
        "flipped": np.zeros(n, bool),
        "latent_mean": np.ones((n, 4, 4, 2, 2), np.float16),
        "latent_std": np.ones((n, 4, 4, 2, 2), np.float16),
    }
    assert "camera_motion" not in shard_table(batch).column_names
    batch["camera_motion"] = np.array(["tilt_up"] * n, dtype=object)
    batch["camera_strength"] = np.full(n, 0.25, np.float32)
    table = shard_table(batch)
    assert table.column("camera_motion").to_pylist() == ["tilt_up", "tilt_up"]
    assert table.column("camera_strength").to_pylist() == [0.25, 0.25]
