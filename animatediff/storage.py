"""Storage: local paths and ``s3://`` URIs through one code path, and atomic writes.

Every job, stage and checkpoint reads and writes through ``locate(uri, cfg.storage)``. The
``pyarrow.fs.FileSystem`` it returns is built once on the driver and pickled to Ray workers, so they
never need their own credentials or endpoint settings (an S3 filesystem pickles its options).
The S3 endpoint comes from ``storage.s3_endpoint``, else ``$AWS_ENDPOINT_URL_S3``, else
``$AWS_ENDPOINT_URL``, as the AWS SDKs resolve it; credentials from the ``AWS_*`` variables.
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

from animatediff.config import StorageConfig


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


def _s3(cfg: StorageConfig) -> pafs.S3FileSystem:
    endpoint = (
        cfg.s3_endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3", "")
        or os.environ.get("AWS_ENDPOINT_URL", "")
    )
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


def locate(uri: str | os.PathLike, cfg: StorageConfig | None = None) -> Location:
    """``uri`` (local path, ``file://`` or ``s3://bucket/key``) as a filesystem + path.

    Local paths are made absolute (``~`` expanded): Ray workers run in other directories."""
    uri = os.fspath(uri)
    if is_object_store(uri):
        path = uri.removeprefix("s3://").rstrip("/")
        return Location(_s3(cfg or StorageConfig()), path, "s3://" + path)
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


def read_text(location: Location) -> str:
    return read_bytes(location).decode("utf-8")


def ray_storage(uri: str, cfg: StorageConfig | None = None) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``: an absolute local path
    and no filesystem, or the bucket path with the configured S3 filesystem (which travels to the
    Train controller and workers inside the run config)."""
    location = locate(uri, cfg)
    if is_object_store(location.uri):
        return location.path, location.fs
    return location.path, None
