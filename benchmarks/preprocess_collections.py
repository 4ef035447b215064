"""The Moving Digits chain's four collections preprocessed one after another (as the chain did
before) and as many at once as the cluster has room for (``run.preprocess_collections``, as it
does now), side by side in one Ray session on a finished reproduction's videos and untrained
base: the wall time of each, and whether their shards hold the same rows in the same order.

    .venv/bin/python -m benchmarks.preprocess_collections --work outputs/reproduce
    .venv/bin/python -m benchmarks.preprocess_collections --work outputs/reproduce --order at-once,sequential

``--work`` is a ``make reproduce`` folder (``<output_dir>/reproduce``): its rendered
``videos/<collection>/videos.csv`` and ``base-untrained``. The shards go to a temporary folder.
The first mode also pays for warm-up (file cache, the first worker processes): ``--order`` swaps
them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa


def shard_rows(uri: str) -> pa.Table:
    """Every row of a shard set, in the manifest's shard order."""
    import pyarrow.parquet as pq

    from pipelines.latents import find_shard_set

    location, manifest = find_shard_set(uri)
    paths = [location.join(shard["path"]).path for shard in manifest["shards"]]
    return pa.concat_tables(pq.read_table(path, filesystem=location.fs) for path in paths)


def measure(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, str]]]:
    """``{mode: (wall seconds, shard-set URI by collection)}`` in ``args.order``; the shard sets
    live under ``args.scratch``."""
    from animatediff.config import load_config
    from experiments.moving_digits.run import (
        Sets,
        preprocess,
        preprocess_collections,
        with_overrides,
    )
    from jobs.cluster import init_ray

    work = Path(args.work).resolve()
    cfg = load_config(args.config, args.overrides)
    cfg = with_overrides(cfg, [f"model.base.pretrained={work / 'base-untrained'}"])
    collections = Sets.rendered(work).to_preprocess(cfg)
    init_ray(cfg, hide_gpus=True, log_to_driver=False)
    measured = {}
    for mode in args.order.split(","):
        latents = Path(args.scratch) / mode
        start = time.perf_counter()
        if mode == "sequential":
            uris = {
                name: preprocess(cfg, table, latents / name, count)
                for name, (table, count) in collections.items()
            }
        elif mode == "at-once":
            uris = preprocess_collections(cfg, collections, latents)
        else:
            raise SystemExit(f"--order: unknown mode {mode!r} (sequential, at-once)")
        seconds = time.perf_counter() - start
        measured[mode] = (seconds, uris)
        print(f"{mode}: {seconds:.1f} s", flush=True)
    return measured


def main(argv: list[str] | None = None) -> None:
    from benchmarks.side_by_side import print_walls, reproduction_parser

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as jobs.reproduce, whose stage this is
    args = reproduction_parser(__doc__, "sequential,at-once").parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="preprocess-collections-") as scratch:
        args.scratch = scratch
        measured = measure(args)
        print_walls({mode: seconds for mode, (seconds, _) in measured.items()})
        first_mode, *others = measured
        first = {name: shard_rows(uri) for name, uri in measured[first_mode][1].items()}
        for mode in others:
            for name, uri in measured[mode][1].items():
                table = shard_rows(uri)
                same = (
                    "the same rows in the same order" if table.equals(first[name]) else "DIFFERENT"
                )
                print(f"{name}, {mode} vs {first_mode}: {table.num_rows} rows, {same}")


if __name__ == "__main__":
    main()
