"""Offline batch generation: a prompts file -> one video per prompt and an index, via Ray Data."""

from __future__ import annotations

import sys

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="generate",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.generate --config configs/tiny.yaml generate.prompts=configs/prompts.txt
python -m jobs.generate --config configs/tiny.yaml generate.model=outputs/demo/motion_module
python -m jobs.generate --config configs/tiny.yaml "generate.motion_loras=[{name: zoom_in, scale: 0.8}]"
ray job submit --working-dir . -- python -m jobs.generate --config configs/sd15_webvid.yaml \\
    generate.model=3 output_dir=s3://bucket/videos
""",
    sections=("generate", "sample", "model", "output_dir", "mlflow", "storage"),
)


def main(argv: list[str] | None = None) -> int:
    from pipelines.generate import preflight, run_generate

    cfg, _ = cli.parse(argv, JOB)
    preflight(cfg)
    init_ray(cfg)
    summary = run_generate(cfg)
    print(
        f"generated {summary['videos']} videos in {summary['seconds']:.1f}s with "
        f"{summary['source'].uri} -> {summary['index']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
