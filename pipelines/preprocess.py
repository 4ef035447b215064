"""The preprocessing run: input table -> plan -> decode -> VAE encode -> committed shards.

One streaming Ray Data pipeline; the driver only iterates finished latent batches (one shard at a
time) and commits them, so memory does not grow with the number of clips (except the driver's set
of this run's clip ids, ~70 bytes per clip, which drops videos listed twice in the input)::

    read table -> plan_batch -> blocks of data.decode_rows_per_task -> decode_batch (CPU tasks)
      -> EncodeClips (actor pool, a GPU each when present) -> ShardWriter (driver)
"""

from __future__ import annotations

import functools
import posixpath
import time
import uuid
import warnings
from typing import TYPE_CHECKING

import numpy as np

from animatediff.config import Config, ConfigError
from animatediff.storage import Location, locate, write_atomic
from pipelines.decode import DecodeSpec, decode_batch
from pipelines.encode import EncodeClips
from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name, fingerprint_hash
from pipelines.shards import ShardStore, ShardWriter
from pipelines.sources import Columns, PlanSpec, check_input_columns, plan_batch, read_input

if TYPE_CHECKING:
    import ray.data


def output_uri(cfg: Config) -> str:
    return cfg.data.output or posixpath.join(cfg.output_dir, "latents")


def build_decode_pipeline(
    cfg: Config,
    plan: PlanSpec,
    decode: DecodeSpec,
    cached: np.ndarray,
    input_location: Location,
    columns: Columns,
) -> ray.data.Dataset:
    """The lazy Ray Dataset of decoded clip rows: read -> plan -> decode (CPU tasks)."""
    data = cfg.data
    ds = read_input(data, input_location, columns)
    ds = ds.map_batches(
        plan_batch, fn_kwargs={"spec": plan, "cached": cached}, batch_format="numpy", num_cpus=0.25
    )
    # Small blocks: decoding is the expensive CPU step and a block is one task's work.
    ds = ds.repartition(target_num_rows_per_block=data.decode_rows_per_task)
    with warnings.catch_warnings():
        # Deprecated for Ray 2.64; it is the one switch that keeps Ray Data from fusing decoding
        # into the encode actors (decoding must scale over all CPUs, not over the encoders).
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            decode_batch,
            fn_kwargs={"spec": decode},
            batch_size=None,
            batch_format="numpy",
            ray_remote_args_fn=functools.partial(dict, num_cpus=data.decode_num_cpus),
        )


def build_pipeline(
    cfg: Config,
    plan: PlanSpec,
    decode: DecodeSpec,
    cached: np.ndarray,
    input_location: Location,
    columns: Columns,
) -> ray.data.Dataset:
    """The lazy Ray Dataset of latent batches (nothing runs until it is iterated)."""
    import ray
    import ray.data

    data = cfg.data
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    ds = build_decode_pipeline(cfg, plan, decode, cached, input_location, columns)
    return ds.map_batches(
        EncodeClips,
        fn_constructor_kwargs={
            "base": cfg.model.base,
            "fingerprint_hash": plan.fingerprint_hash,
            "seed": data.seed,
            "dtype": data.encode_dtype,
            "cache_text_embeddings": data.cache_text_embeddings,
            "num_threads": max(1, int(data.encode_num_cpus)),
        },
        compute=ray.data.ActorPoolStrategy(size=data.num_encode_actors),
        batch_size=data.encode_batch_size,
        batch_format="numpy",
        num_cpus=0 if use_gpu else data.encode_num_cpus,
        num_gpus=1 if use_gpu else 0,
    )


def run_preprocess(cfg: Config, run_id: str | None = None) -> dict:
    """Preprocess ``cfg.data.input`` into shards under ``cfg.data.output``; returns the summary
    (also written to ``runs/<run_id>/summary.json``). Needs a running Ray (``ray.init``)."""
    data = cfg.data
    if not data.input:
        raise ConfigError("data.input: required (a WebVid CSV or a CSV/JSONL/Parquet manifest)")
    started = time.perf_counter()
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    input_location = locate(data.input, cfg.storage)
    root = locate(data.video_root or posixpath.dirname(input_location.uri), cfg.storage)
    columns = check_input_columns(data, input_location)

    fingerprint = data_fingerprint(cfg)  # hashes the VAE (and text encoder) once, on the driver
    fp_hash = fingerprint_hash(fingerprint)
    output = locate(output_uri(cfg), cfg.storage)
    provenance = {"base": cfg.model.base.pretrained, "single_file": cfg.model.base.single_file}
    store = ShardStore(output.join(fingerprint_dir_name(fingerprint)), fingerprint, provenance)
    cached = store.open()
    writer = ShardWriter(store, run_id, flush_every=data.manifest_flush_shards)

    plan = PlanSpec(
        fmt=data.format,
        layout=data.layout,
        video_ext=data.video_ext,
        columns=columns,
        root=root,
        fingerprint_hash=fp_hash,
        seed=data.seed,
        clips_per_video=data.clips_per_video,
        flip=data.flip,
    )
    decode = DecodeSpec(
        num_frames=data.num_frames,
        stride=data.stride,
        resolution=data.resolution,
        seed=data.seed,
        clips_per_video=data.clips_per_video,
        threads=data.decode_threads,
        root=root,
        outcomes=writer.outcome_dir,
        camera_motion=data.camera_motion,
        camera_strength=data.camera_strength,
    )
    ds = build_pipeline(cfg, plan, decode, cached, input_location, columns)
    for batch in ds.iter_batches(
        batch_size=data.shard_size, batch_format="numpy", prefetch_batches=1
    ):
        writer.write(batch)
    counts = writer.finish()
    elapsed = time.perf_counter() - started
    summary = {
        "run_id": run_id,
        "fingerprint_hash": fp_hash,
        "output": store.directory.uri,
        **counts,
        "cache_size_clips": store.manifest["num_clips"],
        "elapsed_s": round(elapsed, 3),
        "clips_per_s": round(counts["clips_encoded"] / elapsed, 3) if elapsed > 0 else 0.0,
    }
    store.manifest["runs"].append(summary)
    store.write_manifest()
    write_atomic(writer.run_dir.join("summary.json"), _json(summary))
    if data.log_mlflow:
        from tracking.preprocess import log_preprocess_run

        summary["mlflow_run_id"] = log_preprocess_run(cfg, summary, fingerprint)
    return summary


def _json(value: dict) -> bytes:
    import json

    return json.dumps(value, indent=1, sort_keys=True).encode()


def format_summary(summary: dict) -> str:
    """The end-of-run table."""
    lines = [
        f"run {summary['run_id']}  ->  {summary['output']}",
        f"  rows read        {summary['rows_read']:>10}",
        f"  rows encoded     {summary['rows_encoded']:>10}",
        f"  rows cached      {summary['rows_cached']:>10}",
        f"  rows failed      {summary['rows_failed']:>10}",
    ]
    lines += [f"    {reason:<15}{n:>10}" for reason, n in summary["failed_by_reason"].items()]
    lines += [
        f"  clips encoded    {summary['clips_encoded']:>10}",
        f"  clips cached     {summary['clips_cached']:>10}",
        f"  shards written   {summary['shards_written']:>10}",
        f"  clips in cache   {summary['cache_size_clips']:>10}",
        f"  elapsed          {summary['elapsed_s']:>10.1f} s ({summary['clips_per_s']:.2f} clips/s)",
    ]
    return "\n".join(lines)
