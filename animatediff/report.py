"""Evaluation reports: a contact sheet of videos (one row each) and a Markdown table of metrics.

sheet = contact_sheet(videos, ["the digit 3 moving left", ...], max_frames=8)
save_png(sheet, "outputs/eval/sheet.png")
print(markdown_table(rows, ["prompt", "direction", "accuracy"]))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LABEL_HEIGHT = 16  # pixels above each row for its label (PIL's default font is ~12 px tall)
GAP = 2  # white pixels between frames and between rows
_WHITE, _BLACK = 255, (0, 0, 0)


def pick_frames(video: np.ndarray, max_frames: int | None) -> np.ndarray:
    """All frames, or ``max_frames`` evenly spaced ones including the first and the last (the
    whole motion stays visible, at a coarser step)."""
    if max_frames is None or video.shape[0] <= max_frames:
        return video
    if max_frames < 1:
        raise ValueError(f"max_frames: must be >= 1, got {max_frames}")
    index = np.round(np.linspace(0, video.shape[0] - 1, max_frames)).astype(int)
    return video[index]


def contact_sheet(
    videos: Sequence[np.ndarray],
    row_labels: Sequence[str],
    max_frames: int | None = None,
) -> np.ndarray:
    """One row per video ``(frames, h, w, 3)`` uint8, frames left to right, under a label strip.

    Row ``r`` starts at ``y0 = sum of the rows above (LABEL_HEIGHT + h + GAP each)``; its label
    fills ``[y0, y0 + LABEL_HEIGHT)`` and frame ``i`` lies at
    ``[y0 + LABEL_HEIGHT, +h) x [i * (w + GAP), +w)``. Videos may differ in size and length; the
    sheet is as wide as the widest row, on white. Returns ``(H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw, ImageFont

    if len(videos) != len(row_labels):
        raise ValueError(f"{len(videos)} videos for {len(row_labels)} row labels")
    if not videos:
        raise ValueError("contact_sheet: no videos")
    rows = []
    for video in videos:
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video: expected (frames, h, w, 3) uint8, got {video.shape}")
        rows.append(pick_frames(video, max_frames))
    widths = [f * (w + GAP) - GAP for f, _, w, _ in (row.shape for row in rows)]
    height = sum(LABEL_HEIGHT + row.shape[1] + GAP for row in rows) - GAP
    sheet = np.full((height, max(widths), 3), _WHITE, dtype=np.uint8)
    y = 0
    for row in rows:
        _, h, w, _ = row.shape
        for i, frame in enumerate(row):
            x = i * (w + GAP)
            sheet[y + LABEL_HEIGHT : y + LABEL_HEIGHT + h, x : x + w] = frame
        y += LABEL_HEIGHT + h + GAP
    # Text last, on the finished array: labels longer than the sheet are clipped at its edge.
    image = Image.fromarray(sheet)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    y = 0
    for row, label in zip(rows, row_labels):
        draw.text((2, y + 2), str(label), fill=_BLACK, font=font)
        y += LABEL_HEIGHT + row.shape[1] + GAP
    return np.asarray(image)


def png_bytes(image: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 image encoded as PNG."""
    import io

    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as PNG, creating parent folders; returns the path."""
    path = Path(path)
    data = png_bytes(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def format_value(value: object, digits: int = 4) -> str:
    """A table cell: ``None`` empty, booleans ``yes``/``no``, integers exact, other numbers to
    ``digits`` significant digits (``0.8125``, ``123.5``, ``1.235e+04``), NaN as ``nan``."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # keep the row on one line


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """GitHub Markdown table of ``rows`` with one column per key in ``columns`` (missing keys are
    empty cells); numbers right-aligned, text left-aligned, as ``format_value`` writes them."""
    if not columns:
        raise ValueError("markdown_table: no columns")

    def numeric(column: str) -> bool:
        values = [row[column] for row in rows if row.get(column) is not None]
        return bool(values) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in values
        )

    header = "| " + " | ".join(format_value(c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|"
    body = ["| " + " | ".join(format_value(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"
