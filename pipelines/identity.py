"""What identifies a source video's content, so that a file replaced at the same path is encoded
again instead of serving the old latents from the cache.

``source_version`` is part of every clip id (``pipelines.windows.clip_id``) and stored with each
clip (shard column ``source_version``):

- local files: ``size=<bytes>;mtime_ns=<ns>`` (a copy that keeps the mtime, ``cp -p`` or
  ``rsync -a``, keeps the identity);
- object stores: ``size=<bytes>;mtime_ns=<Last-Modified>``. pyarrow's S3 client exposes no ETag
  or version id, and ``Last-Modified`` has one-second resolution: a same-size overwrite within the
  second it was written is not noticed. Re-uploading identical bytes changes it (the clips are
  encoded again);
- ``data.content_hash: true``: ``sha256=<hex>`` of the bytes, exact whatever the store, at the
  cost of reading every video on every run, cached or not.

Switching ``data.content_hash`` changes every identity, so every clip is encoded once more.
"""

from __future__ import annotations

import hashlib

import pyarrow.fs as pafs

from animatediff.storage import Location

MISSING = ""
"""The identity of a source that does not exist (its row fails as ``missing_file``)."""


def stat_version(info: pafs.FileInfo) -> str:
    """``size=...;mtime_ns=...`` of an existing file, ``MISSING`` otherwise."""
    if info.type != pafs.FileType.File:
        return MISSING
    mtime = info.mtime_ns if info.mtime_ns is not None else -1
    return f"size={info.size};mtime_ns={mtime}"


def hash_version(data: bytes) -> str:
    return "sha256=" + hashlib.sha256(data).hexdigest()


def hash_file(location: Location, chunk: int = 1 << 22) -> str:
    """``sha256=...`` of a file, streamed."""
    digest = hashlib.sha256()
    with location.fs.open_input_stream(location.path) as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return "sha256=" + digest.hexdigest()


def source_version(location: Location, content_hash: bool) -> str:
    """The identity of the content at ``location`` (``MISSING`` when it is not a file)."""
    info = location.fs.get_file_info(location.path)
    version = stat_version(info)
    if version == MISSING or not content_hash:
        return version
    return hash_file(location)
