"""Reading latent shards for training: only committed shards, only the expected fingerprint, and
only live clips (not those retired because their video was replaced, see ``pipelines.shards``)."""

from __future__ import annotations

import functools
import posixpath
import threading
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs

from animatediff.config import StorageConfig
from animatediff.storage import Location, locate
from pipelines.fingerprint import (
    FingerprintMismatchError,
    fingerprint_differences,
    fingerprint_dir_name,
)
from pipelines.shards import load_manifest, load_retired

if TYPE_CHECKING:
    import ray.data


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


PATH_COLUMN = "path"
"""The column ``read_parquet(include_paths=True)`` adds (dropped again after filtering)."""


def _drop_retired(table: pa.Table, retired: dict[str, set[str]]) -> pa.Table:
    """Rows of ``table`` whose ``(path, clip_id)`` is not retired, without the path column."""
    keep = [
        clip_id not in retired.get(path, ())
        for path, clip_id in zip(table[PATH_COLUMN].to_pylist(), table["clip_id"].to_pylist())
    ]
    return table.filter(pa.array(keep, pa.bool_())).drop_columns([PATH_COLUMN])


_CONTEXT_SWITCH = threading.Lock()
"""Held while `read_shards` switches Ray Data's reader (see there)."""


def read_shards(
    paths: list[str], filesystem: pafs.FileSystem, include_paths: bool = False
) -> ray.data.Dataset:
    """``ray.data.read_parquet`` of ``paths`` through Ray Data's first Parquet reader.

    Ray 2.60's default reader (datasource V2) starts 32 footer-reader actors for every read,
    however few the files: a new worker process each, so a one-shard set took 5 to 10 s to
    materialise on 2 cores (4 to 8 logical CPUs), against 0.1 to 0.2 s with this reader: a
    third of every small training job's start. The manifest already lists the shards; footers
    add nothing here.

    The switch is in Ray Data's process-wide context: reads from several threads (trainings or
    preprocesses at once) take turns, or one could restore another's setting for good."""
    import ray.data

    with _CONTEXT_SWITCH:
        context = ray.data.DataContext.get_current()
        default = context.use_datasource_v2
        context.use_datasource_v2 = False  # read when the plan is built, here, not when it runs
        try:
            return ray.data.read_parquet(paths, filesystem=filesystem, include_paths=include_paths)
        finally:
            context.use_datasource_v2 = default


def shard_set_dataset(location: Location, manifest: dict) -> ray.data.Dataset:
    """The streaming ``ray.data.Dataset`` of the live clips in the shards a ``find_shard_set``
    result lists."""
    paths = [location.join(entry["path"]).path for entry in manifest["shards"]]
    if not paths:
        raise FileNotFoundError(f"{location.uri}: the manifest lists no shards")
    retired = load_retired(location, manifest)
    if not retired:
        return read_shards(paths, location.fs)
    by_path = {location.join(shard).path: ids for shard, ids in retired.items()}
    ds = read_shards(paths, location.fs, include_paths=True)
    return ds.map_batches(
        functools.partial(_drop_retired, retired=by_path), batch_format="pyarrow", batch_size=None
    )
