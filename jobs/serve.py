"""Deploy the Serve app (FastAPI ingress + multiplexed, batching generator) for a config preset.

On a running cluster (``RAY_ADDRESS`` set, as under ``ray job submit``) it deploys, waits until
``/healthz`` answers and returns: Serve applications outlive the driver. Started on its own it
brings up a local Ray, serves on ``serve.host:serve.port`` (127.0.0.1 by default) and shuts
everything down on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="serve",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.serve --config configs/tiny.yaml                 # local Ray; serves until Ctrl-C
python -m jobs.serve --config configs/tiny.yaml serve.port=8080 serve.auth_token=$TOKEN
ray job submit --working-dir . -- python -m jobs.serve --config configs/sd15_webvid.yaml
""",
    sections=("serve", "sample", "model.base", "mlflow", "storage"),
)


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray import serve

    from serving.deploy import deploy, preflight

    cfg, _ = cli.parse(argv, JOB)
    preflight(cfg)
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    init_ray(cfg)
    url = deploy(cfg)
    print(f"serving {cfg.serve.app_name} at {url}/ (API docs: {url}/docs)", flush=True)
    if on_cluster:
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
