"""Joining or starting Ray: the one place every job (and the test session) does it.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) a job joins that cluster as it is. Otherwise it
starts a local one with enough *logical* CPUs for the job's actors next to Ray Data: on a small
machine two Train workers would otherwise hold every CPU and the shard reads would wait forever.
"""

from __future__ import annotations

import math
import os
from typing import Any

from animatediff.config import Config


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
) -> Any:
    """Connect to ``$RAY_ADDRESS`` or start a local cluster sized by ``local_cpus``; returns
    Ray's context (None when Ray was already initialised in this process).

    ``hide_gpus``: workers see no CUDA device (tests and the CPU demo), whatever the machine has.
    The dashboard, when asked for, binds 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        # The job's own runtime env (working dir, env vars) stays as submitted: passing another
        # here would replace it for the job's workers.
        return ray.init(log_to_driver=log_to_driver)
    # Passive OpenMP waits: on a busy small machine spinning threads steal the cores of other
    # workers (a VAE step measured 1.97 s spinning vs 0.29 s passive under load).
    env_vars = {"TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    if hide_gpus:
        env_vars["CUDA_VISIBLE_DEVICES"] = ""
    return ray.init(
        address="local",  # never a cluster that `ray start` left running on this machine
        num_cpus=local_cpus(cfg),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
        runtime_env={"env_vars": env_vars},
    )
