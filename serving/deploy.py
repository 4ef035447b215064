"""Starting the Serve app on a Ray cluster and waiting until it answers."""

from __future__ import annotations

import time
import urllib.request

from animatediff.config import Config


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


def preflight(cfg: Config) -> None:
    """``jobs.serve`` before Ray starts: the default base and every ``serve.bases`` entry can be
    loaded from here (``ConfigError`` naming the option otherwise)."""
    from animatediff.preflight import check_base_model

    check_base_model(cfg.model.base)
    for name, base in cfg.serve.bases.items():
        check_base_model(base, f"serve.bases.{name}")


def deploy(cfg: Config) -> str:
    """Start Serve's proxy on ``serve.host:serve.port`` and deploy the app; return its base URL."""
    from ray import serve

    from serving.app import build_app

    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(cfg), name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    url = f"http://{host}:{s.port}{s.route_prefix.rstrip('/')}"
    wait_healthy(url + "/healthz")
    return url
