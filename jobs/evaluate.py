"""Score a motion module: held-out denoising loss and its frame-order check, generated videos'
consistency and motion, a report with a contact sheet; metrics to MLflow."""

from __future__ import annotations

import os

# Before torch is imported: the driver measures the held-out loss while the generation actors
# run, and spinning OpenMP threads would take their cores on a CPU machine (see jobs.reproduce).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="evaluate",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.evaluate --config configs/tiny.yaml train.data_uri=outputs/latents
python -m jobs.evaluate --config configs/moving_digits.yaml evaluate.model=candidate \\
    evaluate.features=classifier:outputs/reproduce/classifier
""",
    sections=("evaluate", "sample", "model", "mlflow", "train.data_uri", "storage"),
)


def main(argv: list[str] | None = None) -> int:
    from pipelines.evaluate import SUMMARY_COLUMNS, preflight, run_evaluation

    cfg, _ = cli.parse(argv, JOB)
    preflight(cfg)
    init_ray(cfg)
    result = run_evaluation(cfg)
    print(f"evaluated {result.source.uri} (MLflow run {result.run_id})")
    for name in SUMMARY_COLUMNS:
        if name in result.metrics:
            print(f"  {name:<24}{result.metrics[name]:.4f}")
    print(f"  report                  {result.report}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
