"""Move the registry alias ``champion`` to a model version that passes the check.

    python -m jobs.promote --config configs/tiny.yaml              # the current candidate
    python -m jobs.promote --config configs/tiny.yaml --version 3

The check: the version's validation loss (tag ``val_loss``, else its run's ``val_loss`` metric) is
not worse than the current champion's. Exit status 0 when promoted, 1 when refused.
"""

from __future__ import annotations

import argparse
import sys

from animatediff.config import load_config
from animatediff.registry import promote
from animatediff.tracking import resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML preset under configs/")
    parser.add_argument("--version", default=None, help="model version (default: the candidate)")
    parser.add_argument("--force", action="store_true", help="promote even if the check fails")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mlflow.experiment=x")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    decision, version = promote(
        cfg, resolve_tracking_uri(cfg.mlflow), version=args.version, force=args.force
    )
    verdict = "promoted" if decision.promote else "not promoted"
    print(f"{cfg.mlflow.registered_model} version {version}: {verdict} ({decision.reason})")
    return 0 if decision.promote else 1


if __name__ == "__main__":
    sys.exit(main())
