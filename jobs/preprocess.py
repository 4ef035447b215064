"""Decode and VAE-encode a video collection into cached latent shards.

    python -m jobs.preprocess --config configs/tiny.yaml data.input=videos.csv data.output=latents
    ray job submit --working-dir . -- python -m jobs.preprocess --config configs/sd15_webvid.yaml \\
        data.input=s3://bucket/webvid/results_10M_train.csv data.video_root=s3://bucket/webvid/videos

Connects to the Ray cluster it runs in (``ray job submit``), or starts a local one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from animatediff.config import parse_cli


def main(argv: Sequence[str] | None = None) -> dict:
    import ray

    from pipelines.preprocess import format_summary, run_preprocess

    cfg, _ = parse_cli(argv, description=__doc__.splitlines()[0])
    if not ray.is_initialized():
        ray.init()
    summary = run_preprocess(cfg)
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
