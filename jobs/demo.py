"""End to end on one machine (what ``make demo`` runs): clips -> latents -> training -> registry
-> Serve -> one video in ``outputs/``.

    python -m jobs.demo --config configs/tiny.yaml
    python -m jobs.demo --config configs/tiny.yaml --keep          # leave Serve up until Ctrl-C
    python -m jobs.demo --config configs/tiny.yaml train.max_steps=48

Steps: (1) write a small set of captioned clips (moving coloured shapes); (2) start a local Ray;
(3) ``jobs.preprocess`` decodes and VAE-encodes them into latent shards; (4) ``jobs.train`` trains
the motion module with Ray Train + DeepSpeed ZeRO-2 on 2 workers, tracked in MLflow (SQLite) and
registered with alias ``candidate``; (5) ``jobs.promote`` moves ``champion`` if the validation loss
is not worse; (6) ``jobs.serve`` brings the app up on 127.0.0.1 and one request writes the video;
(7) a summary, how to browse, and everything started is stopped.

On the tiny preset the base has random weights: the video shows the path works, not a picture.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, load_config
from jobs.cli import Progress, submitted_results
from jobs.cluster import init_ray, local_cpus

SHAPES = {"square": 0, "disc": 1}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def clip_frames(shape: str, colour: str, motion: str, frames: int, size: int) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8: a ``colour`` ``shape`` moving ``motion`` on grey."""
    dx, dy = MOTIONS[motion]
    radius = size // 6
    ys, xs = np.mgrid[0:size, 0:size]
    video = np.full((frames, size, size, 3), 110, np.uint8)
    for t in range(frames):
        cx = size // 2 + dx * (t * (size // 2 - radius) // max(frames - 1, 1) - size // 4)
        cy = size // 2 + dy * (t * (size // 2 - radius) // max(frames - 1, 1) - size // 4)
        if shape == "square":
            mask = (abs(xs - cx) <= radius) & (abs(ys - cy) <= radius)
        else:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
        video[t][mask] = COLOURS[colour]
    return video


