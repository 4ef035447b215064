"""Offline batch generation as a Ray Data stage: prompt rows in, written videos out.

    rows = read_prompts(text, cfg)                       # every setting resolved, seeds included
    source = resolve_motion_source(cfg.generate.model, cfg)   # pinned once on the driver
    loras = [resolve_motion_lora(r.name, cfg, r.scale) for r in cfg.generate.motion_loras]
    summary = run_generate(cfg)                          # needs a running Ray

``VideoWriter`` is a Ray Data actor: it loads the pipeline once (``generate.motion_loras`` merged
into the motion module), then generates each batch of rows (requests with the same sampling
settings denoised together) and writes the videos. Output: ``<output_dir>/<output_subdir>/`` with
``00000.gif``... and ``index.jsonl`` (one line per video: prompt, seed, settings, file, model,
MotionLoRAs).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from animatediff.config import Config, from_dict, to_dict
from animatediff.generation import GenerationParams, generate_all
from animatediff.storage import locate, read_bytes, write_atomic
from tracking.registry import (
    MotionLoraSource,
    MotionSource,
    apply_motion_loras,
    load_motion,
    resolve_motion_lora,
    resolve_motion_source,
)

ROW_KEYS = (
    "negative_prompt",
    "seed",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
)
"""Settings a JSON line of the prompts file may set (the others come from ``sample:``)."""


def read_prompts(text: str, cfg: Config, extra_keys: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows (``index`` + ``GenerationParams`` fields) with every setting resolved; a line without
    a seed gets ``sample.seed + index``. ``extra_keys`` may also appear in JSON lines and are
    passed through (``expect`` for evaluation). A bad line raises naming its line number."""
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
            unknown = sorted(set(item) - {"prompt", *ROW_KEYS, *extra_keys})
            if unknown:
                raise ValueError(f"prompts line {number}: unknown keys {unknown}")
        else:
            item = {"prompt": line}
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ValueError(f"prompts line {number}: needs a non-empty 'prompt'")
        index = len(rows)
        extras = {key: item.pop(key) for key in extra_keys if key in item}
        params = GenerationParams.resolve(
            item,
            cfg.sample,
            default_seed=cfg.sample.seed + index,
            output_format=cfg.generate.output_format,
        )
        row = {"index": index, **params.to_dict(), **extras}
        del row["model"], row["base"], row["motion_loras"]  # one model for the whole run
        rows.append(row)
    if not rows:
        raise ValueError("prompts: the file holds no prompt")
    return rows


class VideoWriter:
    """A Ray Data actor: loads the pipeline once, then generates and writes batches of rows."""

    def __init__(
        self,
        config: dict[str, Any],
        source: MotionSource,
        out_dir: str,
        loras: tuple[MotionLoraSource, ...] = (),
    ) -> None:
        from animatediff.sampling import TextToVideo

        cfg = from_dict(Config, config)
        modules, self.cfg = load_motion(source, cfg)
        modules = apply_motion_loras(modules, list(loras))
        self.pipeline = TextToVideo(self.cfg, modules)
        self.root = locate(out_dir, cfg.storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from animatediff.export import export_video

        count = len(batch["index"])
        # numpy scalars (np.int64, np.str_) back to Python values for the dataclass.
        rows = [{key: np.asarray(batch[key][i]).item() for key in batch} for i in range(count)]
        requests = [
            GenerationParams(**{k: v for k, v in row.items() if k != "index"}) for row in rows
        ]
        out: list[dict[str, Any]] = []
        for row, params, result in zip(rows, requests, generate_all(self.pipeline, requests)):
            name = f"{row['index']:05d}.{params.output_format}"
            write_atomic(
                self.root.join(name), export_video(result.video, params.output_format, params.fps)
            )
            frames, height, width = result.video.shape[:3]
            out.append(
                {
                    "index": row["index"],
                    "file": name,
                    "uri": self.root.join(name).uri,
                    "frames": frames,
                    "height": height,
                    "width": width,
                    "seconds": result.seconds / result.batch_size,
                }
            )
        return {key: np.array([item[key] for item in out]) for key in out[0]}


def preflight(cfg: Config) -> None:
    """``jobs.generate`` before Ray starts: the prompts file exists and parses, ``output_dir`` is
    not a file, the base model can be loaded (``ConfigError`` naming the option otherwise)."""
    from animatediff.config import ConfigError
    from animatediff.preflight import check_base_model, check_input_file, check_output_dir

    gen = cfg.generate
    check_input_file(gen.prompts, "generate.prompts", cfg.storage)
    try:
        read_prompts(read_bytes(locate(gen.prompts, cfg.storage)).decode("utf-8"), cfg)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"generate.prompts: {gen.prompts}: {error}") from error
    check_output_dir(cfg.output_dir, "output_dir", cfg.storage)
    check_base_model(cfg.model.base)


def run_generate(cfg: Config) -> dict[str, Any]:
    """Generate every prompt of ``cfg.generate.prompts``; return a summary (index path, count).
    Needs a running Ray."""
    import ray

    gen = cfg.generate
    rows = read_prompts(read_bytes(locate(gen.prompts, cfg.storage)).decode("utf-8"), cfg)
    source = resolve_motion_source(gen.model, cfg)
    loras = tuple(resolve_motion_lora(ref.name, cfg, ref.scale) for ref in gen.motion_loras)
    out_dir = f"{cfg.output_dir.rstrip('/')}/{gen.output_subdir}"
    start = time.perf_counter()
    dataset = ray.data.from_items(rows).map_batches(
        VideoWriter,
        fn_constructor_kwargs={
            "config": to_dict(cfg),
            "source": source,
            "out_dir": out_dir,
            "loras": loras,
        },
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
            model_uri=source.uri,
            model_version=source.version,
            motion_loras=[{"uri": lora.uri, "label": lora.label()} for lora in loras],
            format=row["output_format"],
        )
        lines.append(json.dumps(entry))
    index = locate(out_dir, cfg.storage).join("index.jsonl")
    write_atomic(index, ("\n".join(lines) + "\n").encode())
    return {"index": index.uri, "videos": len(rows), "seconds": seconds, "source": source}
