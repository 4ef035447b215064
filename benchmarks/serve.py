"""Serving benchmarks on the tiny preset, printing measured figures.

    python benchmarks/serve.py                       # defaults below
    python benchmarks/serve.py --requests 30 --frames 8 --steps 4

1. Overhead: p50/p95 latency of POST /v1/generate over HTTP (client-side, sequential) against a
   direct in-process call of the same pipeline on the same motion module doing the same work
   (denoise + encode the GIF). Target: p50 ratio <= 1.10.
2. Burst above capacity: 4x (max_ongoing + max_queued) concurrent requests; every one must be
   answered 200 or 503; replica and proxy memory (RSS) sampled before, during and after.
3. Throughput with `@serve.batch` (serve.max_batch_size=4) vs without (=1): the same requests,
   kept `max_ongoing_requests` in flight so that none is refused.

The motion module is an untrained (identity-initialised) one registered in a temporary SQLite
MLflow: its compute is exactly that of a trained module of the same config.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from jobs.cluster import init_ray

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def register_untrained(cfg, work: Path) -> str:
    from animatediff.base_model import load_base_model
    from animatediff.checkpoints import save_motion_modules
    from animatediff.motion_module import MotionModules
    from tracking.registry import register_motion_module
    from tracking.runs import client, experiment_id, resolve_tracking_uri

    unet_config = load_base_model(cfg.model.base).unet.config
    modules = MotionModules(
        tuple(unet_config.block_out_channels), unet_config.layers_per_block, cfg.model.motion
    )
    directory = work / "motion_module"
    save_motion_modules(modules, cfg.model.motion, directory)
    uri = resolve_tracking_uri(cfg.mlflow)
    run = client(uri).create_run(experiment_id(cfg.mlflow, uri), run_name="bench")
    version = register_motion_module(cfg, directory, run.info.run_id, uri)
    client(uri).set_registered_model_alias(cfg.mlflow.registered_model, "champion", version)
    return version


def serve_rss_mb() -> float:
    """Resident memory of Serve's replicas and proxy (the processes a burst could grow)."""
    total = 0
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ServeReplica" in cmdline or "ProxyActor" in cmdline:
            total += process.info["memory_info"].rss
    return total / 2**20


def direct_pipeline(cfg, version: str):
    """The same registered motion module, loaded in this process the way a replica loads it."""
    import dataclasses

    import torch

    from animatediff.sampling import TextToVideo
    from tracking.registry import load_registered_motion_module
    from tracking.runs import resolve_tracking_uri

    uri = f"models:/{cfg.mlflow.registered_model}/{version}"
    modules, motion_cfg, _ = load_registered_motion_module(uri, resolve_tracking_uri(cfg.mlflow))
    run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, motion=motion_cfg))
    # The replica's CPU share: Ray runs a 1-CPU replica with one intra-op thread.
    torch.set_num_threads(max(1, int(cfg.serve.replica_cpus)))
    return TextToVideo(run_cfg, modules)


def latencies(url: str, pipeline, body: dict, fps: int, n: int) -> dict[str, list[float]]:
    """Seconds per call, HTTP and direct interleaved so both see the same machine load:
    ``http``, ``direct`` (pipeline + GIF encode, the replica's work) and ``pipeline`` only."""
    from animatediff.export import export_video

    kwargs = {k: body[k] for k in ("num_frames", "num_inference_steps", "height", "width")}
    times: dict[str, list[float]] = {"http": [], "direct": [], "pipeline": []}
    with httpx.Client(base_url=url, timeout=300) as client:
        assert client.post("/v1/generate", json=body).status_code == 200  # model load
        pipeline.generate([body["prompt"]], [""], [body["seed"]], **kwargs)  # warm-up
        for _ in range(n):
            start = time.perf_counter()
            response = client.post("/v1/generate", json=body)
            times["http"].append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
            start = time.perf_counter()
            video = pipeline.generate([body["prompt"]], [""], [body["seed"]], **kwargs)[0]
            middle = time.perf_counter()
            export_video(video, "gif", fps)
            times["pipeline"].append(middle - start)
            times["direct"].append(time.perf_counter() - start)
    return times


async def _burst(url: str, bodies: list[dict]) -> tuple[list[int], float]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
        return [r.status_code for r in responses], time.perf_counter() - start


