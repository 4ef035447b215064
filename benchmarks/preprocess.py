"""Preprocessing benchmarks on real footage: decode overhead, CPU scaling, memory vs clip count.

    python benchmarks/preprocess.py /path/to/webvid_layout --clips 64 --sections decode,scaling

The folder holds a WebVid CSV (``*.csv``) and ``videos/{page_dir}/{videoid}.mp4``. Its rows are
replicated (symlinks with new ids) to the sizes asked for. Each measurement starts its own local
Ray with the process pinned to the cores it may use (workers inherit the affinity), so "1 CPU"
means one physical core, not a logical Ray CPU. Prints measured figures only.

- decode: clips/s on one core of raw decord ``get_batch`` (same windows; at native size, and
  resized by decord as the pipeline does) vs the pipeline's read->plan->decode stages in Ray Data
  (target: pipeline overhead <= 10% against the resized raw decode). Whole-run and marginal
  rates, and the decode tasks' own rate per CPU-second (CPU time of Ray's task workers), apart
  from what the driver's streaming executor and Ray's daemons take on the same core.
- scaling: end-to-end clips/s (decode + VAE encode + shard writes) with 1 vs 2 cores (target
  >= 1.8x), whole-run and marginal (N vs 2 clips: without the fixed start-up cost of a run).
- memory: peak RSS of the driver and of the whole Ray process tree at N and 10N clips (target:
  10N <= 1.2x N). ``memory_curated``: the same with the curation stages on (``--curation``).
- curation: on one core without Ray, in CPU time, the cost per clip of each curation stage (shot
  detection, as the extra time of decoding with it; motion, text overlay, perceptual hash, report
  thumbnail) relative to decoding the clip (target: all curation <= 50 % of decode), and decode
  clips/s with curation on vs off.
- curation_e2e: end-to-end clips/s (decode + encode + shards, Ray, all cores) with curation on
  vs off. The replicated rows are copies of a few videos, so deduplication drops most of them:
  rates count input rows processed.
- folder: the same rows as a ``data.format=folder`` tree (video links + ``.txt`` captions), end
  to end with curation off and on: rows read, clips, failures and drops by reason.
- order: end to end with the shards in input order (``data.preserve_order``) against completion
  order, alternated ``--repeats`` times: what repeatable shards cost.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from animatediff.config import Config, load_config


def replicate(source: Path, count: int, work: Path) -> Path:
    """A WebVid CSV of ``count`` rows whose videos are symlinks to the real ones (distinct ids
    and paths, so nothing is a duplicate or cached)."""
    table = next(source.glob("*.csv"))
    with open(table, newline="") as file:
        rows = [
            r
            for r in csv.DictReader(file)
            if (source / "videos" / r["page_dir"] / f"{r['videoid']}.mp4").exists()
        ]
    if not rows:
        raise SystemExit(f"{source}: no CSV row has a video under videos/")
    out_csv = work / f"rows{count}.csv"
    with open(out_csv, "w", newline="") as file:
        writer = csv.DictWriter(
            file, fieldnames=["videoid", "contentUrl", "duration", "page_dir", "name"]
        )
        writer.writeheader()
        for i in range(count):
            row = rows[i % len(rows)]
            videoid = f"{count:05d}{i:07d}"
            target = work / "videos" / row["page_dir"] / f"{videoid}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(
                    (source / "videos" / row["page_dir"] / f"{row['videoid']}.mp4").resolve()
                )
            writer.writerow(row | {"videoid": videoid, "name": f"{row['name']} ({i})"})
    return out_csv


def config(work: Path, table: Path, out: str, args: argparse.Namespace, *extra: str) -> Config:
    return load_config(
        "configs/tiny.yaml",
        [
            f"data.input={table}",
            f"data.video_root={work / 'videos'}",
            f"data.output={work / out}",
            f"data.num_frames={args.num_frames}",
            f"data.stride={args.stride}",
            f"data.resolution={args.resolution}",
            f"data.decode_rows_per_task={args.decode_rows_per_task}",
            "data.follow_symlinks=true",  # the replicated rows link to videos outside the root
            f"model.base.cache_dir={work / 'base'}",
            *extra,
        ],
    )


def start_ray(cores: set[int], logical_cpus: int) -> None:
    import ray

    os.sched_setaffinity(0, cores)
    ray.init(num_cpus=logical_cpus, include_dashboard=False, log_to_driver=False)


def stop_ray() -> None:
    import ray

    ray.shutdown()
    os.sched_setaffinity(0, ALL_CORES)


ALL_CORES = os.sched_getaffinity(0)


class PeakRss:
    """Samples the RSS of this process and of all its descendants (Ray's processes)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.driver, self.tree = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = driver = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.driver, self.tree = max(self.driver, driver), max(self.tree, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu_by_process() -> dict[int, tuple[str, float]]:
    """``{pid: (process title, user + system CPU seconds)}`` of this process and its live
    descendants (a local Ray's GCS, raylet, workers: ``ray::<task>`` or ``ray::IDLE``)."""
    me = psutil.Process()
    found = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            title = "driver" if process.pid == me.pid else process.name()
            found[process.pid] = (title, sum(process.cpu_times()[:2]))
        except psutil.Error:
            pass
    return found


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (Ray's processes)."""
    return sum(cpu for _, cpu in tree_cpu_by_process().values())


def task_worker_cpu(before: dict[int, tuple[str, float]]) -> tuple[float, float]:
    """``(CPU seconds of Ray task workers, CPU seconds of everything else)`` since ``before``.

    Task workers are pooled processes titled ``ray::IDLE`` between tasks and ``ray::<task>``
    while running one; actors (Ray Data's stats and autoscaling actors, agents), the GCS, the
    raylet and the driver (Ray Data's streaming executor) are the rest."""
    system = ("driver", "raylet", "gcs_server", "ray::_", "ray::Dashboard", "ray::RuntimeEnv")
    workers = other = 0.0
    for pid, (title, cpu) in tree_cpu_by_process().items():
        spent = cpu - before.get(pid, (title, 0.0))[1]
        if title.startswith("ray::") and not title.startswith(system):
            workers += spent
        else:
            other += spent
    return workers, other


def run_pipeline(cfg: Config) -> dict:
    """``run_preprocess`` plus its wall time and the CPU seconds it got (on a shared machine the
    CPU it gets, ``cpu_s / wall_s`` cores, can be well below the cores it may use)."""
    from pipelines import preprocess

    cpu, started = tree_cpu_seconds(), time.perf_counter()
    summary = preprocess.run_preprocess(cfg)
    summary["wall_s"] = time.perf_counter() - started
    summary["cpu_s"] = tree_cpu_seconds() - cpu
    return summary


def raw_decode(
    paths: list[str], num_frames: int, stride: int, seed: int, resolution: int | None
) -> float:
    """Seconds for plain decord: open, the same window as the pipeline, ``get_batch``, release;
    resized by decord to the pipeline's size when ``resolution`` is given."""
    import av
    import decord

    from pipelines import windows
    from pipelines.decode import resize_shape

    started = time.perf_counter()
    for path in paths:
        size = {}
        if resolution:
            with av.open(path) as container:
                context = container.streams.video[0].codec_context
                width, height = resize_shape(context.width, context.height, resolution)
            size = {"width": width, "height": height}
        reader = decord.VideoReader(path, num_threads=1, **size)
        (window,) = windows.clip_windows(len(reader), num_frames, stride, 1, seed, path)
        reader.get_batch(window.tolist()).asnumpy()
        reader.seek(0)
        del reader
    return time.perf_counter() - started


def bench_decode(source: Path, work: Path, args: argparse.Namespace) -> None:
    """Raw decode runs as a Ray task on the same single core as the pipeline, so both see the
    same scheduling (on a shared machine a driver process and Ray workers get different shares).

    Whole-run rates over N clips, and marginal rates ``(N - N/4) / (t(N) - t(N/4))`` that drop
    the fixed cost of starting a Ray Data execution (~0.5 s, once per run of millions of clips)."""
    import numpy as np
    import ray

    from animatediff.storage import locate
    from pipelines.decode import DecodeSpec
    from pipelines.preprocess import build_decode_pipeline
    from pipelines.sources import PlanSpec, check_input_columns

    sizes = (max(1, args.clips // 4), args.clips)
    tables = {n: replicate(source, n, work) for n in sizes}
    paths = {}
    for n, table in tables.items():
        with open(table, newline="") as file:
            rows = list(csv.DictReader(file))
        paths[n] = [str(work / "videos" / r["page_dir"] / f"{r['videoid']}.mp4") for r in rows]
    start_ray({min(ALL_CORES)}, 1)
    try:
        cfgs = {n: config(work, table, "decode-out", args) for n, table in tables.items()}
        data = cfgs[args.clips].data
        root = locate(data.video_root)
        parts = locate(str(work / "decode-parts"))
        spec = DecodeSpec(
            data.num_frames, data.stride, data.resolution, data.seed, 1, 1, root, parts,
            follow_symlinks=data.follow_symlinks,
        )  # fmt: skip
        raw = ray.remote(num_cpus=1)(raw_decode)
        cpu: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}

        def pipeline(n: int) -> float:
            cfg = cfgs[n]
            input_location = locate(cfg.data.input, cfg.storage)
            columns = check_input_columns(cfg.data, input_location)
            plan = PlanSpec(
                data.format,
                data.layout,
                data.video_ext,
                columns,
                root,
                "bench",
                data.seed,
                1,
                False,
                follow_symlinks=data.follow_symlinks,
            )
            ds = build_decode_pipeline(
                cfg, plan, spec, np.zeros(0, np.uint64), input_location, columns
            )
            cpu_before, started, count = tree_cpu_by_process(), time.perf_counter(), 0
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                count += len(batch["key"])
            assert count == n, count
            elapsed = time.perf_counter() - started
            cpu[n].append(task_worker_cpu(cpu_before))
            return elapsed

        pipeline(sizes[0])  # warm-up: worker processes and imports
        ray.get(raw.remote(paths[sizes[0]][:2], data.num_frames, data.stride, data.seed, None))
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
            for n in sizes:
                common = (paths[n], data.num_frames, data.stride, data.seed)
                results = {
                    "native": ray.get(raw.remote(*common, None)),
                    "resized": ray.get(raw.remote(*common, data.resolution)),
                    "pipeline": pipeline(n),
                }
                for key, seconds in results.items():
                    times.setdefault((key, n), []).append(seconds)
    finally:
        stop_ray()
    small, large = sizes
    median = {k: statistics.median(v) for k, v in times.items()}
    whole = {k: large / median[k, large] for k in ("native", "resized", "pipeline")}
    marginal = {
        k: (large - small) / (median[k, large] - median[k, small])
        for k in ("native", "resized", "pipeline")
    }
    print(
        f"\n== decode overhead: {large} clips (and {small} for the marginal rate), "
        f"{data.num_frames} frames at stride {data.stride}, one core, "
        f"{data.decode_rows_per_task} rows per decode task"
    )
    labels = {
        "native": "raw decord get_batch, native size     ",
        "resized": f"raw decord get_batch, resized to {data.resolution}  ",
        "pipeline": "pipeline read->plan->decode (Ray Data)",
    }
    for key, label in labels.items():
        print(f"  {label} {whole[key]:6.2f} clips/s whole run, {marginal[key]:6.2f} marginal")
    for key in ("native", "resized"):
        print(
            f"  pipeline overhead vs raw {key:<8}: whole run "
            f"{100 * (1 - whole['pipeline'] / whole[key]):5.1f} %, marginal "
            f"{100 * (1 - marginal['pipeline'] / marginal[key]):5.1f} % (target <= 10%)"
        )
    workers, other = (statistics.median(x) for x in zip(*cpu[large], strict=True))
    per_cpu_second = large / workers
    print(
        f"  decode tasks alone: {workers:.2f} CPU-s for {large} clips = {per_cpu_second:.2f} clips "
        f"per CPU-second of the decode workers, overhead vs raw resized "
        f"{100 * (1 - per_cpu_second / whole['resized']):.1f} %; the rest of the run "
        f"(driver's streaming executor, raylet, GCS, Ray Data actors) took {other:.2f} CPU-s "
        f"on the same core ({100 * other / (workers + other):.0f} % of the CPU used)"
    )


def bench_scaling(source: Path, work: Path, args: argparse.Namespace) -> None:
    """Whole-run clips/s, and the marginal rate ``(N - 2) / (wall(N) - wall(2))`` that removes
    the fixed cost of a run (plan, actor start, model load) which a 10M-clip run amortises."""
    table, small = replicate(source, args.clips, work), replicate(source, 2, work)
    results = {}
    for cores in (1, 2):
        start_ray(set(sorted(ALL_CORES)[:cores]), 2 * cores)
        try:
            extra = (f"data.num_encode_actors={cores}",)
            run_pipeline(config(work, small, f"warm{cores}", args, *extra))  # imports, workers
            base = run_pipeline(config(work, small, f"small{cores}", args, *extra))
            full = run_pipeline(config(work, table, f"scaling{cores}", args, *extra))
        finally:
            stop_ray()
        marginal = (full["clips_encoded"] - base["clips_encoded"]) / (
            full["wall_s"] - base["wall_s"]
        )
        results[cores] = (full, marginal)
    print(
        f"\n== scaling: {args.clips} clips end to end (decode + VAE encode + shards), {args.resolution}px"
    )
    for cores, (full, marginal) in results.items():
        print(
            f"  {cores} core(s): {full['clips_encoded']} clips, wall {full['wall_s']:.1f} s "
            f"-> {full['clips_encoded'] / full['wall_s']:.2f} clips/s; marginal {marginal:.2f} clips/s; "
            f"CPU obtained {full['cpu_s'] / full['wall_s']:.2f} cores, "
            f"{full['clips_encoded'] / full['cpu_s']:.3f} clips per CPU-second"
        )
    (one, m1), (two, m2) = results[1], results[2]
    whole = (two["clips_encoded"] / two["wall_s"]) / (one["clips_encoded"] / one["wall_s"])
    print(f"  speed-up 2 vs 1 core: whole run {whole:.2f}x, marginal {m2 / m1:.2f}x")


def bench_memory(source: Path, work: Path, args: argparse.Namespace, curated: bool = False) -> None:
    extra = ("data.shard_size=8", *(args.curation.split(",") if curated else ()))
    results = {}
    for count in (args.memory_clips, 10 * args.memory_clips):
        table = replicate(source, count, work)
        start_ray(ALL_CORES, 2 * len(ALL_CORES))
        try:
            with PeakRss() as peak:
                summary = run_pipeline(
                    config(work, table, f"memory{count}{'c' * curated}", args, *extra)
                )
        finally:
            stop_ray()
        results[count] = (summary, peak)
    what = f"curation on ({args.curation})" if curated else "curation off"
    print(f"\n== memory: peak RSS, {args.resolution}px, {args.num_frames} frames, {what}")
    for count, (summary, peak) in results.items():
        print(
            f"  {count:5d} clips ({summary['clips_encoded']} encoded, {summary['wall_s']:.0f} s): "
            f"driver {peak.driver / 2**20:7.0f} MiB, Ray process tree {peak.tree / 2**20:7.0f} MiB"
        )
    (n, (_, small)), (_, (_, large)) = results.items()
    print(
        f"  10N / N: driver {large.driver / small.driver:.2f}x, process tree {large.tree / small.tree:.2f}x"
    )


def bench_curation(source: Path, work: Path, args: argparse.Namespace) -> None:
    """Per-stage costs on one core, in this process (no Ray), in CPU seconds of this process (the
    machine is shared: wall time would count other programs' turns on the core). Each video is
    decoded as the pipeline decodes it (``decode_clips``, one window), then each stage runs on
    what it needs. Shot detection shares the decode (``pipelines.decode.shot_pass``), so its cost
    is ``decode_clips`` with shot detection on minus without, per video."""
    import dataclasses

    from animatediff.storage import locate
    from pipelines import curation, dedup, motion, overlay
    from pipelines.decode import DecodeSpec, decode_clips

    clock = time.process_time
    os.sched_setaffinity(0, {min(ALL_CORES)})
    table = replicate(source, args.clips, work)
    with open(table, newline="") as file:
        rows = list(csv.DictReader(file))
    paths = [str(work / "videos" / r["page_dir"] / f"{r['videoid']}.mp4") for r in rows]
    root, parts = locate(str(work / "videos")), locate(str(work / "curation-bench-parts"))
    cfg = config(work, table, "curation-out", args, *args.curation.split(","))
    spec = curation.CurationSpec.from_data(cfg.data)
    shot_only = curation.CurationSpec(shots=True, shot_threshold=spec.shot_threshold)
    shape = (args.num_frames, args.stride, args.resolution, 0, 1, 1, root, parts)
    plain = DecodeSpec(*shape, follow_symlinks=True)  # the replicated rows are symbolic links
    curated = dataclasses.replace(plain, curation=spec, curation_dir=parts)
    shot_pass = dataclasses.replace(plain, curation=shot_only, curation_dir=parts)
    decode_clips(paths[0], plain, 1)  # warm-up: imports
    decode_clips(paths[0], shot_pass, 1, curated=curation.VideoCuration())
    stages = ("decode", "shots", "motion", "overlay", "phash", "thumbnail")
    seconds: dict[tuple[str, str], list[float]] = {(k, p): [] for k in stages for p in paths}
    e2e: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for path in paths:
            started = clock()
            clips, _, _ = decode_clips(path, plain, 1)
            seconds["decode", path].append(clock() - started)
            frames = clips[0][2]
            started = clock()
            decode_clips(path, shot_pass, 1, curated=curation.VideoCuration())
            seconds["shots", path].append(clock() - started - seconds["decode", path][-1])
            for stage, work_on in (
                ("motion", lambda f: motion.motion_verdict(motion.frame_steps(f), 1, 60, 8)),
                ("overlay", overlay.overlay_score),
                ("phash", dedup.clip_hash),
                ("thumbnail", curation.thumbnail),
            ):
                started = clock()
                work_on(frames)
                seconds[stage, path].append(clock() - started)
        for key, decode_spec in (("off", plain), ("on", curated)):
            started = clock()
            for path in paths:
                decode_clips(path, decode_spec, 1, curated=curation.VideoCuration())
            e2e[key].append(clock() - started)
    os.sched_setaffinity(0, ALL_CORES)
    # Per clip: the mean over the videos of each one's median over the repeats, so shares are
    # shares of total time (a median over a mix of 1280x720 and 480x270 clips would fall
    # anywhere between the two sizes).
    median = {k: statistics.mean(statistics.median(seconds[k, p]) for p in paths) for k in stages}
    print(
        f"\n== curation: per clip on one core (CPU time; mean over the clips of the median of "
        f"{args.repeats} repeats), {len(paths)} clips, "
        f"{args.num_frames} frames at stride {args.stride}, {args.resolution}px, one window a video"
    )
    for stage in stages:
        share = 100 * median[stage] / median["decode"]
        note = "  (decode with shot detection minus decode)" if stage == "shots" else ""
        print(f"  {stage:<10} {1000 * median[stage]:8.2f} ms  {share:6.1f} % of decode{note}")
    # Shot detection (a video's every frame at 32 px, in the decode pass) is the only stage not
    # run on the frames decode has anyway; the thumbnail is made for
    # data.report_sample_fraction of windows.
    total = sum(median[k] for k in ("shots", "motion", "overlay", "phash"))
    print(
        f"  all curation (no thumbnail) {100 * total / median['decode']:.1f} % of decode (target <= 50 %)"
    )
    off, on = (len(paths) / statistics.median(e2e[k]) for k in ("off", "on"))
    print(
        f"  decode_clips clips/s: curation off {off:.2f}, on {on:.2f} ({args.curation}); "
        f"on costs {100 * (off / on - 1):.1f} % more time"
    )


def warm_up(cfg: Config) -> None:
    """A run of the same input as the measured ones (``--clips`` rows, curation off), so that
    the worker processes they use have started and imported their modules. After a 2-row
    warm-up the folder section's first measured run took 5-7 s longer than the second, in
    either order ("off" 27.7 s then "on" 20.5 s; "on" 34.2 s then "off" 31.1 s); after this
    one about 2 s (18.1 s then 16.3 s; 16.3 s then 14.6 s)."""
    run_pipeline(cfg)


def bench_curation_e2e(source: Path, work: Path, args: argparse.Namespace) -> None:
    table = replicate(source, args.clips, work)
    results = {}
    start_ray(ALL_CORES, 2 * len(ALL_CORES))
    try:
        warm_up(config(work, table, "warm-e2e", args))
        for key, extra in (("off", ()), ("on", tuple(args.curation.split(",")))):
            results[key] = run_pipeline(config(work, table, f"e2e-{key}", args, *extra))
    finally:
        stop_ray()
    print(f"\n== curation end to end: {args.clips} rows, {args.resolution}px, all cores")
    for key, summary in results.items():
        print(
            f"  curation {key:<3}: {summary['rows_read'] / summary['wall_s']:.2f} rows/s, "
            f"{summary['clips_encoded']} clips encoded, {summary['rows_failed']} rows failed, "
            f"wall {summary['wall_s']:.1f} s, "
            f"dropped {summary.get('filtered_by_reason', {})}"
        )


def bench_order(source: Path, work: Path, args: argparse.Namespace) -> None:
    """End to end (all cores) with the shards in input order (``data.preserve_order``, the
    default) against completion order, alternated ``--repeats`` times: what repeatable shards
    cost. The replicated rows alternate the source videos, so slow and fast decodes interleave."""
    table = replicate(source, args.clips, work)
    walls: dict[bool, list[float]] = {True: [], False: []}
    start_ray(ALL_CORES, 2 * len(ALL_CORES))
    try:
        warm_up(config(work, table, "warm-order", args))
        for repeat in range(args.repeats):
            for ordered in (True, False) if repeat % 2 == 0 else (False, True):
                extra = (f"data.preserve_order={str(ordered).lower()}",)
                summary = run_pipeline(
                    config(work, table, f"order-{ordered}-{repeat}", args, *extra)
                )
                walls[ordered].append(summary["wall_s"])
    finally:
        stop_ray()
    print(f"\n== shard order: {args.clips} clips end to end, {args.resolution}px, all cores")
    for ordered, wall in walls.items():
        name = "input order     " if ordered else "completion order"
        runs = ", ".join(f"{w:.1f}" for w in wall)
        median = statistics.median(wall)
        print(f"  {name}: median {median:.1f} s ({args.clips / median:.2f} clips/s; runs {runs})")
    ratio = statistics.median(walls[True]) / statistics.median(walls[False])
    print(f"  input order / completion order, median wall: {ratio:.3f}x")


def folder_of(source: Path, count: int, work: Path) -> Path:
    """The replicated rows as a ``data.format=folder`` tree: each video a symbolic link beside a
    same-named ``.txt`` caption (what users bring: "a folder of mp4s with captions")."""
    folder = work / f"folder{count}"
    with open(replicate(source, count, work), newline="") as file:
        for row in csv.DictReader(file):
            video = folder / row["page_dir"] / f"{row['videoid']}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            linked = work / "videos" / row["page_dir"] / f"{row['videoid']}.mp4"
            video.symlink_to(linked.resolve())
            video.with_suffix(".txt").write_text(row["name"])
    return folder


def bench_folder(source: Path, work: Path, args: argparse.Namespace) -> None:
    """The folder input end to end (all cores), curation off and on: every video is a row."""
    folder = folder_of(source, args.clips, work)
    results = {}
    start_ray(ALL_CORES, 2 * len(ALL_CORES))
    try:
        inputs = ("data.format=folder", f"data.input={folder}", "data.video_root=")
        warm_up(config(work, folder, "warm-folder", args, *inputs))
        for key, extra in (("off", ()), ("on", tuple(args.curation.split(",")))):
            cfg = config(work, folder, f"folder-{key}", args, *inputs, *extra)
            results[key] = run_pipeline(cfg)
    finally:
        stop_ray()
    print(f"\n== folder input (videos + .txt captions): {args.clips} videos, all cores")
    for key, summary in results.items():
        print(
            f"  curation {key:<3}: {summary['rows_read']} rows read, {summary['clips_encoded']} "
            f"clips encoded, {summary['rows_failed']} rows failed, wall {summary['wall_s']:.1f} s "
            f"({summary['rows_read'] / summary['wall_s']:.2f} rows/s), "
            f"dropped {summary.get('filtered_by_reason', {})}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "videos", nargs="?", default=None, help="WebVid-layout folder (CSV + videos/)"
    )
    parser.add_argument(
        "--clips", type=int, default=16, help="clips for the decode and scaling runs"
    )
    parser.add_argument(
        "--memory-clips", type=int, default=12, help="N of the memory run (and 10N)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument(
        "--decode-rows-per-task", type=int, default=4, help="data.decode_rows_per_task"
    )
    parser.add_argument(
        "--sections",
        default="decode,scaling,memory",
        help="of decode, scaling, memory, memory_curated, curation, curation_e2e, folder, order",
    )
    parser.add_argument(
        "--curation",
        default="data.shots=true,data.min_motion=1.0,data.max_motion=60.0,"
        "data.max_motion_spike=8.0,data.text_score=true,data.dedup=true",
        help="config overrides that switch curation on (comma-separated)",
    )
    args = parser.parse_args(argv)
    if args.videos is None:
        parser.error("pass a folder of real clips in WebVid layout (a CSV and videos/{page_dir}/)")
    source = Path(args.videos)
    print(
        f"cores available: {sorted(ALL_CORES)}; load average {os.getloadavg()[0]:.1f} (shared machine)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        for section in args.sections.split(","):
            sections = {
                "decode": bench_decode,
                "scaling": bench_scaling,
                "memory": bench_memory,
                "memory_curated": functools.partial(bench_memory, curated=True),
                "curation": bench_curation,
                "curation_e2e": bench_curation_e2e,
                "folder": bench_folder,
                "order": bench_order,
            }
            sections[section](source, work, args)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
