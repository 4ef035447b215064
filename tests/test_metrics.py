"""Video metrics, feature extractors and reports, on constructed videos with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from animatediff.features import (
    Classifier,
    ClassifierFeatures,
    ClipFeatures,
    FeatureExtractor,
    PixelFeatures,
    TextScorer,
)
from animatediff.metrics import (
    background_colour,
    centroids,
    colour_statistics,
    direction_accuracy,
    direction_label,
    foreground_mask,
    frame_consistency,
    label_agreement,
    motion_magnitude,
    relative_difference,
    scale_growth,
    trajectory,
)
from animatediff.report import GAP, LABEL_HEIGHT, contact_sheet, markdown_table, save_png

BACKGROUND = (20, 30, 40)
SQUARE = (230, 200, 60)

# Image-coordinate steps (y grows downwards) for each compass label.
COMPASS = {
    "right": (1, 0),
    "up-right": (1, -1),
    "up": (0, -1),
    "up-left": (-1, -1),
    "left": (-1, 0),
    "down-left": (-1, 1),
    "down": (0, 1),
    "down-right": (1, 1),
}


def moving_square(
    velocity: tuple[float, float],
    frames: int = 8,
    size: int = 48,
    side: int = 6,
    background: tuple[int, int, int] = BACKGROUND,
    colour: tuple[int, int, int] = SQUARE,
) -> np.ndarray:
    """A ``side``-pixel square whose top-left corner moves by ``velocity`` (x, y) px per frame,
    rounded to whole pixels, centred on the canvas at the middle frame."""
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = background
    for t in range(frames):
        offset = t - (frames - 1) / 2
        x = round((size - side) / 2 + velocity[0] * offset)
        y = round((size - side) / 2 + velocity[1] * offset)
        video[t, y : y + side, x : x + side] = colour
    return video


@pytest.mark.parametrize("label", list(COMPASS))
def test_the_direction_of_a_moving_square_is_its_compass_label(label):
    dx, dy = COMPASS[label]
    video = moving_square((2 * dx, 2 * dy))
    assert trajectory(video, directions=8).direction == label
    if label in ("right", "up", "left", "down"):
        assert trajectory(video, directions=4).direction == label


def test_four_directions_bin_a_mostly_horizontal_motion_as_horizontal():
    # 146 degrees: "left" among 4 sectors of 90, "up-left" among 8 sectors of 45.
    video = moving_square((-3, -2))
    assert trajectory(video, directions=4).direction == "left"
    assert trajectory(video, directions=8).direction == "up-left"
    # On a boundary the label is the next one counter-clockwise.
    assert direction_label(1, -1, directions=4) == "up"
    assert direction_label(-1, 1, directions=4) == "down"


@pytest.mark.parametrize("velocity", [(1.5, 0.0), (0.0, -2.5), (2.0, 2.0), (-1.25, 0.5)])
def test_the_fitted_speed_matches_the_rendered_speed(velocity):
    """Sub-pixel speeds are rounded per frame when drawn; the line fit averages that out."""
    traj = trajectory(moving_square(velocity, frames=16, size=64))
    assert traj.velocity == pytest.approx(velocity, abs=0.1)
    assert traj.displacement_per_frame == pytest.approx(math.hypot(*velocity), abs=0.1)
    assert traj.residual < 0.5
    assert not traj.static


def test_a_jump_halfway_shows_in_the_residual_not_in_the_direction():
    """A square moving right 2 px per frame that drops 6 px between the fourth and fifth of 8
    frames. A straight line fitted to a step of ``h`` halfway through 8 frames leaves an RMS
    residual of ``h * sqrt(1/4 - 1/5.25)`` (the step's variance less what the slope explains)."""
    video = moving_square((2, 0))
    jumped = video.copy()
    jumped[4:] = np.roll(video[4:], 6, axis=1)  # rows: 6 px down, the canvas is uniform
    smooth, broken = trajectory(video), trajectory(jumped)
    assert smooth.residual == pytest.approx(0.0, abs=1e-9)
    assert broken.direction == "right"
    assert broken.residual == pytest.approx(6 * math.sqrt(1 / 4 - 1 / 5.25), abs=1e-6)


def test_a_static_clip_has_no_motion():
    video = moving_square((0, 0))
    traj = trajectory(video, min_speed=0.5)
    assert motion_magnitude(video) == 0.0
    assert traj.static and traj.direction == "static"
    assert traj.displacement_per_frame == pytest.approx(0.0, abs=1e-9)


def test_a_slow_motion_is_static_below_the_callers_threshold():
    video = moving_square((1, 0))
    assert trajectory(video, min_speed=2.0).direction == "static"
    assert trajectory(video, min_speed=0.5).direction == "right"


def test_motion_magnitude_is_the_mean_absolute_frame_difference():
    video = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    video[1] = 255  # black -> white -> black: every pixel changes fully twice
    assert motion_magnitude(video) == pytest.approx(1.0)
    video[2] = 255  # the second step changes nothing
    assert motion_magnitude(video) == pytest.approx(0.5)
    assert motion_magnitude(video[:1]) == 0.0


def test_one_empty_frame_is_nan_and_the_fit_ignores_it():
    video = moving_square((2, -1), frames=9)
    video[4] = BACKGROUND  # the subject vanishes mid-clip
    points = centroids(video)
    assert np.isnan(points[4]).all()
    assert not np.isnan(np.delete(points, 4, axis=0)).any()
    traj = trajectory(video, directions=8)
    assert traj.valid_frames == 8
    assert traj.velocity == pytest.approx((2.0, -1.0), abs=1e-9)
    assert traj.direction == "up-right"  # 26.6 degrees: the "up-right" sector starts at 22.5


def test_a_clip_without_foreground_is_static_and_unmeasured():
    video = np.full((4, 16, 16, 3), 7, dtype=np.uint8)
    traj = trajectory(video)
    assert traj.static and traj.direction == "static"
    assert math.isnan(traj.displacement_per_frame) and traj.valid_frames == 0


def test_centroids_are_in_image_coordinates():
    video = np.zeros((1, 10, 20, 3), dtype=np.uint8)
    video[0, 1:3, 15:19] = 255  # rows 1-2, columns 15-18
    assert centroids(video)[0] == pytest.approx((16.5, 1.5))


def test_the_background_is_the_border_median_and_the_mask_thresholds_any_channel():
    video = moving_square((1, 0))
    assert background_colour(video) == pytest.approx(BACKGROUND)
    mask = foreground_mask(video)
    assert mask.sum() == 8 * 6 * 6
    # A subject differing from the background in one channel only, by 20 % then 10 %.
    faint = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    faint[0, 3, 3] = (100, 151, 100)
    faint[0, 4, 4] = (100, 100, 126)
    assert np.argwhere(foreground_mask(faint, threshold=0.15)[0]).tolist() == [[3, 3]]
    assert foreground_mask(faint, background=(100, 151, 100))[0].sum() == 63


def growing_square(sides: list[int], size: int = 48) -> np.ndarray:
    """A square centred on the canvas whose side is ``sides[t]`` pixels in frame ``t``."""
    video = np.empty((len(sides), size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for t, side in enumerate(sides):
        start = (size - side) // 2
        video[t, start : start + side, start : start + side] = SQUARE
    return video


def test_scale_growth_is_the_log_size_slope_per_frame():
    doubling = [round(8 * 2 ** (t / 7)) for t in range(8)]  # side 8 -> 16 over 8 frames
    assert scale_growth(growing_square(doubling)) == pytest.approx(math.log(2) / 7, rel=0.05)
    assert scale_growth(growing_square(doubling[::-1])) == pytest.approx(-math.log(2) / 7, rel=0.05)


def test_a_moving_subject_of_constant_size_does_not_grow():
    assert abs(scale_growth(moving_square((2, 1)))) < 1e-9
    empty = np.zeros((8, 16, 16, 3), dtype=np.uint8)
    assert math.isnan(scale_growth(empty))


def test_direction_accuracy_is_the_share_of_matches():
    assert direction_accuracy(["left", "up", "static", "down"], ["left", "up", "up", "up"]) == 0.5
    with pytest.raises(ValueError):
        direction_accuracy(["left"], ["left", "up"])


def test_frame_consistency_is_the_mean_cosine_of_consecutive_features():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])  # cosines 1 and 0
    assert frame_consistency(features) == pytest.approx(0.5)
    assert frame_consistency(7.0 * features) == pytest.approx(0.5)  # scale does not matter
    assert frame_consistency(-features[:2]) == pytest.approx(1.0)


def test_a_flickering_clip_is_inconsistent_and_a_static_one_consistent():
    rng = np.random.default_rng(0)
    flicker = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)  # unrelated frames
    static = np.repeat(flicker[:1], 8, axis=0)
    extractor = PixelFeatures(size=8)
    assert abs(frame_consistency(extractor(flicker))) < 0.2
    assert frame_consistency(extractor(static)) == pytest.approx(1.0)
    assert frame_consistency(extractor(moving_square((1, 0)))) > 0.5
    inverted = np.stack([flicker[0], 255 - flicker[0]] * 4)  # anti-correlated frames
    assert frame_consistency(extractor(inverted)) == pytest.approx(-1.0, abs=1e-5)


