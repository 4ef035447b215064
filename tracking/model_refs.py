"""Which motion-module version a request means: aliases and versions of the MLflow registry.

The server never pins a version at start-up. ``RegistryView`` keeps a snapshot of the registered
model's versions and aliases for ``ttl_s`` seconds, and ``resolve_model_ref`` turns what a request
names ("champion", "3", "v3", nothing) into a concrete version. Moving an alias therefore reaches
new requests within ``ttl_s`` without restarting a replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MISS_REFRESH_S = 1.0
MOTION_LORA_INFIX = "-motion_lora-"


def motion_lora_model_name(model_name: str, lora_name: str) -> str:
    """The registered model of MotionLoRA ``lora_name`` made for the motion modules registered as
    ``model_name``: ``<model_name>-motion_lora-<lora_name>``."""
    return f"{model_name}{MOTION_LORA_INFIX}{lora_name}"


class UnknownModelError(ValueError):
    """A model reference matches no alias or version of the registered model (Serve answers
    422 naming the field, ``model`` unless said otherwise)."""

    def __init__(self, reason: str, field: str = "model") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ModelSnapshot:
    """Versions of one registered model and where its aliases point, at ``taken_at``."""

    name: str
    versions: tuple[dict[str, Any], ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    taken_at: float = 0.0

    def version_numbers(self) -> list[str]:
        return [v["version"] for v in self.versions]


def resolve_model_ref(ref: str | None, snapshot: ModelSnapshot, default_alias: str) -> str:
    """``None`` -> the default alias; an alias -> its version; "3"/"v3" -> "3" if registered.

    Raises ``UnknownModelError`` listing what is known when nothing matches."""
    ref = (ref or default_alias).strip()
    if ref in snapshot.aliases:
        return snapshot.aliases[ref]
    number = ref[1:] if ref[:1] in ("v", "V") and ref[1:].isdigit() else ref
    if number.isdigit() and str(int(number)) in snapshot.version_numbers():
        return str(int(number))
    known_aliases = ", ".join(sorted(snapshot.aliases)) or "none"
    known_versions = ", ".join(snapshot.version_numbers()) or "none"
    if not snapshot.versions:
        reason = f"no version of {snapshot.name!r} is registered yet"
    else:
        reason = (
            f"unknown model {ref!r} for {snapshot.name!r}; aliases: {known_aliases}; "
            f"versions: {known_versions}"
        )
    raise UnknownModelError(reason)


def read_snapshot(tracking_uri: str, name: str) -> ModelSnapshot:
    """Ask the registry (one search and one get) for the versions and aliases of ``name``."""
    from mlflow.exceptions import MlflowException

    from tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return ModelSnapshot(name=name, taken_at=time.monotonic())
        raise
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = []
    for mv in client.search_model_versions(f"name='{name}'"):
        versions.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "source": mv.source,
                "created_ms": mv.creation_timestamp,
                "description": mv.description or "",
            }
        )
    versions.sort(key=lambda v: int(v["version"]))
    return ModelSnapshot(
        name=name, versions=tuple(versions), aliases=aliases, taken_at=time.monotonic()
    )


def split_lora_ref(ref: str) -> tuple[str, str | None]:
    """``zoom_in`` / ``zoom_in@champion`` / ``zoom_in/3`` -> (``zoom_in``, alias or version)."""
    for separator in ("@", "/"):
        if separator in ref:
            name, _, which = ref.partition(separator)
            return name, which or None
    return ref, None


def resolve_lora_ref(
    ref: str, loras: dict[str, ModelSnapshot], default_alias: str, field: str = "motion_loras"
) -> tuple[str, str]:
    """``(registered model, version)`` of a MotionLoRA reference among ``loras`` (by LoRA name):
    ``name@alias`` and ``name/version`` as for motion modules; a bare name means its
    ``default_alias``, or its latest version while it has none (a LoRA just trained is usable
    before anyone promotes it). Raises ``UnknownModelError`` naming ``field``."""
    name, which = split_lora_ref(ref.strip())
    snapshot = loras.get(name)
    if snapshot is None:
        known = ", ".join(sorted(loras)) or "none registered"
        raise UnknownModelError(f"unknown MotionLoRA {name!r}; known: {known}", field)
    if which is None and default_alias not in snapshot.aliases and snapshot.versions:
        return snapshot.name, snapshot.version_numbers()[-1]
    try:
        return snapshot.name, resolve_model_ref(which, snapshot, default_alias)
    except UnknownModelError as error:
        raise UnknownModelError(f"MotionLoRA {error.reason}", field) from error


def read_motion_lora_snapshots(tracking_uri: str, model_name: str) -> dict[str, ModelSnapshot]:
    """Every registered MotionLoRA for ``model_name``'s motion modules, by LoRA name."""
    from tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    prefix = motion_lora_model_name(model_name, "")
    # LIKE treats '_' as a wildcard: a superset, narrowed to the exact prefix here.
    found = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'")
    names = sorted(m.name for m in found if m.name.startswith(prefix))
    return {name[len(prefix) :]: read_snapshot(tracking_uri, name) for name in names}


