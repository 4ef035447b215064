"""The Moving Digits conditions scored one after another (a ``run_evaluation`` each, as the chain
did before) and in one pass (``run_evaluations``, as it does now: one actor pool, and one held-out
measurement for (a1) and (a2), which differ only in sampling), side by side in one Ray session on
a finished reproduction's models: wall time of each, and whether their metrics agree. The mode
``pass-unshared`` is one pass with every held-out loss measured, as before (a1) and (a2) shared.

    .venv/bin/python -m benchmarks.evaluate_pass --work outputs/reproduce
    .venv/bin/python -m benchmarks.evaluate_pass --work outputs/reproduce --order pass,sequential
    .venv/bin/python -m benchmarks.evaluate_pass --work outputs/reproduce --conditions a1,b
    .venv/bin/python -m benchmarks.evaluate_pass --work outputs/reproduce --order pass-unshared,pass

``--work`` is a ``make reproduce`` folder (``<output_dir>/reproduce``): its models under
``models/``, classifier, identity module and held-out shards. MLflow is off; the reports go to a
temporary folder (the identity module and ``prompts.jsonl`` are rewritten in place,
identically). The first mode also pays for warm-up (file cache, lazy imports): ``--order`` swaps
them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path
from unittest import mock


def measure(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, dict[str, float]]]]:
    """``{mode: (wall seconds, metrics by condition)}`` in ``args.order``."""
    from animatediff.config import load_config
    from experiments.moving_digits.run import (
        evaluation_stages,
        reproduction_conditions,
        with_overrides,
    )
    from jobs.cluster import init_ray
    from pipelines.evaluate import run_evaluation, run_evaluations

    work = Path(args.work).resolve()
    models = work / "models"
    cfg = load_config(args.config, args.overrides)
    base = models / "digits-base" / "pipeline"
    cfg = with_overrides(cfg, [f"model.base.pretrained={base}", "mlflow.enabled=false"])
    motion = str(models / "digits-motion" / "motion_module")
    conditions = reproduction_conditions(
        cfg,
        work,
        str(work / "latents" / "heldout"),
        work / "classifier",
        motion=motion,
        motion_dir=motion,
        ablation=str(models / "digits-ablation" / "motion_module"),
        lora=str(models / "digits-style-lora" / "lora.safetensors"),
    )
    if args.conditions:
        names = args.conditions.split(",")
        unknown = sorted(set(names) - set(conditions))
        if unknown:
            raise SystemExit(f"--conditions: unknown {unknown} (of {sorted(conditions)})")
        conditions = {name: conditions[name] for name in names}
    init_ray(cfg, hide_gpus=True, log_to_driver=False)
    measured = {}
    with tempfile.TemporaryDirectory(prefix="evaluate-pass-") as scratch:
        for mode in args.order.split(","):
            out = [f"output_dir={Path(scratch) / mode}"]  # after the conditions' own: it wins
            stages = evaluation_stages(
                cfg, {name: (model, [*o, *out]) for name, (model, o) in conditions.items()}
            )
            start = time.perf_counter()
            if mode == "sequential":
                results = [run_evaluation(stage) for stage in stages.values()]
            elif mode == "pass":
                results = run_evaluations(list(stages.values()))
            elif mode == "pass-unshared":  # as before (a1) and (a2) shared their held-out loss
                unique = map(str, itertools.count())  # every config its own held-out key
                with mock.patch("pipelines.evaluate.held_out_key", side_effect=unique):
                    results = run_evaluations(list(stages.values()))
            else:
                raise SystemExit(
                    f"--order: unknown mode {mode!r} (sequential, pass, pass-unshared)"
                )
            seconds = time.perf_counter() - start
            measured[mode] = (seconds, {n: r.metrics for n, r in zip(stages, results)})
            print(f"{mode}: {seconds:.1f} s", flush=True)
    return measured


def main(argv: list[str] | None = None) -> None:
    from benchmarks.side_by_side import print_walls, reproduction_parser

    # As jobs.reproduce, whose evaluation this measures: the driver's held-out loss runs beside
    # the actors, and spinning OpenMP threads would take their cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = reproduction_parser(__doc__, "sequential,pass")
    parser.add_argument("--conditions", default="", help="e.g. a1,b (default: all six)")
    args = parser.parse_args(argv)
    measured = measure(args)
    print_walls({mode: seconds for mode, (seconds, _) in measured.items()})
    first_mode, *others = measured
    first = measured[first_mode][1]
    for mode in others:
        other = measured[mode][1]
        differences = [
            abs(first[c][k] - other[c][k])
            for c in first
            for k in first[c]
            if not k.endswith("_seconds")
        ]
        print(f"largest metric difference, {mode} vs {first_mode}: {max(differences):.3g}")


if __name__ == "__main__":
    main()
