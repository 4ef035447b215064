"""Decode and VAE-encode a video collection into cached latent shards.

Exit status: 0 when the run succeeded; 1 when it finished but failed (no row encoded or cached,
or more than ``data.max_error_fraction`` of the rows failed: what was encoded is kept); 2 for a
usage error found before Ray starts (a missing ``data.input``, ``data.video_root`` or base model).
SIGTERM (``ray job stop``) interrupts the run like Ctrl-C: it records what it committed.
"""

from __future__ import annotations

import signal
import sys

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="preprocess",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.preprocess --config configs/tiny.yaml data.format=csv \\
    data.input=clips/clips.csv data.output=outputs/latents
python -m jobs.preprocess --config configs/tiny.yaml data.format=folder data.input=my_videos/
python -m jobs.preprocess --config configs/tiny.yaml data.format=ranges \\
    data.input=talk.srt data.long_video=talk.mp4
ray job submit --working-dir . -- python -m jobs.preprocess --config configs/sd15_webvid.yaml \\
    data.input=s3://bucket/webvid/results_10M_train.csv data.video_root=s3://bucket/webvid/videos
""",
    sections=("data", "model.base", "storage", "mlflow"),
)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    from pipelines.preprocess import format_summary, preflight, run_preprocess

    cfg, _ = cli.parse(argv, JOB)
    preflight(cfg)
    init_ray(cfg)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_preprocess(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(summary))
    if summary["status"] != "ok":
        print(f"error: {summary['failure']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
