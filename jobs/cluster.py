"""Joining or starting Ray, and where a submitted job's results go.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) a job joins that cluster as it is. Otherwise it
starts a local one with enough *logical* CPUs for the job's actors next to Ray Data: on a small
machine two Train workers would otherwise hold every CPU and the shard reads would wait forever.

A submitted job runs in Ray's per-job copy of ``--working-dir`` (``.../working_dir_files/
_ray_pkg_<hash>``), which a code change replaces and a cluster's cleanup deletes. So there the
relative paths of results (``output_dir``, checkpoints, latents, the SQLite MLflow store) resolve
under a persistent home instead, ``$ANIMATEDIFF_HOME`` or ``~/animatediff-ray`` on the node that
runs the job's driver (the head, by default): ``anchor_results``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from animatediff.config import Config
from tracking.runs import SQLITE_PREFIX, configured_tracking_uri, sqlite_database

HOME_ENV = "ANIMATEDIFF_HOME"
"""Environment variable naming the home of submitted jobs' relative results."""
DEFAULT_HOME = "~/animatediff-ray"


def local_cpus(cfg: Config) -> int:
    """Logical CPUs of a local cluster: the machine's, or what the job's actors reserve plus room
    for Ray Data (2) and the Serve ingress (1), whichever is more."""
    train, generate, serve = cfg.train, cfg.generate, cfg.serve
    needed = max(
        train.num_workers * train.cpus_per_worker + 2,
        generate.num_workers * generate.worker_cpus + 2,
        serve.autoscaling.max_replicas * serve.replica_cpus + 1,
    )
    return max(os.cpu_count() or 1, math.ceil(needed))


def init_ray(
    cfg: Config,
    *,
    dashboard: bool = False,
    hide_gpus: bool = False,
    log_to_driver: bool = True,
    num_cpus: int | None = None,
) -> Any:
    """Connect to ``$RAY_ADDRESS`` or start a local cluster of ``num_cpus`` logical CPUs (by
    default ``local_cpus``); returns Ray's context (None when Ray was already initialised in this
    process).

    ``hide_gpus``: workers see no CUDA device (tests and the CPU demo), whatever the machine has.
    The dashboard, when asked for, binds 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        # The job's own runtime env (working dir, env vars) stays as submitted: passing another
        # here would replace it for the job's workers.
        context = ray.init(log_to_driver=log_to_driver)
        warn_if_multi_node_local(cfg, sum(1 for node in ray.nodes() if node["Alive"]))
        return context
    # Passive OpenMP waits: on a busy small machine spinning threads steal the cores of other
    # workers (a VAE step measured 1.97 s spinning vs 0.29 s passive under load).
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    if hide_gpus:
        env_vars["CUDA_VISIBLE_DEVICES"] = ""
    return ray.init(
        address="local",  # never a cluster that `ray start` left running on this machine
        num_cpus=num_cpus or local_cpus(cfg),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
        runtime_env={"env_vars": env_vars},
    )


def submitted_job() -> bool:
    """True in the entrypoint of ``ray job submit`` (Ray hands it the job's config this way)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def results_home() -> Path:
    """``$ANIMATEDIFF_HOME``, else ``~/animatediff-ray``: absolute, created if missing."""
    home = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _is_relative_path(value: str) -> bool:
    return bool(value) and "://" not in value and not Path(value).expanduser().is_absolute()


def anchor_results(cfg: Config, home: Path) -> Config:
    """``cfg`` with every relative path that holds results made absolute under ``home``: what a
    job writes (``output_dir``, ``data.output``, ``train.storage_path``, the MLflow store and
    artifact root) and what one job reads back from another (``train.data_uri``,
    ``train.val_data_uri``, ``evaluate.data_uri``). Files shipped with the project (presets,
    prompts, video tables) stay relative to the working directory, where they are.

    An empty ``mlflow.tracking_uri`` becomes ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<home>/
    mlflow.db``, so that the driver and its workers name the same store."""

    def under_home(value: str | None) -> str | None:
        return str(home / value) if value and _is_relative_path(value) else value

    tracking_uri = configured_tracking_uri(cfg.mlflow)
    database = sqlite_database(tracking_uri)
    if database is not None and _is_relative_path(database):
        tracking_uri = SQLITE_PREFIX + str(home / database)
    replace = dataclasses.replace
    return replace(
        cfg,
        output_dir=under_home(cfg.output_dir),
        data=replace(cfg.data, output=under_home(cfg.data.output)),
        train=replace(
            cfg.train,
            storage_path=under_home(cfg.train.storage_path),
            data_uri=under_home(cfg.train.data_uri),
            val_data_uri=under_home(cfg.train.val_data_uri),
        ),
        evaluate=replace(cfg.evaluate, data_uri=under_home(cfg.evaluate.data_uri)),
        mlflow=replace(
            cfg.mlflow,
            tracking_uri=tracking_uri,
            artifact_location=under_home(cfg.mlflow.artifact_location),
        ),
    )


def node_local_results(cfg: Config) -> list[str]:
    """The result options of ``cfg`` that name this node's disk (no ``s3://``, no server)."""
    found = [
        option
        for option, value in (
            ("output_dir", cfg.output_dir),
            ("data.output", cfg.data.output),
            ("train.storage_path", cfg.train.storage_path),
        )
        if value and ("://" not in value or value.startswith("file://"))
    ]
    tracking_uri = configured_tracking_uri(cfg.mlflow)
    if tracking_uri.startswith((SQLITE_PREFIX, "file:")) or "://" not in tracking_uri:
        found.append("mlflow.tracking_uri")
    return found


def warn_if_multi_node_local(cfg: Config, num_nodes: int) -> None:
    """One warning line when a cluster of several nodes writes results to one node's disk: the
    other nodes' workers would not see them (``infra/README.md``, shared storage)."""
    local = node_local_results(cfg)
    if num_nodes > 1 and local:
        print(
            f"warning: the cluster has {num_nodes} nodes but {', '.join(local)} name a local "
            "disk; use s3:// (or a shared NFS mount) for data and checkpoints and an MLflow "
            "server (http://...) for tracking: see infra/README.md",
            flush=True,
        )
