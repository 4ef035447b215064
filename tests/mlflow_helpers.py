"""A real ``mlflow server`` on 127.0.0.1 for the tests that track through one or browse its UI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_helpers import free_port


@contextmanager
def tracking_server(backend_store_uri: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on a free port of 127.0.0.1 over ``backend_store_uri`` (proxying
    artifacts to ``artifacts``); yields its URL once ``/health`` answers, stops it (and its
    children) after."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", str(artifacts), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # MLflow 3 would also start 7 job-runner processes (~250 MB each) that we do not use.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its own process group: teardown stops the server's children too
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a loaded 2-core machine starts it slowly
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def find_or_create_experiment_when_released(tracking_uri: str, start: Any, results: Any) -> None:
    """What a job does first, in a process of its own: wait at ``start`` (a multiprocessing
    ``Barrier``) with MLflow imported, then find or create the experiment ``at-once`` on
    ``tracking_uri``; put its id, or the error, on ``results`` (a multiprocessing queue)."""
    import mlflow  # noqa: F401  (imported before the start, as a job has it by then)

    from animatediff.config import MlflowConfig
    from tracking.runs import experiment_id

    try:
        start.wait()
        results.put(experiment_id(MlflowConfig(experiment="at-once"), tracking_uri))
    except Exception as error:  # the test reports it
        results.put(f"{type(error).__name__}: {error}")
