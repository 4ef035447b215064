"""Adapting the trained Moving Digits motion module (after `make reproduce`): issue 13's two
demonstrations, on the reproduction's own base, motion module and digit classifier.

    .venv/bin/python -m experiments.moving_digits.adapt finetune      # a new speed: vs scratch
    .venv/bin/python -m experiments.moving_digits.adapt motion_lora   # a zoom-in MotionLoRA

``finetune``: a new domain, digits moving ``--speed`` px per frame (the module learned
``reproduce.speed``). Two motion modules train for the same ``--steps`` on the same new clips:
one from scratch (a fresh module, ``proj_out`` zero) and one with ``train.init_from`` the trained
module (fresh optimizer). Both, and the trained module as it is, are scored by ``jobs.evaluate``
on held-out digits at the new speed: the held-out loss and the fitted speed of the generated
digits (``displacement_per_frame``, the target is ``--speed``) are what adaptation should move.

``motion_lora``: camera motion by rule (``data.camera_motion=zoom_in``) on new clips of the
module's own domain, a MotionLoRA (``train.stage=motion_lora``) on the frozen trained module,
then videos at LoRA scales 0 to 1 on held-out seeds: the subject's growth per frame
(``metrics.scale_growth``, the slope of its log size) should rise with the scale. The same
measure on the rendered training clips with and without the zoom calibrates it.

Every run is tracked in the preset's MLflow store (``train.register=false``: nothing is registered
over the reproduction's models); results print as tables and go to ``<work>/adapt/*.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from animatediff.config import Config, load_config
from animatediff.report import contact_sheet, save_png
from experiments.moving_digits import data
from experiments.moving_digits.probes import PRESET, trained_paths
from experiments.moving_digits.run import (
    clip_data,
    evaluate,
    preprocess,
    scoring,
    sheet,
    stage_config,
    train,
    with_overrides,
)

FINETUNE_COLUMNS = (
    "held_out_loss",
    "displacement_per_frame",
    "moving_share",
    "direction_accuracy",
    "label_share",
    "frame_consistency",
    "order_sensitivity",
)


def trained_setup(args: argparse.Namespace) -> tuple[Config, Path, Path]:
    """``(preset on the trained base, motion module directory, work folder of this probe)``."""
    cfg = load_config(args.config, args.overrides)
    base, motion = trained_paths(cfg)
    cfg = with_overrides(cfg, [f"model.base.pretrained={base}"])
    work = Path(args.work).resolve() / "adapt" / args.experiment
    work.mkdir(parents=True, exist_ok=True)
    return cfg, motion, work


def clip_sets(
    cfg: Config, work: Path, speed: int, clips: int, seed: int
) -> tuple[list[data.Item], Path, Path]:
    """Training clips (training digits) and held-out clips (held-out digits) at ``speed`` px per
    frame; returns the training items and both collections' CSVs."""
    rc = dataclasses.replace(cfg.reproduce, speed=speed)
    rng = np.random.default_rng(seed)
    train_digits, held_digits = data.digit_split(rc)
    plain = (rc.background, rc.foreground)
    items = data.clips(train_digits, clips, rng, rc, plain)
    held = data.clips(held_digits, rc.heldout_clips, rng, rc, plain)
    return (
        items,
        data.write_collection(work / "videos" / "train", items),
        data.write_collection(work / "videos" / "heldout", held),
    )


