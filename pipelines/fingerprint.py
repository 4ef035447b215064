"""The latent fingerprint: everything a model being trained relies on when it reads cached latents.

Two shard sets with equal fingerprints are interchangeable; anything else must never be mixed
(each fingerprint gets its own output subdirectory, and readers refuse a mismatch). The VAE is
identified by its weights hash, not its path, so the same weights found at another path (another
machine, a re-download) still match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from animatediff.config import Config
from pipelines.curation import CurationSpec

PIPELINE_VERSION = "2"
"""Bumped whenever decoding, resizing or encoding changes what a latent means, or clip ids change
meaning. 2: clip ids include the source's content identity, shards carry ``source_version``
(a cache of version 1 is left alone in its own ``fp-`` directory, not mixed in)."""

LATENT_DTYPE = "float16"


class FingerprintMismatchError(ValueError):
    """Shards were encoded differently from what the reader expects."""


def fingerprint_from_models(cfg: Config, vae: Any, text_encoder: Any | None = None) -> dict:
    """The fingerprint of ``cfg.data`` encoded with these (already loaded) models."""
    from animatediff.base_model import weights_hash

    data = cfg.data
    fingerprint: dict[str, Any] = {
        "pipeline_version": PIPELINE_VERSION,
        "vae": {
            "class": type(vae).__name__,
            "latent_channels": int(vae.config.latent_channels),
            "weights_sha256": weights_hash(vae),
        },
        "scaling_factor": float(vae.config.scaling_factor),
        "num_frames": data.num_frames,
        "stride": data.stride,
        "resolution": data.resolution,
        "latent_dtype": LATENT_DTYPE,
        "text_encoder": None,
    }
    if data.buckets:
        # Absent without buckets (caches of square crops keep their fingerprint); the list, in
        # order, decides which bucket each video lands in.
        fingerprint["buckets"] = [[int(h), int(w)] for h, w in data.buckets]
    if data.camera_motion != "none":
        # Absent without camera motion: caches written before it existed keep their fingerprint.
        fingerprint["camera_motion"] = {
            "kind": data.camera_motion,
            "strength": float(data.camera_strength),
        }
    curation = CurationSpec.from_data(data)
    if curation.active:
        # Absent without curation (caches written before it existed keep their fingerprint).
        # Shots change which windows are drawn and the filters which clips exist, so a cache
        # curated otherwise must not be reused.
        fingerprint["curation"] = {
            k: v for k, v in dataclasses.asdict(curation).items() if k != "sample_fraction"
        } | {"dedup_distance": data.dedup_distance if data.dedup else None}
    if data.cache_text_embeddings:
        if text_encoder is None:
            raise ValueError(
                "data.cache_text_embeddings needs the text encoder for the fingerprint"
            )
        fingerprint["text_encoder"] = {
            "class": type(text_encoder).__name__,
            "hidden_size": int(text_encoder.config.hidden_size),
            "weights_sha256": weights_hash(text_encoder),
        }
    return fingerprint


def data_fingerprint(cfg: Config) -> dict:
    """What a model trained with ``cfg`` expects of its latent shards (loads the VAE to hash it)."""
    from animatediff.base_model import load_text_encoder, load_vae

    text_encoder = None
    if cfg.data.cache_text_embeddings:
        _, text_encoder = load_text_encoder(cfg.model.base)
    return fingerprint_from_models(cfg, load_vae(cfg.model.base), text_encoder)


def fingerprint_hash(fingerprint: dict) -> str:
    """16 hex digits over the canonical JSON of a fingerprint; names its output subdirectory."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fingerprint_dir_name(fingerprint: dict) -> str:
    return f"fp-{fingerprint_hash(fingerprint)}"


def fingerprint_differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Human-readable differences, e.g. ``resolution: expected 256, found 64``."""
    differences = []
    for key in sorted(set(expected) | set(found)):
        name = f"{prefix}{key}"
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += fingerprint_differences(a, b, f"{name}.")
        elif a != b:
            differences.append(f"{name}: expected {a!r}, found {b!r}")
    return differences