def test_label_agreement_with_the_caption_and_within_the_clip():
    labels = [3, 3, 3, 5, 3, 8, 3, 3]
    agreement = label_agreement(labels, 3)
    assert (agreement.expected, agreement.majority, agreement.majority_label) == (0.75, 0.75, 3)
    other = label_agreement(torch.tensor(labels), 5)  # the classifier's tensor works directly
    assert (other.expected, other.majority, other.majority_label) == (0.125, 0.75, 3)


def test_colour_statistics_of_a_two_colour_video():
    video = moving_square((1, 0), frames=4, size=20, side=5)
    stats = colour_statistics(video)
    assert stats.foreground == pytest.approx(np.array(SQUARE) / 255)
    assert stats.background == pytest.approx(np.array(BACKGROUND) / 255)
    assert stats.foreground_share == pytest.approx(25 / 400)
    assert stats.vector() == pytest.approx(np.array(SQUARE + BACKGROUND) / 255)


def test_relative_difference_is_relative_to_the_reference():
    assert relative_difference([1.1, 0.0], [1.0, 0.0]) == pytest.approx(0.1)
    assert relative_difference([3.0, 4.0], [0.0, 0.0]) == math.inf
    # The same style at another subject size is the same statistic.
    small = colour_statistics(moving_square((1, 0), side=4)).vector()
    large = colour_statistics(moving_square((1, 0), side=12)).vector()
    assert relative_difference(large, small) == pytest.approx(0.0, abs=1e-12)


