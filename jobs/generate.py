"""Offline batch generation: a prompts file -> one video per prompt and an index, via Ray Data.

    python -m jobs.generate --config configs/tiny.yaml generate.prompts=configs/prompts.txt
    ray job submit --working-dir . -- python -m jobs.generate --config configs/sd15_webvid.yaml

The prompts file is plain text (one prompt per line, ``#`` comments) or JSON lines
(``{"prompt": ..., "seed": 3, "num_frames": 16, ...}``). The model (``generate.model``: alias,
version, ``models:/`` URI or a native motion-module directory) is resolved once on the driver, so
every actor of the pool loads the same version even if an alias moves mid-run. Prompts with the
same sampling settings are denoised together. Output: ``<output_dir>/<output_subdir>/`` with
``00000.gif``... and ``index.jsonl`` (one line per video: prompt, seed, settings, file, model).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, from_dict, parse_cli, to_dict

ROW_KEYS = ("negative_prompt", "seed", "num_frames", "num_inference_steps", "guidance_scale")


def read_prompts(text: str, cfg: Config) -> list[dict[str, Any]]:
    """Rows with every sampling setting filled in; a bad line raises naming its line number."""
    sample = cfg.sample
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"prompts line {number}: invalid JSON ({error})") from error
            unknown = sorted(set(item) - {"prompt", *ROW_KEYS})
            if unknown:
                raise ValueError(f"prompts line {number}: unknown keys {unknown}")
        else:
            item = {"prompt": line}
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ValueError(f"prompts line {number}: needs a non-empty 'prompt'")
        index = len(rows)
        rows.append(
            {
                "index": index,
                "prompt": item["prompt"],
                "negative_prompt": str(item.get("negative_prompt", sample.negative_prompt)),
                # Distinct, reproducible seeds per line unless the file says otherwise.
                "seed": int(item.get("seed", sample.seed + index)),
                "num_frames": int(item.get("num_frames", sample.num_frames)),
                "num_inference_steps": int(
                    item.get("num_inference_steps", sample.num_inference_steps)
                ),
                "guidance_scale": float(item.get("guidance_scale", sample.guidance_scale)),
            }
        )
    if not rows:
        raise ValueError("prompts: the file holds no prompt")
    return rows


def resolve_model(cfg: Config) -> dict[str, str]:
    """What ``generate.model`` points at, pinned: ``{"kind": "dir"|"registry", "uri", "version"}``."""
    from animatediff.model_refs import read_snapshot, resolve_model_ref
    from animatediff.tracking import resolve_tracking_uri

    ref = cfg.generate.model
    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    if Path(ref).expanduser().is_dir():
        path = str(Path(ref).expanduser().resolve())
        return {"kind": "dir", "uri": path, "version": "local", "tracking_uri": tracking_uri}
    name = cfg.serve.model_name or cfg.mlflow.registered_model
    if ref.startswith("models:/"):  # models:/<name>/<version> or models:/<name>@<alias>
        rest = ref.removeprefix("models:/")
        name, _, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    version = resolve_model_ref(ref, read_snapshot(tracking_uri, name), cfg.serve.model_alias)
    uri = f"models:/{name}/{version}"
    return {"kind": "registry", "uri": uri, "version": version, "tracking_uri": tracking_uri}


class VideoWriter:
    """A Ray Data actor: loads the pipeline once, then generates and writes batches of rows."""

    def __init__(self, config: dict[str, Any], model: dict[str, str], out_dir: str) -> None:
        import dataclasses

        from animatediff.sampling import TextToVideo
        from pipelines.storage import locate

        cfg = from_dict(Config, config)
        if model["kind"] == "dir":
            from animatediff.checkpoints import load_motion_modules

            modules, motion_cfg = load_motion_modules(model["uri"])
        else:
            from animatediff.registry import load_registered_motion_module

            modules, motion_cfg, _ = load_registered_motion_module(
                model["uri"], model["tracking_uri"]
            )
        self.cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, motion=motion_cfg))
        self.pipeline = TextToVideo(self.cfg, modules)
        self.model = model
        self.root = locate(out_dir, cfg.data)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from animatediff.export import export_video
        from pipelines.storage import write_atomic

        fmt, fps = self.cfg.generate.output_format, self.cfg.sample.fps
        rows = [{key: batch[key][i] for key in batch} for i in range(len(batch["index"]))]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            key = (
                int(row["num_frames"]),
                int(row["num_inference_steps"]),
                float(row["guidance_scale"]),
            )
            groups.setdefault(key, []).append(row)
        out: list[dict[str, Any]] = []
        for (frames, steps, guidance), group in groups.items():
            start = time.perf_counter()
            videos = self.pipeline.generate(
                [str(r["prompt"]) for r in group],
                [str(r["negative_prompt"]) for r in group],
                [int(r["seed"]) for r in group],
                num_frames=frames,
                num_inference_steps=steps,
                guidance_scale=guidance,
            )
            seconds = (time.perf_counter() - start) / len(group)
            for row, video in zip(group, videos):
                name = f"{int(row['index']):05d}.{fmt}"
                write_atomic(self.root.join(name), export_video(video, fmt, fps))
                out.append(
                    {
                        "index": int(row["index"]),
                        "file": name,
                        "uri": self.root.join(name).uri,
                        "frames": int(video.shape[0]),
                        "height": int(video.shape[1]),
                        "width": int(video.shape[2]),
                        "seconds": seconds,
                    }
                )
        return {key: np.array([item[key] for item in out]) for key in out[0]}


def run_generate(cfg: Config) -> dict[str, Any]:
    """Generate every prompt of ``cfg.generate.prompts``; return a summary (index path, count)."""
    import ray

    from pipelines.storage import locate, write_atomic

    rows = read_prompts(Path(cfg.generate.prompts).read_text(), cfg)
    model = resolve_model(cfg)
    out_dir = f"{cfg.output_dir.rstrip('/')}/{cfg.generate.output_subdir}"
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")  # set under `ray job submit`
    gen = cfg.generate
    start = time.perf_counter()
    dataset = ray.data.from_items(rows).map_batches(
        VideoWriter,
        fn_constructor_kwargs={"config": to_dict(cfg), "model": model, "out_dir": out_dir},
        batch_size=gen.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=gen.num_workers),
        num_cpus=gen.worker_cpus,
        num_gpus=gen.worker_gpus,
    )
    written = {int(r["index"]): r for r in dataset.take_all()}
    seconds = time.perf_counter() - start
    missing = sorted(set(range(len(rows))) - set(written))
    if missing:
        raise RuntimeError(f"generation lost prompts {missing}")
    lines = []
    for row in rows:
        result = written[row["index"]]
        entry = {**row, "file": str(result["file"]), "uri": str(result["uri"])}
        entry.update(
            frames=int(result["frames"]),
            height=int(result["height"]),
            width=int(result["width"]),
            seconds=round(float(result["seconds"]), 3),
            model_uri=model["uri"],
            model_version=model["version"],
            format=gen.output_format,
        )
        lines.append(json.dumps(entry))
    index = locate(out_dir, cfg.data).join("index.jsonl")
    write_atomic(index, ("\n".join(lines) + "\n").encode())
    return {"index": index.uri, "videos": len(rows), "seconds": seconds, "model": model}


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_cli(argv, description=__doc__.splitlines()[0])
    summary = run_generate(cfg)
    print(
        f"generated {summary['videos']} videos in {summary['seconds']:.1f}s with "
        f"{summary['model']['uri']} -> {summary['index']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
