"""``data:``: video preprocessing into cached latent shards (``jobs.preprocess``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from animatediff.config.errors import check

CameraMotion = Literal[
    "none",
    "zoom_in",
    "zoom_out",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "roll_clockwise",
    "roll_anticlockwise",
]
"""``data.camera_motion``'s values: none, or the paper's eight MotionLoRA motions."""


@dataclass(frozen=True)
class DataConfig:
    input: str = ""
    """Input table: a WebVid metadata CSV or a CSV/JSONL/Parquet manifest; with ``data.format``
    ``folder`` a directory of videos; with ``ranges`` the time-ranges file (local path or
    ``s3://``). Required by ``jobs.preprocess``."""
    format: Literal["webvid", "csv", "jsonl", "parquet", "folder", "ranges"] = "webvid"
    """``webvid``: WebVid-10M CSV (id + page_dir name the file); ``csv``/``jsonl``/``parquet``: a
    generic manifest whose path column names the file relative to ``data.video_root``;
    ``folder``: every video under the directory ``data.input`` (recursive, sorted), captioned by
    the same-named ``.txt`` beside it or by a ``metadata.jsonl`` (which wins); ``ranges``: one long
    video (``data.long_video``) cut by the time ranges of ``data.input`` (CSV or JSONL with
    ``start``, ``end`` in seconds and a caption column, or an ``.srt`` file), one row per range."""
    video_extensions: tuple[str, ...] = (".mp4", ".webm", ".mov", ".mkv", ".avi")
    """With ``data.format=folder``: the file extensions listed as videos (case-insensitive);
    other files are not inputs (``.txt`` captions and ``metadata.jsonl`` are read)."""
    long_video: str = ""
    """With ``data.format=ranges``: the long video the ranges cut, relative to
    ``data.video_root`` (or an absolute path / ``s3://`` URI inside it)."""
    video_root: str = ""
    """Directory (or ``s3://`` prefix) holding the videos; empty: the input table's directory.
    Must exist. Sources resolving outside it (``..``, foreign paths, symbolic links pointing
    out) are rejected as ``unsafe_path``."""
    follow_symlinks: bool = False
    """Allow symbolic links under ``data.video_root`` that point outside it. Off: a link is
    followed only when its real path stays inside the root; one that leaves it is
    ``unsafe_path``, and its target is never read."""
    content_hash: bool = False
    """Identify each video's content by the SHA-256 of its bytes instead of size + modification
    time, so a replaced file is always noticed; reads every video on every run, cached or not."""
    layout: Literal["flat", "page_dir"] = "page_dir"
    """WebVid file layout: ``flat`` = ``{root}/{videoid}{ext}`` (AnimateDiff's loader),
    ``page_dir`` = ``{root}/{page_dir}/{videoid}{ext}`` (WebVid's download script)."""
    video_ext: str = ".mp4"
    """File extension appended to WebVid video ids."""
    id_column: str = ""
    """Column with the video id; empty: ``videoid`` for WebVid, the path column for manifests."""
    caption_column: str = ""
    """Column with the caption; empty: ``name`` for WebVid, ``caption`` for manifests and
    ranges. With ``data.format=folder``: the caption field of ``metadata.jsonl`` entries
    (empty: ``text``, else ``caption``)."""
    path_column: str = "video"
    """Manifest column with the video path (relative to ``data.video_root``; OpenVid: ``video``)."""
    page_dir_column: str = "page_dir"
    """WebVid column with the page directory (``layout: page_dir``)."""
    output: str = ""
    """Where shards go (local path or ``s3://``); empty: ``{output_dir}/latents``. Each
    fingerprint gets its own subdirectory ``fp-<hash>``."""
    num_frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Frame stride inside the sampling window ``(num_frames - 1) * stride + 1``; shorter videos
    get a smaller effective stride."""
    resolution: int = 256
    """Square clip size: short side resized to it, then centre-cropped (multiple of 8). Unused
    when ``data.buckets`` is set."""
    buckets: tuple[tuple[int, int], ...] = ()
    """Aspect-ratio buckets: ``(height, width)`` pairs of about equal area, each a multiple of 8,
    e.g. ``[[256, 256], [224, 288], [288, 224], [192, 320], [320, 192]]``. Each video goes to the
    bucket nearest its aspect ratio (in log ratio; ties to the earlier bucket), is resized to
    cover it and centre-cropped to it (``pipelines/buckets.py``); shards hold one bucket each and
    training batches hold one bucket each. Empty: the square ``data.resolution`` crop. Part of the
    fingerprint."""
    clips_per_video: int = 1
    """Distinct windows drawn per video (fewer when the video has fewer distinct starts)."""
    flip: bool = False
    """Also store each clip horizontally flipped, as its own row with ``flipped=True``."""
    camera_motion: CameraMotion = "none"
    """Camera motion made by rule on every clip after decoding: a crop window that moves over
    time (``pipelines/camera.py``), as the paper makes MotionLoRA data. Part of the fingerprint
    and recorded per clip in the shards, so one corpus gives one training set per motion."""
    camera_strength: float = 0.25
    """How far ``data.camera_motion`` moves, in (0, 1): a zoom to ``1 - s`` of the frame side, a
    window ``1 - s`` wide panning/tilting across the frame, a roll of ``s * 90`` degrees."""
    seed: int = 0
    """Seed of the window draws; the same seed and inputs give the same clips. Clips drawn with
    another seed are other clips: a run with a new seed adds them to the same cache, beside the
    earlier seed's (use another ``data.output`` to keep the sets apart)."""
    shard_size: int = 256
    """Clips per Parquet shard."""
    preserve_order: bool = True
    """Write the clips in input order (a video's windows in draw order), whatever order the
    decode tasks and encode actors finish in: two runs of the same input write the same shards,
    so a training run on them is repeatable to the digit. ``false``: in completion order, which
    keeps the encoders busy while a slow video decodes (end to end 7 % faster on 2 CPU cores with
    mixed 720p and 270p videos: ``benchmarks/preprocess.py --sections order``)."""
    cache_text_embeddings: bool = False
    """Also store the frozen CLIP text encoder's embeddings and token ids of each caption."""
    encode_batch_size: int = 4
    """Clips per VAE-encode batch."""
    num_encode_actors: int = 1
    """Size of the VAE-encode actor pool (one GPU each when the cluster has GPUs)."""
    encode_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """VAE compute dtype; ``auto``: bfloat16 on GPU, float32 on CPU. Latents are stored as float16."""
    encode_num_cpus: float = 1.0
    """Logical CPUs per encode actor (also its torch thread count on CPU)."""
    decode_num_cpus: float = 1.0
    """Logical CPUs per decode task."""
    decode_threads: int = 1
    """Decoder threads per video (decord ``num_threads``)."""
    decode_rows_per_task: int = 4
    """Input rows per decode block: small blocks spread decoding over the cluster."""
    manifest_flush_shards: int = 10
    """Rewrite ``manifest.json`` after this many committed shards (and at the end); shards not yet
    listed are adopted on the next run."""
    max_error_fraction: float = 0.5
    """The run fails (exit status 1, after committing what it encoded) when more than this
    fraction of the input rows failed; it also fails when no row encoded or was cached."""
    log_mlflow: bool = False
    """Log counts, throughput and the fingerprint to MLflow (``mlflow.*`` settings)."""
    shots: bool = False
    """Curation: detect cuts (``pipelines/shots.py``) and draw clip windows inside shots only;
    shots shorter than a window are dropped (reason ``short_shot``). Decodes every frame of each
    video once more at a 32-pixel short side."""
    shot_threshold: float = 30.0
    """A cut: mean absolute difference of consecutive 32-pixel frames at or above this (0-255)."""
    motion_score: bool = False
    """Curation: store each clip's motion score (mean absolute difference of its consecutive
    frames, 0-255; ``pipelines/motion.py``) as the shard column ``motion_score``. Implied by the
    motion thresholds."""
    min_motion: float = 0.0
    """Drop windows whose motion score is below this (reason ``static``); 0: off."""
    max_motion: float = 0.0
    """Drop windows whose motion score is above this (flashes, missed cuts: ``jitter``); 0: off."""
    max_motion_spike: float = 0.0
    """Drop windows whose largest frame step exceeds this many times their median step (one
    flash or cut in calm footage: ``motion_spike``); 0: off."""
    text_score: bool = False
    """Curation: store each clip's text-overlay score (fraction of sharp pixels that stay
    constant, ``pipelines/overlay.py``) as the shard column ``text_score``."""
    max_text_score: float = 0.0
    """Drop windows whose text-overlay score is above this (``text_overlay``); 0: off. Implies
    ``data.text_score``."""
    dedup: bool = False
    """Curation: drop near-duplicate clips (``pipelines/dedup.py``): a perceptual hash of three
    frames per window, stored as the shard column ``phash``; of duplicates within
    ``data.dedup_distance`` bits the clip already cached, else the lowest input row and ordinal,
    is kept. Decided at the end of the run: duplicates are encoded, then retired."""
    dedup_distance: int = 8
    """Largest Hamming distance (of 192 bits) between two duplicate windows' hashes."""
    report_sample_fraction: float = 0.01
    """With curation on: fraction of windows (a deterministic sample) that keep a small
    thumbnail for the run's sample sheet (``runs/<run>/curation_samples.png``)."""

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "clips_per_video", "shard_size", "encode_batch_size"):
            check(getattr(self, name) >= 1, f"data.{name}", "must be >= 1")
        for name in ("num_encode_actors", "decode_threads", "decode_rows_per_task"):
            check(getattr(self, name) >= 1, f"data.{name}", "must be >= 1")
        check(self.manifest_flush_shards >= 1, "data.manifest_flush_shards", "must be >= 1")
        check(
            self.resolution > 0 and self.resolution % 8 == 0,
            "data.resolution",
            f"must be a positive multiple of 8, got {self.resolution}",
        )
        self._check_buckets()
        check(self.clips_per_video <= 32, "data.clips_per_video", "must be <= 32")
        for name in ("encode_num_cpus", "decode_num_cpus"):
            check(getattr(self, name) > 0, f"data.{name}", "must be > 0")
        check(self.video_ext.startswith("."), "data.video_ext", "must start with '.'")
        check(bool(self.path_column), "data.path_column", "must not be empty")
        check(
            bool(self.video_extensions)
            and all(e.startswith(".") and len(e) > 1 for e in self.video_extensions),
            "data.video_extensions",
            f"must be extensions starting with '.', got {list(self.video_extensions)}",
        )
        check(
            not (self.format == "folder" and self.video_root),
            "data.video_root",
            "must be empty with data.format=folder (the folder data.input is the video root)",
        )
        check(
            bool(self.long_video) == (self.format == "ranges"),
            "data.long_video",
            "names the video to cut with data.format=ranges, and only then"
            + (f" (data.format is {self.format})" if self.long_video else ""),
        )
        check(
            0 <= self.max_error_fraction <= 1,
            "data.max_error_fraction",
            f"must be in [0, 1], got {self.max_error_fraction}",
        )
        check(0 < self.camera_strength < 1, "data.camera_strength", "must be in (0, 1)")
        check(self.shot_threshold > 0, "data.shot_threshold", "must be > 0")
        for name in ("min_motion", "max_motion", "max_motion_spike", "max_text_score"):
            check(getattr(self, name) >= 0, f"data.{name}", "must be >= 0 (0: off)")
        check(
            not (0 < self.max_motion <= self.min_motion),
            "data.max_motion",
            f"must be above data.min_motion={self.min_motion:g} (or 0: off)",
        )
        check(0 <= self.dedup_distance < 192, "data.dedup_distance", "must be in [0, 192)")
        check(
            0 <= self.report_sample_fraction <= 1,
            "data.report_sample_fraction",
            "must be in [0, 1]",
        )
        mirrored = ("pan_left", "pan_right", "roll_clockwise", "roll_anticlockwise")
        check(
            not (self.flip and self.camera_motion in mirrored),
            "data.flip",
            f"a flipped {self.camera_motion} clip moves the other way; turn data.flip off",
        )

    def _check_buckets(self) -> None:
        for index, bucket in enumerate(self.buckets):
            option = f"data.buckets[{index}]"
            check(len(bucket) == 2, option, f"must be a [height, width] pair, got {list(bucket)}")
            check(
                all(side > 0 and side % 8 == 0 for side in bucket),
                option,
                f"height and width must be positive multiples of 8, got {list(bucket)}",
            )
        if not self.buckets:
            return
        ratios = [round(w / h, 9) for h, w in self.buckets]
        duplicate = next((b for b, r in zip(self.buckets, ratios) if ratios.count(r) > 1), None)
        check(
            duplicate is None,
            "data.buckets",
            f"two buckets share the aspect ratio of {list(duplicate or ())}: the later one would "
            "never be chosen",
        )
        areas = [h * w for h, w in self.buckets]
        check(
            max(areas) <= 2 * min(areas),
            "data.buckets",
            f"areas range from {min(areas)} to {max(areas)} pixels; buckets should hold about "
            "equal area (largest at most twice the smallest)",
        )
        check(
            self.camera_motion == "none" or all(h == w for h, w in self.buckets),
            "data.buckets",
            f"data.camera_motion={self.camera_motion} needs square frames; use square buckets "
            "or no buckets",
        )
