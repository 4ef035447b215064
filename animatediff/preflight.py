"""Start-up checks that take seconds, so a job fails before it starts Ray (or downloads anything)
with one line naming the option and the fix.

The checks are shared by every job's ``preflight`` (``pipelines.preprocess.preflight``,
``pipelines.generate.preflight``, ``serving.deploy.preflight``, ``train_preflight`` below): an
input that must exist, a directory that must exist, an output that must not be a file, and a
base model that can be loaded from here. A hub id is checked without downloading it: in the local
Hugging Face cache, else with one request to the hub (a few seconds' timeout); under
``HF_HUB_OFFLINE=1`` an uncached id fails at once instead of retrying the hub for minutes.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from animatediff.config import BaseModelConfig, Config, ConfigError, StorageConfig
from animatediff.storage import Location, locate

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_TIMEOUT_S = 5.0
_TRUE = ("1", "true", "yes", "on")


def _info(uri: str, option: str, storage: StorageConfig | None) -> tuple[Location, pafs.FileInfo]:
    try:
        location = locate(uri, storage)
        return location, location.fs.get_file_info(location.path)
    except (OSError, ValueError) as error:  # bad scheme, S3 unreachable or denied
        raise ConfigError(f"{option}: cannot read {uri} ({error})") from error


def check_input_file(uri: str, option: str, storage: StorageConfig | None = None) -> None:
    """``uri`` must be an existing file."""
    location, info = _info(uri, option, storage)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{option}: {location.uri} does not exist")
    if info.type != pafs.FileType.File:
        raise ConfigError(f"{option}: {location.uri} is a directory, not a file")


def check_root(uri: str, option: str, storage: StorageConfig | None = None) -> None:
    """``uri`` must be an existing directory (on object stores: a prefix with objects)."""
    location, info = _info(uri, option, storage)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{option}: {location.uri} does not exist")
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"{option}: {location.uri} is a file, not a directory")


def check_exists(uri: str, option: str, storage: StorageConfig | None = None) -> None:
    """``uri`` must exist (a file or a directory)."""
    location, info = _info(uri, option, storage)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{option}: {location.uri} does not exist")


def check_output_dir(uri: str, option: str, storage: StorageConfig | None = None) -> None:
    """``uri`` must be a directory or creatable as one: neither it nor (locally) any existing
    parent may be a file."""
    location, info = _info(uri, option, storage)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"{option}: {location.uri} is a file; it must be a directory")
    if isinstance(location.fs, pafs.LocalFileSystem):
        parent = Path(location.path)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{option}: {location.uri} cannot be created: {parent} is a file")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, as the Hugging Face libraries read it."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (the libraries read it once,
    at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=str(hub_cache_dir()))
    return isinstance(found, str)


def _how_to_fix(option: str) -> str:
    return (
        f"point {option}.pretrained at a local diffusers directory "
        f"({option}.pretrained=/models/stable-diffusion-v1-5, copied from a machine with "
        "internet, e.g. with `huggingface-cli download`); a single-file .safetensors "
        f"checkpoint goes in {option}.single_file on top of such a directory"
    )


def check_hub_model(
    repo_id: str, option: str = "model.base", timeout_s: float = HUB_TIMEOUT_S
) -> None:
    """A hub id is loadable: cached locally, or the hub answers for it within ``timeout_s``."""
    if _hub_cached(repo_id):
        return
    where = f"not in the local Hugging Face cache ({hub_cache_dir()})"
    if hub_offline():
        raise ConfigError(
            f"{option}.pretrained: {repo_id!r} is a hub id {where} and the hub is offline "
            f"(HF_HUB_OFFLINE=1): {_how_to_fix(option)}"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403, 404):
            raise ConfigError(
                f"{option}.pretrained: the hub at {endpoint} has no model {repo_id!r} "
                f"(HTTP {error.code}; a gated model needs HF_TOKEN); or {_how_to_fix(option)}"
            ) from error
        return  # the hub answers: let the loader deal with anything else
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"{option}.pretrained: {repo_id!r} is a hub id {where} and the hub at {endpoint} "
            f"cannot be reached within {timeout_s:g} s ({reason}): {_how_to_fix(option)}"
        ) from error


def check_base_model(base: BaseModelConfig, option: str = "model.base") -> None:
    """``base`` can be loaded from here: ``builtin:tiny``, a diffusers directory, or a hub id that
    is cached or reachable; its ``single_file`` and LoRA files exist."""
    from animatediff.base_model import BUILTIN_TINY

    source = base.pretrained
    path = Path(source).expanduser()
    if source == BUILTIN_TINY:
        pass
    elif path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ConfigError(
                f"{option}.pretrained: {source} is not a diffusers pipeline directory "
                "(no model_index.json)"
            )
    elif path.is_file():
        raise ConfigError(
            f"{option}.pretrained: {source} is a file; it must be a diffusers pipeline directory "
            f"or a hub id (a single-file checkpoint goes in {option}.single_file)"
        )
    elif HUB_ID.match(source) and not source.startswith((".", "~")):
        check_hub_model(source, option)
    else:
        raise ConfigError(f"{option}.pretrained: {source} does not exist")
    if base.single_file:
        single = Path(base.single_file).expanduser()
        if not single.is_file():
            raise ConfigError(f"{option}.single_file: {base.single_file} does not exist")
        if single.suffix != ".safetensors":
            raise ConfigError(
                f"{option}.single_file: {base.single_file} must be a .safetensors file (pickled "
                ".ckpt files are not loaded: they can run code)"
            )
    for index, lora in enumerate(base.loras):
        if not Path(lora.path).expanduser().is_file():
            raise ConfigError(f"{option}.loras[{index}].path: {lora.path} does not exist")


def train_preflight(cfg: Config) -> None:
    """``jobs.train`` before Ray starts: the base model is loadable, ``train.data_uri`` exists,
    ``train.storage_path`` is not a file. (The training run itself lives in ``trainer/``; its
    start-up checks need only storage and the base, so they live here.)"""
    train = cfg.train
    check_base_model(cfg.model.base)  # first: the paper preset offline fails on this, in seconds
    if not train.data_uri:
        raise ConfigError("train.data_uri: required (the latent shards of jobs.preprocess)")
    check_exists(train.data_uri, "train.data_uri", cfg.storage)
    if train.val_data_uri:
        check_exists(train.val_data_uri, "train.val_data_uri", cfg.storage)
    check_output_dir(train.storage_path, "train.storage_path", cfg.storage)