class MotionLoraCatalog:
    """The registered MotionLoRAs of a motion model, re-read at most every ``ttl_s`` seconds
    (and once a second on a miss), like ``RegistryView``."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        ttl_s: float,
        reader: Callable[[str, str], dict[str, ModelSnapshot]] = read_motion_lora_snapshots,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracking_uri, self.model_name, self.ttl_s = tracking_uri, model_name, ttl_s
        self._reader, self._clock = reader, clock
        self._loras: dict[str, ModelSnapshot] | None = None
        self._taken_at = 0.0
        self._lock = threading.Lock()

    def snapshot(self, max_age_s: float | None = None) -> dict[str, ModelSnapshot]:
        with self._lock:
            age = self._clock() - self._taken_at
            if self._loras is None or age >= (self.ttl_s if max_age_s is None else max_age_s):
                self._loras = self._reader(self.tracking_uri, self.model_name)
                self._taken_at = self._clock()
            return self._loras

    def resolve(self, ref: str, default_alias: str, field: str) -> tuple[str, str]:
        try:
            return resolve_lora_ref(ref, self.snapshot(), default_alias, field)
        except UnknownModelError:
            return resolve_lora_ref(ref, self.snapshot(MISS_REFRESH_S), default_alias, field)


class RegistryView:
    """A ``ModelSnapshot`` refreshed at most every ``ttl_s`` seconds (thread-safe)."""

    def __init__(
        self,
        tracking_uri: str,
        name: str,
        ttl_s: float,
        reader: Callable[[str, str], ModelSnapshot] = read_snapshot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracking_uri, self.name, self.ttl_s = tracking_uri, name, ttl_s
        self._reader, self._clock = reader, clock
        self._snapshot: ModelSnapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> ModelSnapshot:
        with self._lock:
            stale = self._snapshot is None or self._clock() - self._snapshot.taken_at >= self.ttl_s
            if stale:
                fresh = self._reader(self.tracking_uri, self.name)
                self._snapshot = ModelSnapshot(
                    fresh.name, fresh.versions, fresh.aliases, taken_at=self._clock()
                )
            return self._snapshot

    def resolve(self, ref: str | None, default_alias: str) -> str:
        """Resolve against the cached snapshot; on a miss, re-read once in case it just landed
        (at most once a second, so a stream of bad names cannot hammer the registry)."""
        snapshot = self.snapshot()
        try:
            return resolve_model_ref(ref, snapshot, default_alias)
        except UnknownModelError:
            if self._clock() - snapshot.taken_at < MISS_REFRESH_S:
                raise
            with self._lock:
                self._snapshot = None
            return resolve_model_ref(ref, self.snapshot(), default_alias)
