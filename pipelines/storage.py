"""Filesystems for local paths and ``s3://`` URIs, atomic writes, and safe source paths.

Every stage gets a pickled ``pyarrow.fs.FileSystem`` built once on the driver, so workers never
need their own credentials or endpoint settings (an S3 filesystem pickles its options).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from animatediff.config import DataConfig


class UnsafePathError(ValueError):
    """A path from the input table would leave the video root (``..``, absolute, foreign URI)."""


@dataclass(frozen=True)
class Location:
    """A filesystem and a path inside it; ``uri`` is what users and the manifest see."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts)
        return Location(self.fs, path, uri)


def is_object_store(uri: str) -> bool:
    return uri.startswith("s3://")


def _s3(cfg: DataConfig) -> pafs.S3FileSystem:
    endpoint = cfg.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
    region = cfg.s3_region or os.environ.get("AWS_DEFAULT_REGION", "") or "us-east-1"
    kwargs: dict = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs["endpoint_override"] = host or endpoint
        kwargs["scheme"] = scheme or "https"
    # Credentials resolved here travel with the pickled filesystem to the workers, whose
    # environment (started by the raylet) need not carry them.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def locate(uri: str, cfg: DataConfig) -> Location:
    """``uri`` (local path, ``file://`` or ``s3://bucket/key``) as a filesystem + path."""
    if is_object_store(uri):
        path = uri.removeprefix("s3://").rstrip("/")
        return Location(_s3(cfg), path, "s3://" + path)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"{uri}: unsupported URI scheme (local paths and s3:// are supported)")
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return Location(pafs.LocalFileSystem(), path, path)


@contextmanager
def atomic_output(location: Location) -> Iterator[pa.NativeFile]:
    """A stream whose file readers see either not at all or complete.

    Local files: a temporary sibling renamed into place on success, removed on failure. Object
    stores: a single upload is already all-or-nothing (a multipart upload becomes visible only
    once completed), so the stream writes the final key."""
    fs = location.fs
    if not isinstance(fs, pafs.LocalFileSystem):  # no directories (nor their marker objects)
        with fs.open_output_stream(location.path) as out:
            yield out
        return
    fs.create_dir(posixpath.dirname(location.path), recursive=True)
    name = f".tmp-{uuid.uuid4().hex}-{posixpath.basename(location.path)}"
    tmp = posixpath.join(posixpath.dirname(location.path), name)
    try:
        with fs.open_output_stream(tmp) as out:
            yield out
        os.replace(tmp, location.path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(location: Location, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole file."""
    with atomic_output(location) as out:
        out.write(data)


def read_bytes(location: Location) -> bytes:
    with location.fs.open_input_stream(location.path) as stream:
        return stream.read()


def exists(location: Location) -> bool:
    return location.fs.get_file_info(location.path).type != pafs.FileType.NotFound


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise UnsafePathError(f"{what} {value!r} is not a single file-name component")
    if "://" in value or value.startswith("~"):
        raise UnsafePathError(f"{what} {value!r} looks like a URI or home path")
    return value


def webvid_relative_path(videoid: str, page_dir: str | None, layout: str, ext: str) -> str:
    """``{videoid}{ext}`` (flat) or ``{page_dir}/{videoid}{ext}``; each part a single safe name."""
    name = _safe_component(videoid, "videoid") + ext
    if layout == "flat":
        return name
    return posixpath.join(_safe_component(page_dir or "", "page_dir"), name)


def manifest_relative_path(path: str, root: Location) -> str:
    """A manifest's path column, relative to the root; absolute paths and URIs must lie inside it.

    Any ``..`` component is refused outright (even one that would stay inside the root): a manifest
    that needs it is suspicious and the rule stays simple to audit."""
    if not path or "\x00" in path:
        raise UnsafePathError(f"path {path!r} is empty or contains NUL")
    if "\\" in path:
        raise UnsafePathError(f"path {path!r} contains a backslash")
    if "://" in path or path.startswith("/"):
        absolute = path.removeprefix("file://")
        prefix = root.uri.rstrip("/") + "/"
        if not absolute.startswith(prefix):
            raise UnsafePathError(f"path {path!r} lies outside the video root {root.uri}")
        path = absolute[len(prefix) :]
    parts = path.split("/")
    if any(part == ".." for part in parts):
        raise UnsafePathError(f"path {path!r} contains '..'")
    relative = posixpath.normpath(path)
    if relative.startswith("/") or relative in (".", ""):
        raise UnsafePathError(f"path {path!r} does not name a file under the root")
    return relative


def locate_path(root: Location, uri: str) -> Location:
    """A source ``uri`` built by ``root.join`` back as a location on the root's filesystem."""
    path = uri.removeprefix("s3://") if is_object_store(root.uri) else uri
    return Location(root.fs, path, uri)