def markdown(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    lines = ["| condition | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def finetune(args: argparse.Namespace) -> str:
    cfg, motion, work = trained_setup(args)
    rc = cfg.reproduce
    _, train_csv, held_csv = clip_sets(cfg, work, args.speed, args.clips, rc.seed + 1)
    train_uri = preprocess(cfg, train_csv, work / "latents" / "train", rc.frames)
    held_uri = preprocess(cfg, held_csv, work / "latents" / "heldout", rc.frames)
    common = [
        f"train.data_uri={train_uri}",
        f"train.val_data_uri={held_uri}",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.register=false",
        *clip_data(cfg),
    ]
    seconds: dict[str, float] = {}
    modules: dict[str, str] = {"as-is": str(motion)}
    for condition, extra in (("scratch", []), ("finetuned", [f"train.init_from={motion}"])):
        start = time.perf_counter()
        run = f"digits-speed{args.speed}-{condition}-{args.steps}"
        stage = stage_config(cfg, run, [*common, *extra])
        modules[condition] = str(train(stage, work).motion_dir)
        seconds[condition] = time.perf_counter() - start
    # Scored as the chain scores, at the new speed (half of it is the slowest that counts as moving).
    at_speed = dataclasses.replace(cfg, reproduce=dataclasses.replace(rc, speed=args.speed))
    classifier = Path(args.work).resolve() / "classifier"
    scored = [*scoring(at_speed, work, held_uri, classifier), "evaluate.log_to=own_run"]
    folders = {condition: f"speed{args.speed}-{condition}" for condition in modules}
    scores = evaluate(cfg, {folders[c]: (module, scored) for c, module in modules.items()})
    metrics = {condition: scores[folder] for condition, folder in folders.items()}
    picture = save_png(sheet(work, cfg, 3, list(folders.values())), work / "finetune_sheet.png")
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    return (
        f"New domain: digits moving {args.speed} px/frame (trained on {rc.speed}); "
        f"{args.clips} training clips, {rc.heldout_clips} held-out clips of held-out digits; "
        f"{args.steps} steps each (training time: {timing}). Videos: {picture}\n\n"
        + markdown(metrics, FINETUNE_COLUMNS)
    )


def motion_lora(args: argparse.Namespace) -> str:
    from animatediff.checkpoints import load_any
    from animatediff.metrics import scale_growth
    from animatediff.motion_lora import merge_motion_loras, read_motion_lora
    from animatediff.sampling import TextToVideo

    cfg, motion, work = trained_setup(args)
    rc = cfg.reproduce
    camera = ["data.camera_motion=zoom_in", f"data.camera_strength={args.strength}"]
    items, train_csv, _ = clip_sets(cfg, work, rc.speed, args.clips, rc.seed + 2)
    train_uri = preprocess(cfg, train_csv, work / "latents" / "train", rc.frames, camera)
    start = time.perf_counter()
    stage = stage_config(
        cfg,
        f"digits-zoom-in-lora-{args.steps}",
        [
            "train.stage=motion_lora",
            f"train.init_from={motion}",
            f"train.data_uri={train_uri}",
            f"train.max_steps={args.steps}",
            f"train.checkpoint_every={args.steps}",
            f"train.lora.rank={args.rank}",
            "train.lora.name=zoom_in",
            "train.register=false",
            *camera,
            *clip_data(cfg),
        ],
    )
    outcome = train(stage, work)
    train_seconds = time.perf_counter() - start

    from pipelines.camera import apply_camera_motion

    sample = items[: args.prompts]
    calibration = {
        "rendered clips": np.mean([scale_growth(item.frames) for item in sample]),
        "rendered clips, zoomed": np.mean(
            [
                scale_growth(apply_camera_motion(item.frames, "zoom_in", args.strength))
                for item in sample
            ]
        ),
    }
    modules, motion_cfg = load_any(motion, defaults=cfg.model.motion)
    cfg = cfg.with_motion(motion_cfg)
    lora = read_motion_lora(outcome.export_path)

    def caption(index: int) -> str:
        return data.caption(index % rc.eval_digits, rc.directions[index % len(rc.directions)])

    seed = rc.eval_seed + 30_000  # seeds no other stage of the experiment draws
    plain = TextToVideo(cfg, modules)(caption(0), seed=seed)
    rows, shown, labels, scale0_difference = [], [], [], None
    for scale in args.scales:
        pipeline = TextToVideo(cfg, merge_motion_loras(modules, [(lora, scale)]))
        growth = []
        for index in range(args.prompts):
            video = pipeline(caption(index), seed=seed + index)
            growth.append(scale_growth(video))
            if index == 0 and scale == 0:
                scale0_difference = int(np.abs(video.astype(int) - plain.astype(int)).max())
            if index < 3:
                shown.append(video)
                labels.append(f"LoRA scale {scale:g}: {caption(index)}")
        finite = np.asarray(growth)[np.isfinite(growth)]
        rows.append((scale, float(finite.mean()), float(finite.std()), len(finite)))
    picture = save_png(contact_sheet(shown, labels), work / "zoom_sheet.png")
    lines = [
        f"MotionLoRA rank {args.rank}, {args.steps} steps on {args.clips} clips zoomed in by "
        f"{args.strength} (training {train_seconds:.0f} s). Growth = slope of log(subject size) "
        f"per frame, over {args.prompts} held-out seeds per scale.",
        "",
        *(f"- {name}: {value:+.4f}" for name, value in calibration.items()),
        "",
        "| LoRA scale | growth per frame (mean) | std | videos measured |",
        "|---|---|---|---|",
        *(f"| {scale:g} | {mean:+.4f} | {std:.4f} | {n} |" for scale, mean, std, n in rows),
        "",
        "Scale 0 against the plain module (same prompt and seed): largest pixel difference "
        f"{scale0_difference} (of 255). Videos: {picture}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # As jobs.reproduce: OpenMP's spinning threads cost a shared CPU machine several times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["finetune", "motion_lora"])
    parser.add_argument("--config", default=str(PRESET))
    parser.add_argument("--work", default="outputs/reproduce", help="the reproduction's folder")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--clips", type=int, default=1000, help="training clips rendered")
    parser.add_argument("--speed", type=int, default=1, help="finetune: the new speed, px/frame")
    parser.add_argument("--strength", type=float, default=0.25, help="motion_lora: the zoom")
    parser.add_argument("--rank", type=int, default=8, help="motion_lora: LoRA rank")
    parser.add_argument("--prompts", type=int, default=24, help="motion_lora: seeds per scale")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order

    from jobs.cluster import init_ray

    init_ray(load_config(args.config, args.overrides), hide_gpus=True, log_to_driver=False)
    result = {"finetune": finetune, "motion_lora": motion_lora}[args.experiment](args)
    out = Path(args.work).resolve() / "adapt" / f"{args.experiment}.md"
    out.write_text(result + "\n")
    print(f"\n{result}\n\n-> {out}")


if __name__ == "__main__":
    main()
