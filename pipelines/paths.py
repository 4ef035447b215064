"""Source paths from an input table, checked to stay under the video root.

A manifest or WebVid row names a video; what it names must resolve inside ``data.video_root``
(no ``..``, no foreign absolute path or URI). Rejections raise ``UnsafePathError`` and end up in the
error table as ``unsafe_path``.
"""

from __future__ import annotations

import posixpath

from animatediff.storage import Location, is_object_store


class UnsafePathError(ValueError):
    """A path from the input table would leave the video root (``..``, absolute, foreign URI)."""


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
