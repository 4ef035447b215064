"""Training the Moving Digits motion module past the preset's steps (after `make reproduce`):
does the digit still jump?

    .venv/bin/python -m experiments.moving_digits.longer --steps 3000,4500

The preset stops the motion stage at 1,500 steps to fit the reproduction in 45 minutes. Here its
training (``digits-motion``) goes on from its last checkpoint, copied to
``<work>/longer/ray_results/digits-motion-longer``: the same optimizer state and data order, so
each of ``--steps`` gives the module that a run of that many steps from the start would (constant
learning rate after warm-up, exact resume). The chain's own run folder, MLflow run and registered
model stay as they are; the continuation is an MLflow run of its own, not registered.

Then (b), the frozen base with each module, and (c), the personalized base (the style LoRA)
with each, are scored as the chain scores them (held-out digits for the loss, held-out seeds for
the videos), the chain's own module first, all in one pass. Beside ``jobs.evaluate``'s means, the
same trajectories measured against each frame's own canvas colour (a frame that switches style
moves the evaluation's measured centre), the count of videos whose digit's centre strays more
than ``JUMP_RESIDUAL`` px from its straight line there (the jumps that docs/reproduction.md
describes) and the share of videos that switch style, all read back from the videos' GIFs.
Printed as a table and written to ``<work>/longer/longer.md``, with a contact sheet
(``longer_sheet.png``); the videos and reports go to ``<work>/longer/evaluate``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from animatediff.config import Config, load_config
from animatediff.report import save_png
from experiments.moving_digits.probes import (
    PRESET,
    SWITCHING_SPREAD,
    canvas_spread,
    frame_canvas_trajectory,
    trained_paths,
)
from experiments.moving_digits.run import (
    downstream_stages,
    evaluation_stages,
    personalized,
    read_gif,
    scoring,
    sheet,
    train,
    with_overrides,
)

RUN_NAME = "digits-motion-longer"
"""Not ``digits-motion``: the probes find the chain's module by that run name."""

JUMP_RESIDUAL = 1.5
"""Pixels of ``trajectory_residual`` above which a video counts as jumping: the four jumps of the
ninth run's (b) that docs/reproduction.md shows had 1.55-2.39 px, its other 36 videos 0.30-1.50
(a line drawn, not a gap: one of them sits at 1.50)."""

SHEET_ROWS = 4
"""Videos per condition on the contact sheet, as on the chain's (prompts 0, 10, 20 and 30 of 40):
the third is the 5 that jumps at 1,500 steps."""

COLUMNS = (
    "held_out_loss",
    "direction_accuracy",
    "displacement_per_frame",
    "trajectory_residual",
    "label_share",
    "frame_consistency",
    "order_sensitivity",
)
"""``jobs.evaluate``'s means, in the table's first columns."""

OWN_CANVAS_COLUMNS = (
    "direction, own canvas",
    "px/frame, own canvas",
    "residual, own canvas",
    f"videos above {JUMP_RESIDUAL} px, own canvas",
    "switching",
)
"""The table's last columns (``own_canvas``): the evaluation fits a trajectory against one canvas
colour per video, so a frame that switches to the other style moves the measured centre."""


def own_canvas(videos: list[np.ndarray], directions: list[str], cfg: Config) -> list[float]:
    """``OWN_CANVAS_COLUMNS`` of ``videos`` (each ``(frames, height, width, 3)`` uint8) whose
    captions name ``directions``: the trajectories against each frame's own canvas colour, and
    the share of videos whose frames are drawn in different styles."""
    trajectories = [frame_canvas_trajectory(video, cfg) for video in videos]
    residuals = np.array([t.residual for t in trajectories])
    return [
        float(np.mean([t.direction == d for t, d in zip(trajectories, directions, strict=True)])),
        float(np.nanmean([t.displacement_per_frame for t in trajectories])),
        float(np.nanmean(residuals)),
        int((residuals > JUMP_RESIDUAL).sum()),
        float(np.mean([canvas_spread(video) > SWITCHING_SPREAD for video in videos])),
    ]


