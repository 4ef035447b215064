"""Move the registry alias ``champion`` to a model version that passes the check.

The check: the version's validation loss (tag ``val_loss``, else its run's ``val/loss`` metric) is
not worse than the current champion's, and every ``mlflow.promote_require`` condition holds on the
``eval/`` metrics that ``jobs.evaluate`` logged to the version's run (e.g. ``held_out_loss <=
champion``, ``frame_consistency >= 0.9``). Exit status 0 when promoted (or already the champion),
1 when refused, 2 when the store, model, version or alias does not exist (one line saying what
the registry holds).
"""

from __future__ import annotations

import argparse
import sys

from jobs import cli

JOB = cli.Job(
    name="promote",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.promote --config configs/tiny.yaml                 # the current candidate
python -m jobs.promote --config configs/tiny.yaml --version 3
python -m jobs.promote --config configs/tiny.yaml \\
  "mlflow.promote_require=[held_out_loss <= champion, frame_consistency >= 0.9]"
""",
    sections=("mlflow",),
)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", default=None, help="model version (default: the candidate)")
    parser.add_argument("--force", action="store_true", help="promote even if the check fails")


def main(argv: list[str] | None = None) -> int:
    from tracking.registry import promote, promote_preflight
    from tracking.runs import resolve_tracking_uri

    cfg, args = cli.parse(argv, JOB, _arguments)
    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    promote_preflight(tracking_uri)
    decision, version = promote(cfg, tracking_uri, version=args.version, force=args.force)
    verdict = "not promoted" if not decision.promote else "promoted" if decision.changed else "kept"
    print(f"{cfg.mlflow.registered_model} version {version}: {verdict} ({decision.reason})")
    return 0 if decision.promote else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
