"""Deploy the Serve app (FastAPI ingress + multiplexed, batching generator) for a config preset.

    python -m jobs.serve --config configs/tiny.yaml                 # local Ray; serves until Ctrl-C
    ray job submit --working-dir . -- python -m jobs.serve --config configs/sd15_webvid.yaml

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
import urllib.request

from animatediff.config import Config, parse_cli


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")
        time.sleep(0.5)


def deploy(cfg: Config) -> str:
    """Start Serve's proxy on ``serve.host:serve.port`` and deploy the app; return its base URL."""
    from ray import serve

    from animatediff.serving import build_app

    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(cfg), name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    url = f"http://{host}:{s.port}{s.route_prefix.rstrip('/')}"
    wait_healthy(url + "/healthz")
    return url


def main(argv: list[str] | None = None) -> int:
    import ray

    cfg, _ = parse_cli(argv, description=__doc__.splitlines()[0])
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
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
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
