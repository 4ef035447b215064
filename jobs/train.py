"""Train the motion module on Ray Train + DeepSpeed; track in MLflow; register the result.

Re-running with the same ``train.run_name`` and ``train.storage_path`` resumes from the latest
checkpoint and logs to the same MLflow run (see ``trainer``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from jobs import cli
from jobs.cluster import init_ray

JOB = cli.Job(
    name="train",
    summary=__doc__.splitlines()[0],
    examples="""
python -m jobs.train --config configs/tiny.yaml train.data_uri=outputs/latents train.max_steps=10
python -m jobs.train --config configs/tiny.yaml train.data_uri=outputs/latents \\
    data.camera_motion=zoom_in train.stage=motion_lora train.lora.rank=8 train.lora.name=zoom_in \\
    train.init_from=models:/animatediff-tiny-motion@champion
ray job submit --working-dir . -- python -m jobs.train --config configs/sd15_webvid.yaml \\
    train.data_uri=s3://bucket/latents train.num_workers=8 train.use_gpu=true
""",
    sections=("train", "model", "mlflow", "sample", "data", "storage"),
)


def main(argv: list[str] | None = None) -> int:
    from animatediff.preflight import train_preflight
    from trainer import run_training

    cfg, _ = cli.parse(argv, JOB)
    train_preflight(cfg)
    init_ray(cfg)
    # The export is in the checkpoint, the MLflow run and the registry; its local copy goes
    # with the job instead of staying in $TMPDIR.
    with tempfile.TemporaryDirectory(prefix="animatediff-train-") as exports:
        outcome = run_training(cfg, export_dir=Path(exports))
    print(
        f"trained to step {outcome.step}: val_loss={outcome.val_loss} "
        f"checkpoint={outcome.checkpoint_path} mlflow_run={outcome.run_id} "
        f"model_version={outcome.model_version}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
