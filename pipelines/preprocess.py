"""The preprocessing run: input table -> plan -> decode -> VAE encode -> committed shards.

One streaming Ray Data pipeline; the driver only iterates finished latent batches (one shard at a
time) and commits them, so memory does not grow with the number of clips (except the driver's set
of this run's clip ids, ~70 bytes per clip, which drops videos listed twice in the input)::

    read table -> plan_batch -> blocks of data.decode_rows_per_task -> decode_batch (CPU tasks)
      -> EncodeClips (actor pool, a GPU each when present) -> ShardWriter (driver)

Clips reach the shards in input order (``data.preserve_order``), so two runs write the same shards.

``preflight`` checks the options before Ray starts (``jobs.preprocess`` calls it first). The run's
summary has a ``status``: ``ok``, or ``failed`` with a ``failure`` message when no row was
encoded or cached, or more than ``data.max_error_fraction`` of the rows failed (what was encoded
is committed either way; the job then exits with status 1). An interrupted run (exception,
Ctrl-C, SIGTERM) lists the shards it committed, merges its outcome records and records itself
as ``interrupted`` before the error goes on.
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
from animatediff.preflight import check_base_model, check_output_dir, check_root
from animatediff.storage import Location, locate
from pipelines.curation import CURATION_PARTS, CurationSpec, merge_curation
from pipelines.decode import DecodeSpec, decode_batch
from pipelines.encode import EncodeClips
from pipelines.fingerprint import data_fingerprint, fingerprint_dir_name, fingerprint_hash
from pipelines.shards import ShardStore, ShardWriter, merge_outcomes
from pipelines.sources import (
    Columns,
    PlanSpec,
    check_input,
    check_input_columns,
    default_video_root,
    plan_batch,
    read_input,
)

if TYPE_CHECKING:
    import ray.data


INPUT_KINDS = (
    "a WebVid CSV, a CSV/JSONL/Parquet manifest, a folder of videos (data.format=folder) or a "
    "time-ranges file (data.format=ranges)"
)


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
            "batch_size": data.encode_batch_size,
        },
        compute=ray.data.ActorPoolStrategy(size=data.num_encode_actors),
        batch_size=data.encode_batch_size,
        batch_format="numpy",
        num_cpus=0 if use_gpu else data.encode_num_cpus,
        num_gpus=1 if use_gpu else 0,
    )


def video_root_uri(cfg: Config) -> str:
    """``data.video_root``, else the input table's directory (a folder input: the folder)."""
    return default_video_root(cfg.data, locate(cfg.data.input, cfg.storage))


def preflight(cfg: Config) -> None:
    """What ``run_preprocess`` needs, checked in seconds before Ray starts; raises
    ``ConfigError`` naming the option: ``data.input`` set and a file (a directory for
    ``data.format=folder``) with the mapped columns, ``data.video_root`` an existing directory,
    ``data.output`` not a file, the base model reachable."""
    data = cfg.data
    if not data.input:
        raise ConfigError(f"data.input: required ({INPUT_KINDS})")
    check_input(data, data.input, cfg.storage)
    check_input_columns(data, locate(data.input, cfg.storage))
    check_root(video_root_uri(cfg), "data.video_root", cfg.storage)
    check_output_dir(output_uri(cfg), "data.output" if data.output else "output_dir", cfg.storage)
    check_base_model(cfg.model.base)


def outcome_failure(cfg: Config, counts: dict) -> str | None:
    """Why a finished run counts as failed, or None."""
    read, failed = counts["rows_read"], counts["rows_failed"]
    if read == 0:
        return f"data.input: {cfg.data.input} holds no rows"
    reasons = ", ".join(f"{n} {reason}" for reason, n in counts["failed_by_reason"].items())
    if counts["rows_encoded"] + counts["rows_cached"] == 0:
        if counts.get("rows_filtered"):  # curation dropped some rows (``pipelines.curation``)
            filtered = ", ".join(f"{n} {r}" for r, n in counts["filtered_by_reason"].items())
            return (
                f"no clip was encoded: {failed} rows failed ({reasons}), "
                f"{counts['rows_filtered']} were filtered ({filtered})"
            )
        return f"no clip was encoded: all {read} rows failed ({reasons})"
    if failed / read > cfg.data.max_error_fraction:
        return (
            f"{failed} of {read} rows failed ({failed / read:.0%} > data.max_error_fraction="
            f"{cfg.data.max_error_fraction:g}: {reasons})"
        )
    return None


