"""Reading latent shards for training: only committed shards, only the expected fingerprint."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from animatediff.config import StorageConfig
from animatediff.storage import Location, locate
from pipelines.fingerprint import (
    FingerprintMismatchError,
    fingerprint_differences,
    fingerprint_dir_name,
)
from pipelines.shards import load_manifest


def _fingerprint_dirs(root: Location) -> list[Location]:
    selector = pafs.FileSelector(root.path, allow_not_found=True)
    return [
        root.join(posixpath.basename(info.path))
        for info in root.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and posixpath.basename(info.path).startswith("fp-")
    ]


def find_shard_set(
    uri: str, expected_fingerprint: dict | None = None, storage: StorageConfig | None = None
) -> tuple[Location, dict]:
    """The fingerprint directory to read and its manifest.

    ``uri`` is either a fingerprint directory (has ``manifest.json``) or the ``data.output`` root
    holding ``fp-<hash>`` directories. Raises ``FingerprintMismatchError`` naming the differences
    when the shards do not match ``expected_fingerprint``."""
    location = locate(uri, storage)
    manifest = load_manifest(location)
    if manifest is None:
        candidates = _fingerprint_dirs(location)
        if expected_fingerprint is not None:
            wanted = fingerprint_dir_name(expected_fingerprint)
            matches = [c for c in candidates if c.uri.endswith("/" + wanted)]
            if not matches:
                found = [(c, load_manifest(c)) for c in candidates]
                details = [
                    f"{c.uri}: "
                    + "; ".join(fingerprint_differences(expected_fingerprint, m["fingerprint"]))
                    for c, m in found
                    if m is not None
                ]
                raise FingerprintMismatchError(
                    f"{uri}: no shards with the expected fingerprint ({wanted})"
                    + (". Found: " + " | ".join(details) if details else "")
                )
            candidates = matches
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"{uri}: expected one fingerprint directory with a manifest.json, found "
                f"{[c.uri for c in candidates]}; pass the directory or expected_fingerprint"
            )
        location = candidates[0]
        manifest = load_manifest(location)
        if manifest is None:
            raise FileNotFoundError(f"{location.uri}: no manifest.json")
    if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
        differences = fingerprint_differences(expected_fingerprint, manifest["fingerprint"])
        raise FingerprintMismatchError(
            f"{location.uri}: latent shards do not match the model: " + "; ".join(differences)
        )
    return location, manifest


def shard_set_dataset(location: Location, manifest: dict):
    """The streaming ``ray.data.Dataset`` of the shards a ``find_shard_set`` result lists."""
    import ray.data

    paths = [location.join(entry["path"]).path for entry in manifest["shards"]]
    if not paths:
        raise FileNotFoundError(f"{location.uri}: the manifest lists no shards")
    return ray.data.read_parquet(paths, filesystem=location.fs)
