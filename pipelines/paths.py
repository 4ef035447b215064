"""Source paths from an input table, checked to stay under the video root.

A manifest or WebVid row names a video; what it names must resolve inside ``data.video_root``
(no ``..``, no foreign absolute path or URI, no control characters). Rejections raise
``UnsafePathError`` and end up in the error table as ``unsafe_path``, quoting the input value as
the table holds it (escaped: a newline in a path never breaks a message or a log line).

Symbolic links (local roots only; object stores have none): a link inside the root, or under a
linked directory, is resolved and the *real* path must lie inside the root's real path; the
decoder then opens the real path. Links that stay inside the root are allowed; a link that leaves
it is ``unsafe_path`` unless ``data.follow_symlinks`` is set (for a root that is a farm of links
into shared storage). The check happens when the row is planned and again when the video is
opened, so nothing outside the root is read or even stat'ed.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs

from animatediff.storage import Location, is_object_store
from animatediff.text import control_character, quote


class UnsafePathError(ValueError):
    """A path from the input table would leave the video root (``..``, absolute, foreign URI,
    a symbolic link pointing outside) or holds control characters."""


def _check_characters(value: str, what: str) -> None:
    if "\x00" in value:
        raise UnsafePathError(f"{what} {quote(value)} contains NUL")
    char = control_character(value)
    if char:
        raise UnsafePathError(f"{what} {quote(value)} contains a control character ({char})")


def _safe_component(value: str, what: str) -> str:
    _check_characters(value, what)
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise UnsafePathError(f"{what} {quote(value)} is not a single file-name component")
    if "://" in value or value.startswith("~"):
        raise UnsafePathError(f"{what} {quote(value)} looks like a URI or home path")
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
    that needs it is suspicious and the rule stays simple to audit. Messages quote ``path`` as
    given, not what is left of it after the root is stripped."""
    given = path
    if not path:
        raise UnsafePathError("path is empty")
    _check_characters(path, "path")
    if "\\" in path:
        raise UnsafePathError(f"path {quote(given)} contains a backslash")
    if "://" in path or path.startswith("/"):
        absolute = path.removeprefix("file://")
        root_uri = root.uri.rstrip("/")
        if absolute.rstrip("/") == root_uri:
            raise UnsafePathError(f"path {quote(given)} names the video root itself, not a file")
        prefix = root_uri + "/"
        if not absolute.startswith(prefix):
            raise UnsafePathError(
                f"path {quote(given)} lies outside the video root {quote(root.uri)}"
            )
        path = absolute[len(prefix) :]
    parts = path.split("/")
    if any(part == ".." for part in parts):
        raise UnsafePathError(f"path {quote(given)} contains '..'")
    relative = posixpath.normpath(path)
    if relative.startswith("/") or relative in (".", ""):
        raise UnsafePathError(f"path {quote(given)} does not name a file under the root")
    return relative


def locate_path(root: Location, uri: str) -> Location:
    """A source ``uri`` built by ``root.join`` back as a location on the root's filesystem."""
    path = uri.removeprefix("s3://") if is_object_store(root.uri) else uri
    return Location(root.fs, path, uri)


def confine(root: Location, source: Location, follow_symlinks: bool = False) -> Location:
    """``source`` as the location to open: on a local root its real path (symbolic links
    resolved), which must lie inside the root's real path unless ``follow_symlinks``; raises
    ``UnsafePathError`` naming the link and its target. Object stores are returned as they are."""
    if not isinstance(root.fs, pafs.LocalFileSystem):
        return source
    real = os.path.realpath(source.path)
    real_root = os.path.realpath(root.path)
    inside = real.startswith(real_root.rstrip(os.sep) + os.sep)
    if not inside and not follow_symlinks:
        raise UnsafePathError(
            f"{quote(source.uri)} resolves through a symbolic link to {quote(real)}, outside the "
            f"video root {quote(real_root)} (set data.follow_symlinks=true to allow that)"
        )
    return Location(source.fs, real, source.uri)
