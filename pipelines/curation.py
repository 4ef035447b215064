"""Curation of clip windows: which stages run, what each decided, and where it is recorded.

Stages (each off by default, switched by ``data.*``): shot boundaries (``pipelines.shots``: clip
windows are drawn inside shots, short shots are dropped), motion (``pipelines.motion``: static
and jittery windows are dropped, the score is stored per clip), text overlay
(``pipelines.overlay``) and near-duplicates (``pipelines.dedup``, decided on the driver at the
end of the run, see ``pipelines.shards.ShardWriter``). Shots, motion and overlay run inside the
decode task: shot detection in its one decode pass over the video (``pipelines.decode.shot_pass``),
motion and overlay on the window's frames.

Every decision is a record (``CURATION_SCHEMA``), kept windows and shots included: decode tasks
and the driver write them as parts under ``runs/<run>/curation-parts/``; at the end of the run
they are merged into ``runs/<run>/curation.parquet`` (all) and ``runs/<run>/filtered.parquet``
(the dropped ones, with reason, score and detail). A row whose every window was dropped gets
status ``filtered`` in the outcomes, with the first dropped window's reason.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from animatediff.storage import Location, atomic_output, write_atomic
from pipelines import dedup, motion, overlay, shots

STATUS_FILTERED = "filtered"
"""Outcome status of a row whose every window was dropped by curation."""
KEPT, DROPPED = "kept", "dropped"
SHORT_SHOT = "short_shot"
CURATION_PARTS = "curation-parts"

CURATION_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # position in the input table
        ("key", pa.string()),
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),  # shots | motion | overlay | dedup
        ("ordinal", pa.int32()),  # window draw ordinal; -1 for a shot
        ("start", pa.int32()),  # first frame of the shot / window
        ("end", pa.int32()),  # one past its last frame
        ("decision", pa.string()),  # kept | dropped
        ("reason", pa.string()),  # why it was dropped ("" when kept)
        ("score", pa.float32()),  # the stage's score (shot: its length in frames)
        ("detail", pa.string()),  # e.g. the kept clip id of a duplicate
        ("thumbnail", pa.binary()),  # PNG strip of 3 frames for a sample of windows, else null
    ]
)


@dataclass(frozen=True)
class CurationSpec:
    """The curation options of ``data.*`` that decode tasks need (see ``DataConfig``)."""

    shots: bool = False
    shot_threshold: float = 30.0
    min_motion: float = 0.0
    max_motion: float = 0.0
    max_motion_spike: float = 0.0
    motion_score: bool = False
    text_score: bool = False
    max_text_score: float = 0.0
    dedup: bool = False
    sample_fraction: float = 0.0

    @classmethod
    def from_data(cls, data: Any) -> CurationSpec:
        motion_on = data.motion_score or data.min_motion > 0 or data.max_motion > 0
        return cls(
            shots=data.shots,
            shot_threshold=data.shot_threshold,
            min_motion=data.min_motion,
            max_motion=data.max_motion,
            max_motion_spike=data.max_motion_spike,
            motion_score=motion_on or data.max_motion_spike > 0,
            text_score=data.text_score or data.max_text_score > 0,
            max_text_score=data.max_text_score,
            dedup=data.dedup,
            sample_fraction=data.report_sample_fraction,
        )

    @property
    def active(self) -> bool:
        return self.shots or self.motion_score or self.text_score or self.dedup


@dataclass
class VideoCuration:
    """What curation decided for one video: records (without the row's identity columns) and,
    per kept window ordinal, the columns it adds to the clip row."""

    records: list[dict] = field(default_factory=list)
    columns: dict[int, dict[str, Any]] = field(default_factory=dict)

    def first_drop(self) -> dict | None:
        return next((r for r in self.records if r["decision"] == DROPPED), None)


def _record(stage: str, ordinal: int, span: tuple[int, int], reason: str, score: float) -> dict:
    decision = DROPPED if reason else KEPT
    return {
        "stage": stage,
        "ordinal": ordinal,
        "start": span[0],
        "end": span[1],
        "decision": decision,
        "reason": reason,
        "score": score,
        "detail": "",
        "thumbnail": None,
    }


def shot_records(found: list[tuple[int, int]], dropped: list[tuple[int, int]], length: int):
    """Records of every shot: kept, or dropped as ``short_shot`` (score: its length)."""
    gone = set(dropped)
    records = []
    for span in found:
        reason = SHORT_SHOT if span in gone else ""
        record = _record("shots", -1, span, reason, float(span[1] - span[0]))
        if reason:
            record["detail"] = f"{span[1] - span[0]} frames < a {length}-frame window"
        records.append(record)
    return records


def detect_shots(thumbnails: np.ndarray, spec: CurationSpec) -> list[tuple[int, int]]:
    """uint8 ``(video frames, h, w, 3)`` -> the shots ``[start, end)``."""
    cuts = shots.detect_cuts(shots.cut_scores(thumbnails), spec.shot_threshold)
    return shots.shots_from_cuts(cuts, len(thumbnails))


def sampled(source: str, ordinal: int, fraction: float) -> bool:
    """Whether this window carries a thumbnail for the report (a deterministic sample)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{source}\x1f{ordinal}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def thumbnail(frames: np.ndarray, side: int = 64) -> bytes:
    """uint8 ``(frames, H, W, 3)`` -> PNG of the first, middle and last frames side by side."""
    from PIL import Image

    picks = [frames[i] for i in (0, len(frames) // 2, len(frames) - 1)]
    tiles = [Image.fromarray(np.ascontiguousarray(f)).resize((side, side)) for f in picks]
    strip = Image.new("RGB", (side * len(tiles), side))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * side, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def curate_window(
    frames: np.ndarray, ordinal: int, span: tuple[int, int], source: str, spec: CurationSpec
) -> tuple[list[dict], dict[str, Any] | None]:
    """Score one decoded window uint8 ``(frames, R, R, 3)``: ``(records, added clip columns or
    None when a stage dropped it)``. Stages run in order; the first drop ends the window."""
    records: list[dict] = []
    columns: dict[str, Any] = {}
    if spec.motion_score:
        steps = motion.frame_steps(frames)
        reason, score = motion.motion_verdict(
            steps, spec.min_motion, spec.max_motion, spec.max_motion_spike
        )
        records.append(_record("motion", ordinal, span, reason, score))
        columns["motion_score"] = np.float32(motion.motion_score(steps))
    if spec.text_score and not (records and records[-1]["reason"]):
        score = overlay.overlay_score(frames)
        reason = overlay.OVERLAY if 0 < spec.max_text_score < score else ""
        records.append(_record("overlay", ordinal, span, reason, score))
        columns["text_score"] = np.float32(score)
    if spec.dedup:
        columns["phash"] = dedup.clip_hash(frames)
    if not records:  # dedup alone: a record per window so the report can show it
        records.append(_record("decode", ordinal, span, "", 0.0))
    if sampled(source, ordinal, spec.sample_fraction):
        records[-1]["thumbnail"] = thumbnail(frames)
    dropped = any(r["reason"] for r in records)
    return records, None if dropped else columns


def write_part(records: list[dict], directory: Location, prefix: str) -> None:
    """Records -> one content-named Parquet part (a retried task rewrites the same file)."""
    if not records:
        return
    table = pa.Table.from_pylist(records, schema=CURATION_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    name = hashlib.sha256(data).hexdigest()[:32]
    write_atomic(directory.join(f"part-{prefix}-{name}.parquet"), data)


def merge_curation(run_dir: Location) -> dict:
    """Merge ``runs/<run>/curation-parts/`` into ``curation.parquet`` and ``filtered.parquet``;
    return the counts: ``clips_filtered`` (dropped windows), ``filtered_by_reason`` (dropped
    windows and shots by reason), ``shots_detected``."""
    fs = run_dir.fs
    parts_dir = run_dir.join(CURATION_PARTS)
    parts = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(parts_dir.path, allow_not_found=True))
        if info.path.endswith(".parquet") and not posixpath.basename(info.path).startswith(".")
    )
    by_reason: dict[str, int] = {}
    counts = {"clips_filtered": 0, "shots_detected": 0}
    with (
        atomic_output(run_dir.join("curation.parquet")) as all_out,
        atomic_output(run_dir.join("filtered.parquet")) as dropped_out,
        pq.ParquetWriter(all_out, CURATION_SCHEMA, compression="zstd") as all_writer,
        pq.ParquetWriter(dropped_out, CURATION_SCHEMA, compression="zstd") as dropped_writer,
    ):
        for path in parts:
            with fs.open_input_file(path) as source:
                table = pq.read_table(source, schema=CURATION_SCHEMA).sort_by("row")
            all_writer.write_table(table)
            dropped = table.filter(pc.equal(table["decision"], DROPPED))
            dropped_writer.write_table(dropped)
            counts["shots_detected"] += int(pc.sum(pc.equal(table["stage"], "shots")).as_py() or 0)
            windows = pc.greater_equal(dropped["ordinal"], 0)
            counts["clips_filtered"] += int(pc.sum(windows).as_py() or 0)
            for reason in dropped["reason"].to_pylist():
                by_reason[reason] = by_reason.get(reason, 0) + 1
    if fs.get_file_info(parts_dir.path).type != pafs.FileType.NotFound:
        fs.delete_dir(parts_dir.path)
    counts["filtered_by_reason"] = dict(sorted(by_reason.items()))
    return counts
