"""Who ran what code: the tags every MLflow run and model version of the project carries.

    tags = run_tags(cfg, "train", data_fingerprint="fp-0123456789abcdef")

MLflow's own tags (``mlflow.user``, ``mlflow.source.name``/``type``, ``mlflow.source.git.*``),
which its UI shows as the run's user, source and git commit, plus tags to search by: ``job``,
``preset``, ``stage``, ``base_model`` and ``data_fingerprint``. The git tags are present only
when the project's source is a git checkout (not in the container image): then they are left out,
never an error.
"""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from animatediff.config import Config

PROJECT_ROOT = Path(__file__).resolve().parents[1]

USER_TAG = "mlflow.user"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_BRANCH_TAG = "mlflow.source.git.branch"
GIT_DIRTY_TAG = "mlflow.source.git.dirty"
GIT_REPO_TAG = "mlflow.source.git.repoURL"
NOTE_TAG = "mlflow.note.content"
"""The description MLflow's UI shows (and renders as markdown) on runs and experiments."""


@dataclass(frozen=True)
class CodeVersion:
    """The git state of the project's source."""

    commit: str
    branch: str | None
    dirty: bool
    """Uncommitted changes to tracked files."""
    repo_url: str | None

    @property
    def short(self) -> str:
        return self.commit[:12] + (" (with uncommitted changes)" if self.dirty else "")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


@functools.cache
def code_version() -> CodeVersion | None:
    """``git rev-parse HEAD`` (and branch, dirtiness, remote) of the project's source; None when
    it is not a git checkout or git is missing."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return CodeVersion(
        commit=commit,
        branch=None if branch in (None, "HEAD") else branch,
        dirty=bool(status),
        repo_url=_git("remote", "get-url", "origin"),
    )


def user() -> str:
    """The user running the job (``$USER`` or the login name; ``unknown`` when neither is set)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def source_tags(job: str) -> dict[str, str]:
    """MLflow's standard user, source and git tags for a run of ``python -m jobs.<job>``."""
    tags = {
        USER_TAG: user(),
        SOURCE_NAME_TAG: f"jobs.{job}",
        SOURCE_TYPE_TAG: "JOB",
    }
    code = code_version()
    if code is not None:
        tags[GIT_COMMIT_TAG] = code.commit
        tags[GIT_DIRTY_TAG] = str(code.dirty).lower()
        if code.branch:
            tags[GIT_BRANCH_TAG] = code.branch
        if code.repo_url:
            tags[GIT_REPO_TAG] = code.repo_url
    return tags


def run_tags(cfg: Config, job: str, data_fingerprint: str | None = None) -> dict[str, str]:
    """``source_tags`` plus the tags to search runs by: ``job``, ``preset``, ``stage``,
    ``base_model`` and, when known, ``data_fingerprint`` (the shard set's ``fp-<hash>``)."""
    tags = source_tags(job)
    tags |= {"job": job, "stage": cfg.train.stage, "base_model": cfg.model.base.pretrained}
    if cfg.preset:
        tags["preset"] = cfg.preset
    if data_fingerprint:
        tags["data_fingerprint"] = data_fingerprint
    return tags