async def _throughput(url: str, bodies: list[dict], in_flight: int) -> tuple[float, list[int]]:
    limit = asyncio.Semaphore(in_flight)
    sizes: list[int] = []

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        async with limit:
            response = await client.post("/v1/generate", json=body)
            assert response.status_code == 200, response.text
            sizes.append(int(response.headers["x-batch-size"]))

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await client.post("/v1/generate", json=bodies[0])  # warm
        start = time.perf_counter()
        await asyncio.gather(*(one(client, b) for b in bodies))
        return len(bodies) / (time.perf_counter() - start), sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="sequential latency samples")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--throughput-requests", type=int, default=16)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from animatediff.config import load_config
    from serving.deploy import deploy

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base_overrides = [
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
        f"mlflow.artifact_location={work}/artifacts",
        f"serve.port={free_port()}",
    ]
    cfg = load_config(ROOT / "configs/tiny.yaml", base_overrides)
    version = register_untrained(cfg, work)
    init_ray(cfg, log_to_driver=False)
    body = {
        "prompt": "a red panda eating bamboo",
        "seed": 1,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
        "height": args.size,
        "width": args.size,
    }
    try:
        url = deploy(cfg)
        print(
            f"# tiny preset, {args.frames} frames x {args.size}px, {args.steps} steps, GIF; "
            f"{psutil.cpu_count()} CPUs; max_batch_size={cfg.serve.max_batch_size}, "
            f"batch_wait_timeout_s={cfg.serve.batch_wait_timeout_s}"
        )
        times = latencies(url, direct_pipeline(cfg, version), body, cfg.sample.fps, args.requests)
        p50 = {k: percentile(v, 50) for k, v in times.items()}
        p95 = {k: percentile(v, 95) for k, v in times.items()}
        print(f"\n## Latency, sequential, interleaved, n={args.requests} (seconds)")
        print(f"{'':28s}{'p50':>8s}{'p95':>8s}{'mean':>8s}")
        names = {
            "http": "HTTP /v1/generate",
            "direct": "direct: pipeline + GIF",
            "pipeline": "direct: pipeline only",
        }
        for key, name in names.items():
            values = times[key]
            print(
                f"{name:28s}{percentile(values, 50):8.3f}{percentile(values, 95):8.3f}"
                f"{statistics.mean(values):8.3f}"
            )
        print(
            f"ratio HTTP / direct (same work)   p50 {p50['http'] / p50['direct']:.3f}   "
            f"p95 {p95['http'] / p95['direct']:.3f}   (target p50 <= 1.10)"
        )
        print(
            f"ratio HTTP / pipeline only        p50 {p50['http'] / p50['pipeline']:.3f}   "
            f"p95 {p95['http'] / p95['pipeline']:.3f}"
        )

        s = cfg.serve
        capacity = s.max_ongoing_requests + s.max_queued_requests
        burst = [{**body, "seed": i, "prompt": f"burst {i}"} for i in range(4 * capacity)]
        samples: list[float] = []
        stop = threading.Event()

        def sample_memory() -> None:
            while not stop.is_set():
                samples.append(serve_rss_mb())
                time.sleep(0.2)

        print(
            f"\n## Burst of {len(burst)} concurrent requests (capacity "
            f"{s.max_ongoing_requests} ongoing + {s.max_queued_requests} queued per replica)"
        )
        for attempt in (1, 2, 3, 4):
            before = serve_rss_mb()
            sampler = threading.Thread(target=sample_memory)
            sampler.start()
            codes, seconds = asyncio.run(_burst(url, burst))
            stop.set()
            sampler.join()
            stop.clear()
            time.sleep(1)
            after = serve_rss_mb()
            other = sorted(set(codes) - {200, 503})
            print(
                f"burst {attempt}: {codes.count(200)} x 200, {codes.count(503)} x 503, "
                f"other {other or 'none'}; all answered in {seconds:.1f}s; Serve RSS "
                f"{before:.0f} MB before, peak {max(samples or [before]):.0f} MB, "
                f"{after:.0f} MB after"
            )
            samples.clear()

        print(
            f"\n## Throughput, {args.throughput_requests} requests, "
            f"{s.max_ongoing_requests} in flight"
        )
        bodies = [{**body, "seed": i, "prompt": f"tp {i}"} for i in range(args.throughput_requests)]
        results = {}
        for batch_size in (s.max_batch_size, 1):
            serve.delete(s.app_name)
            serve.shutdown()
            port = free_port()
            run_cfg = load_config(
                ROOT / "configs/tiny.yaml",
                [*base_overrides[:2], f"serve.port={port}", f"serve.max_batch_size={batch_size}"],
            )
            url = deploy(run_cfg)
            rate, sizes = asyncio.run(_throughput(url, bodies, s.max_ongoing_requests))
            results[batch_size] = rate
            print(
                f"max_batch_size={batch_size}: {rate:.2f} videos/s "
                f"(batch sizes seen: {sorted(set(sizes))})"
            )
        print(f"batched / unbatched throughput: {results[s.max_batch_size] / results[1]:.2f}x")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