def train_on(
    cfg: Config, reproduction: Path, chain_module: Path, steps: list[int]
) -> dict[int, str]:
    """The motion module's directory by training steps: the chain's own (``chain_module``), then
    each of ``steps`` (trained on from the chain's last checkpoint, in a copy of its run under
    ``reproduction/longer``). ``cfg``: the preset on the trained base."""
    from animatediff.storage import locate
    from trainer import checkpoint
    from trainer.driver import run_directory

    work = reproduction / "longer"
    uris = {name: str(reproduction / "latents" / name) for name in ("clips", "heldout", "style")}
    chain_stage = downstream_stages(cfg, uris)["motion"]
    if "://" in chain_stage.train.storage_path:
        raise SystemExit("train.storage_path: this experiment reads the chain's run locally")
    chain_run = Path(run_directory(chain_stage))
    found = checkpoint.latest(locate(chain_run))
    if found is None:
        raise SystemExit(f"no checkpoint of the chain's motion stage in {chain_run}")
    chain_steps = found[1].position.step
    if steps[0] <= chain_steps:
        raise SystemExit(f"--steps: each must exceed the chain's {chain_steps} steps")

    storage = work / "ray_results"
    if not (storage / RUN_NAME).exists():
        shutil.copytree(chain_run, storage / RUN_NAME)
    stage = with_overrides(
        chain_stage,
        [f"train.run_name={RUN_NAME}", f"train.storage_path={storage}", "train.register=false"],
    )
    modules = {chain_steps: str(chain_module)}
    for total in steps:
        module = work / "models" / f"steps-{total}"
        if not module.exists():  # not trained by an earlier call
            outcome = train(with_overrides(stage, [f"train.max_steps={total}"]), work)
            if outcome.step != total:
                raise SystemExit(
                    f"--steps {total}: the run in {storage / RUN_NAME} is at step {outcome.step}; "
                    "delete that folder to start again from the chain's checkpoint"
                )
            shutil.copytree(outcome.motion_dir, module)
        modules[total] = str(module)
    return modules


def score(cfg: Config, reproduction: Path, modules: dict[int, str]) -> str:
    """(b) and (c) with each of ``modules`` (by steps), scored in one pass: the markdown table,
    ending with the path of the contact sheet it draws."""
    from pipelines.evaluate import run_evaluations

    work = reproduction / "longer"
    heldout, classifier = str(reproduction / "latents" / "heldout"), reproduction / "classifier"
    scored = [*scoring(cfg, work, heldout, classifier), "evaluate.log_to=own_run"]
    lora = personalized(str(reproduction / "models" / "digits-style-lora" / "lora.safetensors"))
    runs = {f"b-{steps}": (module, scored) for steps, module in modules.items()}
    runs |= {f"c-{steps}": (module, [*scored, *lora]) for steps, module in modules.items()}
    stages = evaluation_stages(cfg, runs)
    results = run_evaluations(list(stages.values()))

    chain_steps = next(iter(modules))
    lines = [
        f"(b) the base and (c) the personalized base, each with the motion module after more "
        f"training ({chain_steps} steps: the chain's module); {len(results[0].videos)} videos each",
        "",
        "| condition | steps | " + " | ".join((*COLUMNS, *OWN_CANVAS_COLUMNS)) + " |",
        "|---" + "|---:" * (len(COLUMNS) + len(OWN_CANVAS_COLUMNS) + 1) + "|",
    ]
    for (name, evaluation), result in zip(stages.items(), results, strict=True):
        condition, steps = name.split("-")
        folder = Path(evaluation.output_dir) / evaluation.evaluate.output_subdir
        videos = [read_gif(folder / video["file"]) for video in result.videos]
        directions = [video["expect"]["direction"] for video in result.videos]
        cells = [result.metrics[column] for column in COLUMNS]
        cells += own_canvas(videos, directions, cfg)
        lines.append(f"| ({condition}) | {steps} | " + " | ".join(f"{c:.4g}" for c in cells) + " |")
    picture = save_png(sheet(work, cfg, SHEET_ROWS, list(runs)), work / "longer_sheet.png")
    return "\n".join([*lines, "", f"Videos: {picture}"])


def main(argv: list[str] | None = None) -> None:
    # As jobs.reproduce: OpenMP's spinning threads cost a shared CPU machine several times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(PRESET))
    parser.add_argument("--work", default="outputs/reproduce", help="the reproduction's folder")
    parser.add_argument(
        "--steps",
        type=lambda text: sorted(int(x) for x in text.split(",")),
        default=[3000, 4500],
        help="total training steps of each longer module, comma-separated",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order

    from jobs.cluster import init_ray

    cfg = load_config(args.config, args.overrides)
    base, chain_module = trained_paths(cfg)
    cfg = with_overrides(cfg, [f"model.base.pretrained={base}"])
    reproduction = Path(args.work).resolve()
    init_ray(cfg, hide_gpus=True, log_to_driver=False)
    table = score(cfg, reproduction, train_on(cfg, reproduction, chain_module, args.steps))
    (reproduction / "longer" / "longer.md").write_text(table + "\n")
    print(f"\n{table}\n\n-> {reproduction / 'longer' / 'longer.md'}")


if __name__ == "__main__":
    main()