def write_clips(directory: Path, count: int, frames: int = 24, size: int = 64) -> Path:
    """``count`` MP4 clips and ``clips.csv`` (``video,caption``); returns the CSV path."""
    import av

    directory.mkdir(parents=True, exist_ok=True)
    combos = [(s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS]
    rows = []
    for index in range(count):
        shape, colour, motion = combos[index % len(combos)]
        name = f"clip{index:03d}.mp4"
        with av.open(str(directory / name), "w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for frame in clip_frames(shape, colour, motion, frames, size):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows.append((name, f"a {colour} {shape} moving {motion}"))
    table = directory / "clips.csv"
    with open(table, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["video", "caption"])
        writer.writerows(rows)
    return table


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def watch_training(cfg: Config, stop: threading.Event, every_s: float = 10.0) -> None:
    """Print the step and loss of the running training run, read from MLflow (rank 0 logs them)."""
    from tracking.runs import LOSS_METRIC, client, resolve_tracking_uri

    mlflow_client = client(resolve_tracking_uri(cfg.mlflow))
    last = None
    while not stop.wait(every_s):
        try:
            experiment = mlflow_client.get_experiment_by_name(cfg.mlflow.experiment)
            runs = mlflow_client.search_runs(
                [experiment.experiment_id],
                filter_string=f"attributes.run_name = '{cfg.train.run_name}'",
                max_results=1,
            )
            history = mlflow_client.get_metric_history(runs[0].info.run_id, LOSS_METRIC)
        except Exception:  # the run or experiment does not exist yet
            continue
        if history and history[-1].step != last:
            last = history[-1].step
            print(
                f"  training: step {last}/{cfg.train.max_steps}, loss {history[-1].value:.4f}",
                flush=True,
            )


def demo_config(config: str, work: Path, overrides: list[str]) -> Config:
    """The preset with the demo's paths (all under ``work``) and a fresh training run name."""
    run = time.strftime("demo-%Y%m%d-%H%M%S", time.gmtime())
    return load_config(
        config,
        [
            "data.format=csv",
            f"data.input={work / 'clips' / 'clips.csv'}",
            f"data.output={work / 'latents'}",
            f"train.data_uri={work / 'latents'}",
            f"train.storage_path={work / 'ray_results'}",
            f"train.run_name={run}",
            "train.max_steps=24",
            "train.checkpoint_every=12",
            "train.zero_stage=2",
            "train.num_workers=2",
            "data.log_mlflow=true",  # the training run's data leads to its preprocess run
            f"output_dir={work}",
            *overrides,
        ],
    )


def run_demo(cfg: Config, work: Path, keep: bool = False, clips: int = 12) -> dict[str, Any]:
    import ray
    from ray import serve

    from pipelines.preprocess import format_summary, run_preprocess
    from serving.deploy import deploy
    from tracking.registry import promote
    from tracking.runs import resolve_tracking_uri
    from trainer import run_training

    progress = Progress(8)
    summary: dict[str, Any] = {}
    progress(f"writing {clips} captioned clips to {work / 'clips'}")
    table = write_clips(work / "clips", clips, frames=cfg.data.num_frames * cfg.data.stride + 8)
    print(f"  {table} (e.g. '{table.read_text().splitlines()[1].split(',', 1)[1]}')")

    progress(f"starting a local Ray ({local_cpus(cfg)} logical CPUs, dashboard on 127.0.0.1)")
    context = init_ray(cfg, dashboard=True, hide_gpus=True, log_to_driver=False)
    summary["dashboard"] = f"http://{context.dashboard_url}" if context.dashboard_url else None
    print(f"  Ray dashboard: {summary['dashboard']}")
    try:
        progress("preprocessing: decode clips, VAE-encode, write latent shards (Ray Data)")
        pre = run_preprocess(cfg)
        print("  " + format_summary(pre).replace("\n", "\n  "))
        summary["shards"] = pre["output"]

        train = cfg.train
        progress(
            f"training {train.max_steps} steps: Ray Train, DeepSpeed ZeRO-{train.zero_stage}, "
            f"{train.num_workers} workers, MLflow {resolve_tracking_uri(cfg.mlflow)}"
        )
        stop = threading.Event()
        watcher = threading.Thread(target=watch_training, args=(cfg, stop), daemon=True)
        watcher.start()
        try:
            with tempfile.TemporaryDirectory(prefix="animatediff-train-") as exports:
                outcome = run_training(cfg, export_dir=Path(exports))
        finally:
            stop.set()
            watcher.join()
        print(
            f"  step {outcome.step}, val_loss {outcome.val_loss}, MLflow run {outcome.run_id}, "
            f"registered {cfg.mlflow.registered_model} v{outcome.model_version} (@candidate)"
        )
        summary.update(
            run_id=outcome.run_id, version=outcome.model_version, val_loss=outcome.val_loss
        )

        progress(f"promoting v{outcome.model_version} to @{cfg.mlflow.champion_alias}")
        decision, version = promote(cfg, resolve_tracking_uri(cfg.mlflow), outcome.model_version)
        print(f"  {'promoted' if decision.promote else 'not promoted'}: {decision.reason}")
        summary["promoted"] = decision.promote

        port = cfg.serve.port if _port_free(cfg.serve.port) else _free_port()
        serve_cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, port=port))
        progress(f"serving on 127.0.0.1:{port} (Ray Serve, FastAPI) and sending one request")
        url = deploy(serve_cfg)
        body = {"prompt": "a red square moving right", "seed": 7, "model": str(version)}
        request = urllib.request.Request(
            url + "/v1/generate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            content, status, headers = response.read(), response.status, response.headers
        video = work / "demo.gif"
        video.write_bytes(content)
        summary.update(
            url=url, video=str(video), headers={k.lower(): v for k, v in headers.items()}
        )
        print(
            f"  POST /v1/generate -> {status} {headers['content-type']} "
            f"{len(content)} bytes, model v{headers['x-model-version']}, "
            f"seed {headers['x-seed']}, {headers['server-timing']}"
        )
        progress("summary")
        _print_summary(cfg, summary)
        if keep:
            print(f"\nServing {url}/ until Ctrl-C ...", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        progress("stopping Serve and Ray")
        serve.shutdown()
        ray.shutdown()
    return summary


def _print_summary(cfg: Config, summary: dict[str, Any]) -> None:
    from tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow)
    print(f"  latent shards   {summary['shards']}")
    print(f"  MLflow run      {summary['run_id']} (val_loss {summary['val_loss']})")
    print(
        f"  registry        {cfg.mlflow.registered_model} v{summary['version']} "
        f"({'@champion' if summary['promoted'] else '@candidate, not promoted'})"
    )
    print(f"  video           {summary['video']}")
    print("\nBrowse:")
    print(f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"  Ray dashboard   {summary['dashboard']} (while Ray runs: use --keep)")
    print(f"  web page        {summary['url']}/  (docs: {summary['url']}/docs; use --keep)")
    print("  serve again     python -m jobs.serve --config configs/tiny.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML preset")
    parser.add_argument("--keep", action="store_true", help="keep Serve up until Ctrl-C")
    parser.add_argument("--clips", type=int, default=12, help="captioned clips to make")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=48")
    args = parser.parse_args(argv)
    base = submitted_results(load_config(args.config, args.overrides))
    if "://" in base.output_dir:
        raise SystemExit(f"output_dir: the demo writes local files, got {base.output_dir!r}")
    work = (Path(base.output_dir) / "demo").resolve()
    cfg = demo_config(args.config, work, args.overrides)
    start = time.perf_counter()
    run_demo(cfg, work, keep=args.keep, clips=args.clips)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