def test_a_contact_sheet_row_holds_the_frames_under_its_label(tmp_path):
    first = moving_square((2, 0), frames=5, size=24)
    second = moving_square((0, 1), frames=3, size=16)
    sheet = contact_sheet([first, second], ["the square moving right", "down"])
    assert sheet.shape == (LABEL_HEIGHT + 24 + GAP + LABEL_HEIGHT + 16, 5 * 24 + 4 * GAP, 3)
    assert sheet.dtype == np.uint8
    for i, frame in enumerate(first):
        x = i * (24 + GAP)
        assert np.array_equal(sheet[LABEL_HEIGHT : LABEL_HEIGHT + 24, x : x + 24], frame)
    y = LABEL_HEIGHT + 24 + GAP + LABEL_HEIGHT
    for i, frame in enumerate(second):
        x = i * (16 + GAP)
        assert np.array_equal(sheet[y : y + 16, x : x + 16], frame)
    assert (sheet[:LABEL_HEIGHT] < 128).any()  # the label is drawn in black on white
    assert (sheet[y:, 3 * (16 + GAP) - GAP :] == 255).all()  # a short row is padded with white
    subsampled = contact_sheet([first], ["x"], max_frames=3)
    assert np.array_equal(subsampled[LABEL_HEIGHT:, 2 * (24 + GAP) :], first[-1])
    saved = save_png(sheet, tmp_path / "eval" / "sheet.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), sheet)


def test_a_markdown_table_formats_numbers_and_text():
    rows = [
        {"prompt": "the digit 3 moving left", "accuracy": 0.8125, "videos": 16, "static": False},
        {"prompt": "a | b", "accuracy": 12345.678, "videos": np.int64(8), "static": True},
        {"prompt": "c", "accuracy": float("nan")},
    ]
    assert markdown_table(rows, ["prompt", "accuracy", "videos", "static"]) == (
        "| prompt | accuracy | videos | static |\n"
        "|---|---:|---:|---|\n"
        "| the digit 3 moving left | 0.8125 | 16 | no |\n"
        "| a \\| b | 1.235e+04 | 8 | yes |\n"
        "| c | nan |  |  |\n"
    )


class _BrightnessClassifier(torch.nn.Module):
    """The minimal interface ``ClassifierFeatures`` needs: ``features`` and ``head``.
    Class 1 ("bright") when the mean grey level is above one half."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([0.0, -0.5]))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (n, 1, h, w) -> (n, 2)
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)


def test_classifier_features_feed_the_module_and_classify():
    frames = np.zeros((4, 12, 10, 3), dtype=np.uint8)
    frames[1::2] = 200  # dark, bright, dark, bright
    extractor = ClassifierFeatures(
        _BrightnessClassifier(), input_size=(6, 5), grayscale=True, batch_size=3
    )
    assert isinstance(extractor, FeatureExtractor) and isinstance(extractor, Classifier)
    features = extractor(frames)
    assert features.shape == (4, 2)
    assert features[:, 0] == pytest.approx([0.0, 200 / 255, 0.0, 200 / 255], abs=1e-6)
    assert extractor.classify(frames).tolist() == [0, 1, 0, 1]
    assert label_agreement(extractor.classify(frames), 1).expected == 0.5
    with pytest.raises(TypeError, match="features"):
        ClassifierFeatures(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP with toy widths, its image processor and a byte-level tokenizer on disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from animatediff.tiny import write_byte_level_clip_tokenizer

    directory = tmp_path_factory.mktemp("clip")
    text = dict(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    write_byte_level_clip_tokenizer(directory)
    return directory


def test_clip_features_of_a_tiny_random_clip_loaded_by_path(tiny_clip_dir):
    video = moving_square((2, 0), frames=5, size=40)
    clip = ClipFeatures(tiny_clip_dir, batch_size=2)  # 3 batches: 2 + 2 + 1
    assert isinstance(clip, FeatureExtractor) and isinstance(clip, TextScorer)
    features = clip(video)
    assert features.shape == (5, 16) and features.dtype == torch.float32
    assert torch.equal(features, ClipFeatures(tiny_clip_dir, batch_size=2)(video))  # deterministic
    # Batching changes the float summation order only.
    assert torch.allclose(features, ClipFeatures(tiny_clip_dir)(video), atol=1e-5)
    assert -1.0 <= frame_consistency(features) <= 1.0

    prompt = "the square moving right"
    scores = clip.text_similarity(video, prompt)
    assert scores.shape == (5,)
    assert ((scores >= -1) & (scores <= 1)).all()
    # Independent reference: CLIP's own logits are logit_scale * cosine.
    inputs = clip.processor(images=list(video), return_tensors="pt")
    tokens = clip.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = clip.model(pixel_values=inputs["pixel_values"], **tokens)
    expected = out.logits_per_image[:, 0] / clip.model.logit_scale.exp()
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
