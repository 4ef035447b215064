"""The Moving Digits chain's three trainings on the trained base (motion module, ablation, style
LoRA) one after another and as many at once as the cluster has room for (``run.at_once`` with
``run.concurrent_trainings``, as the chain does), side by side in one Ray session on a finished
reproduction's shards and base: the wall time of each, and whether they train the same weights.

    .venv/bin/python -m benchmarks.trainings_at_once --work outputs/reproduce --cpus 3 \\
        train.num_workers=1 "reproduce.motion_train=[train.max_steps=100]" \\
        "reproduce.lora_train=[train.max_steps=100, train.batch_size=32, train.lora.rank=8]"

``--work`` is a ``make reproduce`` folder (``<output_dir>/reproduce``): its ``latents/`` and
``models/digits-base/pipeline``. ``--cpus`` sizes the local Ray cluster (``jobs.cluster.
local_cpus`` by default). The preset's trainings take 2 workers each, so on its 4 logical CPUs
they run one at a time, and the two modes are the same. One-worker trainings on 3 logical CPUs
run two at a time: a small machine's stand-in for a large one, where each training's workers
use fewer cores than the machine has. Runs, checkpoints and exports go to a temporary folder,
MLflow is off. The first mode also pays for warm-up: ``--order`` swaps them.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path


def measure(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, Path]]]:
    """``{mode: (wall seconds, export path by training)}`` in ``args.order``."""
    import ray

    from animatediff.config import load_config
    from experiments.moving_digits.run import (
        at_once,
        concurrent_trainings,
        downstream_stages,
        stage_config,
        train,
        with_overrides,
    )
    from jobs.cluster import init_ray

    work = Path(args.work).resolve()
    scratch = Path(args.scratch)
    cfg = load_config(args.config, args.overrides)
    cfg = with_overrides(
        cfg,
        [
            f"model.base.pretrained={work / 'models' / 'digits-base' / 'pipeline'}",
            f"train.storage_path={scratch / 'ray_results'}",
            "mlflow.enabled=false",
        ],
    )
    # Each collection's data.output root: the trainer picks the fingerprint directory that
    # matches the model (pipelines.latents.find_shard_set).
    uris = {name: str(work / "latents" / name) for name in ("clips", "heldout", "style")}
    stages = downstream_stages(cfg, uris)
    init_ray(cfg, hide_gpus=True, log_to_driver=False, num_cpus=args.cpus)
    cpus = ray.cluster_resources()["CPU"]
    limit = concurrent_trainings(list(stages.values()), cpus)
    print(f"{cpus:.0f} logical CPUs: {limit} at a time", flush=True)
    measured = {}
    for mode in args.order.split(","):
        if mode not in ("sequential", "at-once"):
            raise SystemExit(f"--order: unknown mode {mode!r} (sequential, at-once)")
        # Each mode trains its own runs from scratch (a run name that exists would resume).
        runs = {
            name: stage_config(stage, f"{stage.train.run_name}-{mode}", [])
            for name, stage in stages.items()
        }
        calls = {name: functools.partial(train, run, scratch / mode) for name, run in runs.items()}
        start = time.perf_counter()
        outcomes = at_once(calls, limit if mode == "at-once" else 1)
        seconds = time.perf_counter() - start
        measured[mode] = (seconds, {name: o.export_path for name, o in outcomes.items()})
        print(f"{mode}: {seconds:.1f} s", flush=True)
    return measured


def main(argv: list[str] | None = None) -> None:
    from benchmarks.side_by_side import print_walls, reproduction_parser
    from tracking.registry import weights_sha256

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as jobs.reproduce, whose stage this is
    parser = reproduction_parser(__doc__, "sequential,at-once")
    parser.add_argument("--cpus", type=int, default=None, help="the local cluster's logical CPUs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trainings-at-once-") as scratch:
        args.scratch = scratch
        measured = measure(args)
        print_walls({mode: seconds for mode, (seconds, _) in measured.items()})
        first_mode, *others = measured
        first = measured[first_mode][1]
        for mode in others:
            for name, path in measured[mode][1].items():
                # The registry's test of identical weights (it registers them once).
                identical = weights_sha256(path) == weights_sha256(first[name])
                verdict = "the same" if identical else "DIFFERENT"
                print(f"{name}, {mode} vs {first_mode}: {verdict} weights")


if __name__ == "__main__":
    main()
