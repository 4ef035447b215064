"""Near-duplicate clips: a DCT perceptual hash of key frames and a deterministic keep-once rule.

Each clip window is hashed by the 64-bit pHash (the sign of the lowest 8x8 DCT coefficients of a
32x32 grey image against their median, as ``imagehash.phash``) of its first, middle and last
frames: 192 bits. Two windows are duplicates when their Hamming distance is at most
``data.dedup_distance``. Of a group of duplicates the window that comes first in
``find_duplicates``'s order is kept (the preprocessing run orders clips already in the cache
first, then by input row and window ordinal), whatever order the streaming pipeline delivered
them in. Lookups use the pigeonhole rule: with ``d + 1`` bands, two hashes within distance ``d``
agree exactly on at least one band, so only windows sharing a band are compared. No Ray here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NEAR_DUPLICATE = "near_duplicate"
HASH_FRAMES = 3
HASH_BITS = 64 * HASH_FRAMES


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis ``(n, n)``: ``D @ x`` transforms a column vector."""
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    return basis


_DCT32 = _dct_matrix(32)


def _grey32(frame: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> float ``(32, 32)`` grey, box-averaged (PIL's area resize)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
    return np.asarray(image.resize((32, 32), Image.Resampling.BOX), np.float64)


def phash(frame: np.ndarray) -> int:
    """uint8 ``(H, W, 3)`` -> the 64-bit perceptual hash (bit 63 = coefficient (0, 0))."""
    grey = _grey32(frame)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def clip_hash(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(frames, H, W, 3)`` -> uint64 ``(3,)``: the hashes of the first, middle and last
    frames."""
    picks = (0, len(frames) // 2, len(frames) - 1)
    return np.array([phash(frames[i]) for i in picks], np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Bits that differ between two hash vectors (uint64, same shape)."""
    return sum(int(x ^ y).bit_count() for x, y in zip(a.tolist(), b.tolist()))


def _bands(hashes: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The ``count`` contiguous bit ranges of the hash as ``(band, value)`` keys."""
    bits = 0
    for value in hashes.tolist():
        bits = (bits << 64) | int(value)
    total = 64 * len(hashes)
    edges = [int(e) for e in np.linspace(0, total, count + 1)]
    keys = []
    for band, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        keys.append((band, (bits >> (total - b)) & ((1 << (b - a)) - 1)))
    return keys


class DuplicateIndex:
    """Kept hashes, looked up by band (see the module doc); distance ``d`` in bits."""

    def __init__(self, distance: int):
        self.distance = distance
        self.bands = min(distance + 1, HASH_BITS)
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._kept: list[tuple[str, np.ndarray]] = []

    def match(self, hashes: np.ndarray) -> tuple[str, int] | None:
        """``(kept id, distance)`` of the first kept window within the distance, or None."""
        seen: set[int] = set()
        best: tuple[str, int] | None = None
        for key in _bands(hashes, self.bands):
            for position in self._buckets.get(key, ()):
                if position in seen:
                    continue
                seen.add(position)
                found = hamming(hashes, self._kept[position][1])
                if found <= self.distance and (best is None or position < best[2]):
                    best = (self._kept[position][0], found, position)
        return None if best is None else (best[0], best[1])

    def add(self, ident: str, hashes: np.ndarray) -> None:
        position = len(self._kept)
        self._kept.append((ident, hashes))
        for key in _bands(hashes, self.bands):
            self._buckets.setdefault(key, []).append(position)


def find_duplicates(
    items: Iterable[tuple[str, np.ndarray]],
    distance: int,
    seeds: Iterable[tuple[str, np.ndarray]] = (),
) -> dict[str, tuple[str, int]]:
    """``(id, hashes uint64 (3,))`` in keep-priority order -> ``{dropped id: (kept id,
    distance)}``: each item is kept unless an earlier kept item lies within ``distance`` bits.
    ``seeds`` (clips kept earlier, e.g. in the cache) come first and are never dropped."""
    index = DuplicateIndex(distance)
    for ident, hashes in seeds:
        if index.match(np.asarray(hashes, np.uint64)) is None:  # one representative suffices
            index.add(ident, np.asarray(hashes, np.uint64))
    dropped: dict[str, tuple[str, int]] = {}
    for ident, hashes in items:
        found = index.match(np.asarray(hashes, np.uint64))
        if found is None:
            index.add(ident, np.asarray(hashes, np.uint64))
        else:
            dropped[ident] = found
    return dropped
