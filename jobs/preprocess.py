"""Decode and VAE-encode a video collection into cached latent shards."""

from __future__ import annotations

import sys

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="preprocess",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.preprocess --config configs/tiny.yaml data.format=csv \\
    data.input=clips/clips.csv data.output=outputs/latents
ray job submit --working-dir . -- python -m jobs.preprocess --config configs/sd15_webvid.yaml \\
    data.input=s3://bucket/webvid/results_10M_train.csv data.video_root=s3://bucket/webvid/videos
""",
    sections=("data", "model.base", "storage", "mlflow"),
)


def main(argv: list[str] | None = None) -> int:
    from pipelines.preprocess import format_summary, run_preprocess

    cfg, _ = cli.parse(argv, JOB)
    init_ray(cfg)
    summary = run_preprocess(cfg)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