def run_preprocess(cfg: Config, run_id: str | None = None) -> dict:
    """Preprocess ``cfg.data.input`` into shards under ``cfg.data.output``; returns the summary
    (also written to ``runs/<run_id>/summary.json``), whose ``status`` says whether the run
    failed (see the module doc). Needs a running Ray (``ray.init``)."""
    data = cfg.data
    if not data.input:
        raise ConfigError(f"data.input: required ({INPUT_KINDS})")
    started = time.perf_counter()
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    input_location = locate(data.input, cfg.storage)
    root = locate(video_root_uri(cfg), cfg.storage)
    columns = check_input_columns(data, input_location)

    fingerprint = data_fingerprint(cfg)  # hashes the VAE (and text encoder) once, on the driver
    fp_hash = fingerprint_hash(fingerprint)
    output = locate(output_uri(cfg), cfg.storage)
    provenance = {"base": cfg.model.base.pretrained, "single_file": cfg.model.base.single_file}
    store = ShardStore(output.join(fingerprint_dir_name(fingerprint)), fingerprint, provenance)
    cached = store.open()
    curation = CurationSpec.from_data(data)
    writer = ShardWriter(
        store,
        run_id,
        flush_every=data.manifest_flush_shards,
        curation=curation.active,
        dedup_distance=data.dedup_distance if data.dedup else -1,
    )

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
        follow_symlinks=data.follow_symlinks,
        content_hash=data.content_hash,
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
        follow_symlinks=data.follow_symlinks,
        content_hash=data.content_hash,
        camera_motion=data.camera_motion,
        camera_strength=data.camera_strength,
        curation=curation,
        curation_dir=writer.run_dir.join(CURATION_PARTS),
        buckets=data.buckets,
    )
    ds = build_pipeline(cfg, plan, decode, cached, input_location, columns)
    ds.context.execution_options.preserve_order = data.preserve_order
    base = {"run_id": run_id, "fingerprint_hash": fp_hash, "output": store.directory.uri}
    try:
        for batch in ds.iter_batches(
            batch_size=data.shard_size, batch_format="numpy", prefetch_batches=1
        ):
            writer.write(batch)
    except BaseException:
        _record_interrupted(store, writer, base)
        raise
    counts = writer.finish()
    store.refresh()  # retires the earlier clips of videos replaced since they were encoded
    elapsed = time.perf_counter() - started
    failure = outcome_failure(cfg, counts)
    summary = {
        **base,
        "status": "failed" if failure else "ok",
        **({"failure": failure} if failure else {}),
        **counts,
        "cache_size_clips": store.manifest["num_clips"],
        "elapsed_s": round(elapsed, 3),
        "clips_per_s": round(counts["clips_encoded"] / elapsed, 3) if elapsed > 0 else 0.0,
    }
    if curation.active:
        from pipelines.curation_report import write_reports

        summary["curation_reports"] = write_reports(writer.run_dir)
    store.record_run(writer.run_dir, summary)
    store.write_manifest()
    if data.log_mlflow:
        from tracking.preprocess import log_preprocess_run

        errors = writer.run_dir.join("errors.parquet")
        summary["mlflow_run_id"] = log_preprocess_run(
            cfg, summary, fingerprint, store.directory, store.manifest, errors
        )
        # Its entry in ``runs`` (the same dict) and its summary now lead to the MLflow run.
        store.write_manifest()
        store.write_summary(writer.run_dir, summary)
    return summary


def _record_interrupted(store: ShardStore, writer: ShardWriter, base: dict) -> None:
    """List what an interrupted run committed and record it; never hides the interruption."""
    try:
        counts = merge_outcomes(writer.run_dir)
        if writer.curation:  # the decisions made so far (near-duplicates are not decided)
            counts |= merge_curation(writer.run_dir)
        counts |= {"clips_encoded": writer.clips_written, "shards_written": writer.shards_written}
        store.refresh()
        store.record_run(writer.run_dir, {**base, "status": "interrupted", **counts})
        store.write_manifest()
    except Exception as error:  # the next run recovers what this one could not record
        warnings.warn(
            f"could not record the interrupted run {base['run_id']}: {error}", stacklevel=2
        )


def format_summary(summary: dict) -> str:
    """The end-of-run table."""
    lines = [
        f"run {summary['run_id']}  ->  {summary['output']}  ({summary.get('status', 'ok')})",
        f"  rows read        {summary['rows_read']:>10}",
        f"  rows encoded     {summary['rows_encoded']:>10}",
        f"  rows cached      {summary['rows_cached']:>10}",
        f"  rows failed      {summary['rows_failed']:>10}",
    ]
    lines += [f"    {reason:<15}{n:>10}" for reason, n in summary["failed_by_reason"].items()]
    if "filtered_by_reason" in summary:  # curation (``pipelines.curation``) was on
        lines += [
            f"  rows filtered    {summary['rows_filtered']:>10}",
            f"  shots detected   {summary['shots_detected']:>10}",
            f"  windows dropped  {summary['clips_filtered']:>10}",
            f"  clips dedup'd    {summary['clips_deduplicated']:>10}",
        ]
        lines += [f"    {reason:<15}{n:>10}" for reason, n in summary["filtered_by_reason"].items()]
    lines += [
        f"  clips encoded    {summary['clips_encoded']:>10}",
        f"  clips cached     {summary['clips_cached']:>10}",
        f"  shards written   {summary['shards_written']:>10}",
        f"  clips in cache   {summary['cache_size_clips']:>10}",
        f"  elapsed          {summary['elapsed_s']:>10.1f} s ({summary['clips_per_s']:.2f} clips/s)",
    ]
    return "\n".join(lines)
