"""The curation report of a run: a histogram PNG of motion scores and shot lengths, and a sample
sheet PNG of kept and dropped windows, written beside the run's ``curation.parquet``
(``runs/<run>/curation_histograms.png``, ``runs/<run>/curation_samples.png``). PIL and numpy
only; the drawing is split from the reading so that it can be tested on plain arrays.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from animatediff.report import contact_sheet, png_bytes
from animatediff.storage import Location, write_atomic
from pipelines.curation import DROPPED, KEPT

BINS = 20
PANEL = (360, 160)  # width, height of one histogram's plot area in pixels
_KEPT_COLOUR, _DROPPED_COLOUR = (60, 150, 80), (200, 60, 60)


def histogram_panel(kept: np.ndarray, dropped: np.ndarray, title: str) -> np.ndarray:
    """Stacked histogram (kept green, dropped red) of two value sets over shared bins, with a
    title and the range under it. Returns uint8 ``(PANEL[1] + 40, PANEL[0] + 20, 3)``."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = PANEL
    image = Image.new("RGB", (width + 20, height + 40), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    values = np.concatenate([kept, dropped]).astype(np.float64)
    if not len(values):
        draw.text((10, 4), f"{title}: no values", fill=(0, 0, 0), font=font)
        return np.asarray(image)
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high if high > low else low + 1, BINS + 1)
    kept_counts = np.histogram(kept, edges)[0]
    dropped_counts = np.histogram(dropped, edges)[0]
    top = max(int((kept_counts + dropped_counts).max()), 1)
    bar = width / BINS
    base = 20 + height  # y of the x axis
    for i, (k, d) in enumerate(zip(kept_counts, dropped_counts)):
        x0, x1 = 10 + i * bar, 10 + (i + 1) * bar - 1
        k_top = base - height * k / top
        d_top = k_top - height * d / top
        if k:
            draw.rectangle([x0, k_top, x1, base], fill=_KEPT_COLOUR)
        if d:
            draw.rectangle([x0, d_top, x1, k_top], fill=_DROPPED_COLOUR)
    draw.line([10, base, 10 + width, base], fill=(0, 0, 0))
    head = f"{title}: {len(kept)} kept, {len(dropped)} dropped (max bin {top})"
    draw.text((10, 4), head, fill=(0, 0, 0), font=font)
    draw.text((10, base + 4), f"{low:.3g}", fill=(0, 0, 0), font=font)
    draw.text((width - 30, base + 4), f"{high:.3g}", fill=(0, 0, 0), font=font)
    return np.asarray(image)


def _scores(table, stage: str, decision: str) -> np.ndarray:
    mask = pc.and_(pc.equal(table["stage"], stage), pc.equal(table["decision"], decision))
    return table.filter(mask)["score"].to_numpy(zero_copy_only=False).astype(np.float64)


def _strip(png: bytes) -> np.ndarray:
    """A thumbnail strip (``pipelines.curation.thumbnail``) -> uint8 ``(3, side, side, 3)``."""
    from PIL import Image

    strip = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    side = strip.shape[0]
    return np.stack([strip[:, i * side : (i + 1) * side] for i in range(strip.shape[1] // side)])


def sample_rows(table, per_group: int = 4) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``per_group`` sampled windows kept and per drop reason: ``(videos, labels)``. A
    window's thumbnail is found on any of its records (a duplicate's comes from its decode)."""
    sampled = table.filter(pc.invert(pc.is_null(table["thumbnail"])))
    pictures = {
        (row, ordinal): png
        for row, ordinal, png in zip(
            sampled["row"].to_pylist(),
            sampled["ordinal"].to_pylist(),
            sampled["thumbnail"].to_pylist(),
        )
    }
    final: dict[tuple[int, int], tuple[str, str, float]] = {}
    for row, ordinal, decision, reason, score, stage in zip(
        *(table[c].to_pylist() for c in ("row", "ordinal", "decision", "reason", "score", "stage"))
    ):
        if ordinal < 0 or (row, ordinal) not in pictures:
            continue
        if decision == DROPPED or (row, ordinal) not in final:
            final[(row, ordinal)] = (reason or KEPT, stage, score)
    videos, labels, used = [], [], {}
    for window, (reason, _, score) in sorted(final.items()):
        if used.get(reason, 0) >= per_group:
            continue
        used[reason] = used.get(reason, 0) + 1
        videos.append(_strip(pictures[window]))
        labels.append(f"r{window[0]}#{window[1]} {reason} {score:.3g}")
    return videos, labels


def write_reports(run_dir: Location) -> dict[str, str]:
    """Read ``curation.parquet`` and write both PNGs; returns ``{name: uri}`` of those written
    (the sample sheet needs at least one sampled window)."""
    table = pq.read_table(run_dir.join("curation.parquet").path, filesystem=run_dir.fs)
    panels = [
        histogram_panel(_scores(table, stage, KEPT), _scores(table, stage, DROPPED), title)
        for stage, title in (("motion", "motion score"), ("shots", "shot length (frames)"))
    ]
    written = {}
    location = run_dir.join("curation_histograms.png")
    write_atomic(location, png_bytes(np.concatenate(panels, axis=0)))
    written["histograms"] = location.uri
    videos, labels = sample_rows(table)
    if videos:
        location = run_dir.join("curation_samples.png")
        write_atomic(location, png_bytes(contact_sheet(videos, labels)))
        written["samples"] = location.uri
    return written
