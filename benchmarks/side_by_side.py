"""What the benchmarks on a finished reproduction share (``evaluate_pass``,
``preprocess_collections``, ``trainings_at_once``): their command line, and the table of the
modes they run side by side in one Ray session."""

from __future__ import annotations

import argparse


def reproduction_parser(doc: str, order: str) -> argparse.ArgumentParser:
    """``--work`` (a ``make reproduce`` folder), ``--config``, ``--order`` (the modes, in the
    order run; ``order`` by default) and the preset's dotted overrides. Each benchmark adds its
    own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", required=True, help="a finished reproduction's folder")
    parser.add_argument("--config", default="configs/moving_digits.yaml")
    parser.add_argument("--order", default=order, help="modes, in the order run")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the preset")
    return parser


def print_walls(walls: dict[str, float]) -> None:
    """A markdown table of each mode's wall seconds and its ratio to the first mode's."""
    first = next(iter(walls))
    print(f"\n| mode | wall s | vs {first} |\n|---|---:|---:|")
    for mode, seconds in walls.items():
        print(f"| {mode} | {seconds:.1f} | {seconds / walls[first]:.2f}x |")
    print()
