"""Probes of the trained Moving Digits models (after `make reproduce`): the reproduction's own
base, motion module and digit classifier, found in its MLflow store and output folder.

    .venv/bin/python -m experiments.moving_digits.probes long_video   # 64 frames vs 8
    .venv/bin/python -m experiments.moving_digits.probes direction    # seed or caption?
    .venv/bin/python -m experiments.moving_digits.probes text_path    # what the base hears
    .venv/bin/python -m experiments.moving_digits.probes frames       # where digits are lost
    .venv/bin/python -m experiments.moving_digits.probes lora_scale   # the style LoRA's cost
    .venv/bin/python -m experiments.moving_digits.probes style        # the style claim's videos

``long_video``: videos of 64 frames made with sliding windows, against the 8-frame training
length. The same prompts and seeds at both lengths (``sample.context_frames`` and
``sample.context_overlap`` from the preset). Per video, with the digit classifier as the feature
extractor: ``frame_consistency`` (mean cosine of consecutive frames' features), the share of frames
showing the caption's digit (``label_share``) and agreeing with each other (``label_agreement``),
the subject's mean coverage of the canvas, and, for the long videos, the consistency at the
frame pairs that cross a window's edge against the rest, and of the last 8 frames (drift).

``direction``: what decides the direction a generated digit moves in. Every seed is sampled
with each of the caption's directions (same digit, same initial noise): if the caption steered
the motion, the four videos of a seed would move four ways; if the noise decides, they move
alike. Printed: the accuracy, and how many distinct directions the captions of one seed reach.

``text_path``: the motion module has no text input; a caption reaches it only through the frozen
base's features. How much the base's noise prediction moves when only the direction word changes,
against when only the digit changes (relative L2, the same noisy latents, several timesteps).

``frames``: where frames lose the caption's digit. The share of frames the digit classifier gives
the caption's digit, by frame index and by digit, for every condition's evaluation videos and for
the held-out clips decoded by the VAE (``r``, real data), and what the scorer took the other
frames for. The videos are read back from their GIFs, which store a run of identical frames once:
``a2`` is left out, and so is any video whose GIF merged frames. A GIF's palette can move a frame
across the classifier's boundary, so a condition's share may differ from its table's in the last
digit.

``lora_scale``: what the personalized base (c) costs the motion module, against how far the style
LoRA moves the base. For each LoRA scale in ``--scales`` (0 is the base of (b), 1 the base of (c)),
the evaluation's prompts and seeds plus ``--repeats - 1`` more seeds per caption are generated
with the trained module and with the identity module (independent frames, as (a1) and (c0)).
Per scale and module: the share of frames showing the caption's digit (overall and by digit),
the direction accuracy, the displacement per frame, the frame consistency and the style
difference to the identity module's videos at scale 1 (the personalized stills, (c0)), and the
share of videos whose frames are drawn in different styles (``canvas_spread``). The direction
and speed are also measured against each frame's own canvas colour, as the evaluation does not
(``frame_canvas_trajectory``). The trained module's first videos at each scale go to
``<work>/lora_scale.png``. Each ``--off`` adds a row per scale: the trained module with its
motion modules under the given blocks turned off (``without_blocks``), e.g. ``--off
down_blocks.0,up_blocks.1`` for the latent's full-size level of the preset's two-level UNet.

``style``: what the style claim compares, read back from the evaluation of (c) and (c0).
Per condition: the videos holding a frame on the plain style's canvas (``plain_frames``, from the
GIFs), the mean subject and canvas colours (the evaluation's per-video ``colour_statistics`` in
``videos.jsonl``, one canvas colour per video, so a plain frame's canvas counts as subject) and
their distance from the rendered style stills that the LoRA trained on; then the claim's distance
of (c) from (c0), over all videos (the claim itself) and over the videos without a plain frame.
Needs no model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from animatediff.config import Config, ReproduceConfig, load_config

PRESET = Path(__file__).resolve().parents[2] / "configs" / "moving_digits.yaml"


def _finished_run_artifacts(tracking_uri: str, experiment: str, run_name: str) -> Path:
    """The local artifact directory of the newest finished run called ``run_name``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {tracking_uri}: run it first")
    runs = client.search_runs(
        [found.experiment_id],
        f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"no finished run {run_name!r} in {experiment!r}: run `make reproduce`")
    return Path(runs[0].info.artifact_uri.removeprefix("file://"))


def handover_frames(num_frames: int, context: int, overlap: int) -> list[int]:
    """Indices ``i`` where the pair of frames ``(i, i + 1)`` crosses a window's edge: the frame
    before a window starts and the last frame of a window that another one follows."""
    from animatediff.sampling import context_windows

    windows = context_windows(num_frames, context, overlap)
    edges = {w[0] - 1 for w in windows[1:]} | {w[-1] for w in windows[:-1]}
    return sorted(i for i in edges if 0 <= i < num_frames - 1)


def score(video: np.ndarray, extractor, label: int) -> dict[str, float]:
    from animatediff.metrics import foreground_coverage, frame_consistency, label_agreement

    features = extractor(video)
    agreement = label_agreement(extractor.classify(video), label)
    return {
        "frame_consistency": frame_consistency(features),
        "label_share": agreement.expected,
        "label_agreement": agreement.majority,
        "coverage": float(foreground_coverage(video).mean()),
        "last8_consistency": frame_consistency(features[-8:]),
        "last8_label_share": label_agreement(extractor.classify(video[-8:]), label).expected,
    }


def seam_consistency(video: np.ndarray, extractor, cfg: Config) -> tuple[float, float]:
    """``(mean cosine across window handovers, mean cosine elsewhere)`` of consecutive frames."""
    import torch

    features = torch.as_tensor(extractor(video)).double()
    cosine = torch.nn.functional.cosine_similarity(features[:-1], features[1:], dim=1).numpy()
    seams = handover_frames(len(video), cfg.sample.context_frames, cfg.sample.context_overlap)
    inside = np.ones(len(cosine), dtype=bool)
    inside[seams] = False
    return float(cosine[seams].mean()), float(cosine[inside].mean())


def trained_paths(cfg: Config) -> tuple[Path, Path]:
    """``(base pipeline directory, native motion module directory)`` that the reproduction's
    runs ``digits-base`` and ``digits-motion`` logged to its MLflow store."""
    from tracking.runs import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    base = _finished_run_artifacts(tracking_uri, cfg.mlflow.experiment, "digits-base")
    motion = _finished_run_artifacts(tracking_uri, cfg.mlflow.experiment, "digits-motion")
    return base / "pipeline", motion / "motion_module"


def load_trained(args: argparse.Namespace) -> tuple[Config, object, object]:
    """``(cfg, TextToVideo, classifier extractor)`` of the reproduction's trained models."""
    from animatediff.sampling import TextToVideo

    cfg, modules, extractor = trained_models(args)
    return cfg, TextToVideo(cfg, modules), extractor


def trained_models(args: argparse.Namespace) -> tuple[Config, object, object]:
    """``(cfg on the trained base, the trained motion modules, classifier extractor)``."""
    from animatediff.checkpoints import load_any
    from animatediff.features import load_extractor

    cfg = load_config(args.config, args.overrides)
    base, motion = trained_paths(cfg)
    modules, motion_cfg = load_any(motion, defaults=cfg.model.motion)
    cfg = cfg.with_base(dataclasses.replace(cfg.model.base, pretrained=str(base)))
    cfg = cfg.with_motion(motion_cfg)
    extractor = load_extractor(f"classifier:{Path(args.work) / 'classifier'}")
    return cfg, modules, extractor


def long_video(args: argparse.Namespace) -> None:
    from experiments.moving_digits.data import caption

    cfg, t2v, extractor = load_trained(args)
    rc = cfg.reproduce
    short_len = rc.frames
    rows: dict[int, list[dict[str, float]]] = {short_len: [], args.frames: []}
    seams, elsewhere, seconds = [], [], {short_len: 0.0, args.frames: 0.0}
    for index in range(args.prompts):
        label, direction = index % rc.eval_digits, rc.directions[index % len(rc.directions)]
        prompt, seed = caption(label, direction), rc.eval_seed + 10_000 + index
        for frames in (short_len, args.frames):
            start = time.perf_counter()
            video = t2v(prompt, seed=seed, num_frames=frames)
            seconds[frames] += time.perf_counter() - start
            rows[frames].append(score(video, extractor, label))
            if frames > cfg.sample.context_frames:
                at_seams, inside = seam_consistency(video, extractor, cfg)
                seams.append(at_seams)
                elsewhere.append(inside)

    columns = list(rows[short_len][0])
    print(f"{args.prompts} prompts, held-out seeds; windows of {cfg.sample.context_frames} frames")
    print(f"overlapping by {cfg.sample.context_overlap}; mean over the videos\n")
    print("| frames | " + " | ".join(columns) + " | s/video |")
    print("|---" * (len(columns) + 2) + "|")
    for frames, scored in rows.items():
        means = [np.mean([row[c] for row in scored]) for c in columns]
        cells = " | ".join(f"{m:.3f}" for m in means)
        print(f"| {frames} | {cells} | {seconds[frames] / args.prompts:.1f} |")
    print(
        f"\n{args.frames}-frame videos: consecutive-frame cosine {np.mean(seams):.3f} across window "
        f"edges vs {np.mean(elsewhere):.3f} elsewhere"
    )


def direction(args: argparse.Namespace) -> None:
    from collections import Counter

    from animatediff.metrics import trajectory
    from experiments.moving_digits.data import caption

    cfg, t2v, _ = load_trained(args)
    rc = cfg.reproduce
    correct, distinct, modal_share = 0, [], []
    for index in range(args.prompts):
        label, seed = index % rc.eval_digits, rc.eval_seed + 20_000 + index
        moved = []
        for wanted in rc.directions:
            video = t2v(caption(label, wanted), seed=seed)
            moved.append(trajectory(video, min_speed=rc.speed / 2).direction)
            correct += moved[-1] == wanted
        distinct.append(len(set(moved)))
        modal_share.append(Counter(moved).most_common(1)[0][1] / len(moved))
        print(f"seed {seed}, digit {label}: captions {list(rc.directions)} -> {moved}", flush=True)
    total = args.prompts * len(rc.directions)
    print(
        f"\n{args.prompts} seeds x {len(rc.directions)} captions: direction accuracy "
        f"{correct / total:.3f} (chance {1 / len(rc.directions):.2f}); distinct directions per "
        f"seed {np.mean(distinct):.2f} of {len(rc.directions)}; share of a seed's videos moving "
        f"its most common way {np.mean(modal_share):.3f} (1.0: the noise alone decides)"
    )


def text_path(args: argparse.Namespace) -> None:
    import torch

    from experiments.moving_digits.data import caption

    cfg, t2v, _ = load_trained(args)
    rc = cfg.reproduce
    unet = t2v.unet.unet2d  # the frozen base alone
    generator = torch.Generator().manual_seed(0)
    size = cfg.sample.height // 8
    latents = torch.randn(16, 4, size, size, generator=generator)
    first, other = rc.directions[0], rc.directions[1]

    def prediction(text: str, t: int) -> torch.Tensor:
        context = t2v.encode_prompts([text] * len(latents))
        steps = torch.full((len(latents),), t)
        return unet(latents, steps, encoder_hidden_states=context).sample

    with torch.no_grad():
        for t in (250, 500, 750):
            reference = prediction(caption(3, first), t)
            changes = {
                f"direction word ({first} -> {other})": prediction(caption(3, other), t),
                "digit (3 -> 5)": prediction(caption(5, first), t),
                "digit (3 -> 8)": prediction(caption(8, first), t),
            }
            cells = ", ".join(
                f"{name}: {float((value - reference).norm() / reference.norm()):.4f}"
                for name, value in changes.items()
            )
            print(f"t={t}: relative change of the base's prediction: {cells}")


def frames(args: argparse.Namespace) -> None:
    from collections import Counter

    from experiments.moving_digits import run

    cfg, _, extractor = trained_models(args)
    work = Path(args.work)
    prompts = run.read_prompts(work)
    sets = {}  # name: (videos (n, frames, h, w, 3) uint8, the captions' digits (n,))
    for name in run.CONDITIONS:
        if name == "a2":
            continue
        gifs = [
            run.read_gif(work / "evaluate" / name / f"{i:05d}.gif") for i in range(len(prompts))
        ]
        # A GIF stores a run of identical frames once: such a video has no frame index to read.
        kept = [i for i, gif in enumerate(gifs) if len(gif) == cfg.reproduce.frames]
        if len(kept) < len(gifs):
            print(f"({name}) {len(gifs) - len(kept)} videos left out: GIFs with merged frames")
        if kept:
            labels = np.array([prompts[i]["expect"]["label"] for i in kept])
            sets[name] = (np.stack([gifs[i] for i in kept]), labels)
    videos, captions = run.held_out_videos(cfg, str(work / "latents" / "heldout"))
    expected = run.caption_expectations(cfg.reproduce)
    sets["r"] = (videos, np.array([expected[caption]["label"] for caption in captions]))

    print(
        "share of frames showing the caption's digit: all | by frame index | by digit | "
        "what the lost frames were classified as (class: frames)\n"
    )
    for name, (videos, labels) in sets.items():
        classes = np.stack([extractor.classify(video).numpy() for video in videos])  # (n, frames)
        right = classes == labels[:, None]
        by_frame = " ".join(f"{share:.3f}" for share in right.mean(axis=0))
        by_digit = shares_by_digit(right, labels)
        lost = Counter(classes[~right].tolist()).most_common()
        lost_as = " ".join(f"{cls}:{count}" for cls, count in lost) or "none"
        print(
            f"({name}) {len(videos)} videos: {right.mean():.4f} | {by_frame} | {by_digit} | "
            f"{lost_as}"
        )


def shares_by_digit(right: np.ndarray, labels: np.ndarray) -> str:
    """``"digit:share ..."``: the mean of ``right`` (per video ``(n,)`` or per frame
    ``(n, frames)``) over the videos of each caption digit in ``labels`` ``(n,)``."""
    return " ".join(f"{digit}:{right[labels == digit].mean():.2f}" for digit in np.unique(labels))


SWITCHING_SPREAD = 0.25
"""``canvas_spread`` above which a video's frames are drawn in different styles: a quarter of the
colour cube (the plain and the personalized canvases lie 0.58 apart)."""


def canvas_spread(video: np.ndarray) -> float:
    """The largest distance between two frames' canvas colours (each frame's border median), in
    [0, 1] units of the colour cube: near 0 when every frame has the same canvas."""
    canvases = frame_canvases(video)
    return float(np.linalg.norm(canvases[:, None] - canvases[None], axis=-1).max())


def frame_canvases(video: np.ndarray) -> np.ndarray:
    """``(frames, 3)`` float in [0, 1]: each frame's canvas colour (its border's median)."""
    from animatediff.metrics import background_colour

    return np.stack([background_colour(frame[None]) for frame in video]) / 255.0


def frame_canvas_trajectory(video: np.ndarray, cfg: Config) -> object:
    """The evaluation's ``trajectory`` of ``video``, its foreground taken against each frame's
    own canvas colour instead of one colour for the whole video."""
    from animatediff.metrics import foreground_mask, trajectory
    from experiments.moving_digits import run

    mask = np.concatenate([foreground_mask(frame[None]) for frame in video])  # (frames, h, w)
    directions = run.trajectory_directions(cfg.reproduce)
    return trajectory(video, directions, min_speed=cfg.reproduce.speed / 2, mask=mask)


def without_blocks(modules: Any, blocks: Sequence[str]) -> Any:
    """A copy of ``modules`` (``MotionModules``) whose motion modules under ``blocks`` (e.g.
    ``down_blocks.0``, ``mid_block``) pass their input through: their ``proj_out``, the layer
    before the residual sum, zeroed."""
    import copy

    import torch

    turned_off = copy.deepcopy(modules)
    layers = [
        layer
        for name, layer in turned_off.named_modules()
        if name.endswith(".proj_out") and name.startswith(tuple(f"{b}." for b in blocks))
    ]
    if not layers:
        raise SystemExit(f"--off {','.join(blocks)}: no motion module under these blocks")
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()
    return turned_off


def plain_frames(video: np.ndarray, rc: ReproduceConfig) -> np.ndarray:
    """``(frames,)`` bool: the frames of ``video`` ``(frames, height, width, 3)`` uint8 whose canvas
    (the border's median) is nearer the plain style's canvas colour than the personal style's. On
    the personalized base, frames that fell back to the style the motion module trained on."""
    canvases = frame_canvases(video)
    to_plain = np.linalg.norm(canvases - np.asarray(rc.background), axis=1)
    to_personal = np.linalg.norm(canvases - np.asarray(rc.style_background), axis=1)
    return to_plain < to_personal


def style(args: argparse.Namespace) -> None:
    from animatediff.evaluation import STYLE_COLUMNS
    from animatediff.metrics import colour_statistics, relative_difference
    from experiments.moving_digits import data, run

    rc = load_config(args.config, args.overrides).reproduce
    work = Path(args.work)
    stills = np.concatenate(
        [data.read_video(path) for path in sorted((work / "videos" / "style").glob("*.mp4"))]
    )  # (stills, height, width, 3)
    rendered = colour_statistics(stills).vector()
    print(f"(stills) {len(stills)} rendered style stills: {colours(rendered)}")
    vectors, plain = {}, {}  # per condition: (videos, 6) style vectors, (videos,) plain frames
    for name in ("c", "c0"):
        folder = work / "evaluate" / name
        # The colours the evaluation measured on the generated arrays (the GIFs are quantised).
        rows = [json.loads(line) for line in (folder / "videos.jsonl").read_text().splitlines()]
        vectors[name] = np.array([[row[n] for n in STYLE_COLUMNS] for row in rows], float)
        videos = [run.read_gif(folder / row["file"]) for row in rows]
        plain[name] = np.array([plain_frames(video, rc).sum() for video in videos])
        mean = np.nanmean(vectors[name], axis=0)
        print(
            f"({name}) {len(videos)} videos: {np.count_nonzero(plain[name])} with a plain frame, "
            f"{plain[name].sum()} plain frames of {sum(map(len, videos))}; {colours(mean)}; "
            f"{relative_difference(mean, rendered):.2%} from the rendered stills"
        )
    kept = {name: vectors[name][plain[name] == 0] for name in vectors}
    everything, one_style = (
        relative_difference(np.nanmean(v["c"], axis=0), np.nanmean(v["c0"], axis=0))
        for v in (vectors, kept)
    )
    print(
        f"style of (c) vs (c0): {everything:.2%} over all videos, {one_style:.2%} over the videos "
        f"without a plain frame ({len(kept['c'])} and {len(kept['c0'])})"
    )


def colours(vector: np.ndarray) -> str:
    """A ``ColourStatistics.vector()`` ``(6,)`` as ``subject (r, g, b) on (r, g, b)``."""
    subject, canvas = (", ".join(f"{x:.3f}" for x in part) for part in (vector[:3], vector[3:]))
    return f"subject ({subject}) on ({canvas})"


def lora_scale(args: argparse.Namespace) -> None:
    from animatediff.config.model import LoraConfig
    from animatediff.evaluation import summarize
    from animatediff.report import contact_sheet, save_png
    from animatediff.sampling import TextToVideo
    from experiments.moving_digits import run

    cfg, trained, extractor = trained_models(args)
    lora = Path(args.work) / "models" / "digits-style-lora" / "lora.safetensors"
    prompts = run.read_prompts(Path(args.work))
    captions = [p["prompt"] for p in prompts] * args.repeats
    # The evaluation's own seeds first (scale 1 with the module is (c), scale 0 is (b)), then
    # seeds no evaluation used.
    seeds = [p["seed"] for p in prompts]
    seeds += [cfg.reproduce.eval_seed + 30_000 + i for i in range(len(captions) - len(seeds))]
    expected = run.caption_expectations(cfg.reproduce)
    labels = np.array([expected[c]["label"] for c in captions])
    directions = [expected[c]["direction"] for c in captions]
    shown = run.sheet_indices(len(prompts), 4)  # as the report's sheet
    sheet_videos, sheet_labels = [], []
    scored: dict[tuple[float, str], dict[str, float]] = {}
    columns: dict[tuple[float, str], str] = {}  # the cells after the evaluation's measures
    variants = [("trained", trained), ("identity", None)]
    variants += [
        (f"{','.join(blocks)} off", without_blocks(trained, blocks)) for blocks in args.off
    ]
    for scale in args.scales:
        scaled = cfg.with_base(
            dataclasses.replace(cfg.model.base, loras=(LoraConfig(str(lora), scale),))
        )
        for module, modules in variants:
            t2v = TextToVideo(scaled, modules)
            videos = []
            for start in range(0, len(captions), len(prompts)):
                batch = slice(start, start + len(prompts))
                videos += t2v.generate(captions[batch], seeds=seeds[batch])
            rows = run.score_rows(videos, captions, extractor, cfg.reproduce)
            scored[scale, module] = summarize(rows)
            # Each video's share of frames showing the caption's digit; the videos are as long.
            right = np.array([row["label_share"] for row in rows])
            switched = np.array([canvas_spread(v) > SWITCHING_SPREAD for v in videos])
            by_digit = shares_by_digit(right, labels)
            shares = [f"{right[i].mean():.3f}" if i.any() else "-" for i in (switched, ~switched)]
            # The evaluation's trajectories take one canvas colour per video; here each frame's own.
            own = [frame_canvas_trajectory(v, cfg) for v in videos]
            own_direction = np.mean([t.direction == d for t, d in zip(own, directions)])
            own_speed = np.nanmean([t.displacement_per_frame for t in own])
            columns[scale, module] = (
                f"{own_direction:.3f} | {own_speed:.2f} | {switched.mean():.3f} | "
                f"{' | '.join(shares)} | {by_digit}"
            )
            if module == "trained":
                sheet_videos += [videos[i] for i in shown]
                sheet_labels += [f"LoRA {scale:g}: {captions[i]}" for i in shown]
            print(f"scale {scale} {module}: {scored[scale, module]['label_share']:.4f}", flush=True)

    sheet = save_png(contact_sheet(sheet_videos, sheet_labels), Path(args.work) / "lora_scale.png")
    print(f"the trained module's first videos at each scale: {sheet}")
    stills = scored.get((1.0, "identity"))
    print(f"\n{len(captions)} videos per row. style: relative difference of the mean colours to")
    print("the identity module's videos at LoRA scale 1 (the personalized stills, c0). switching:")
    print("share of videos whose frames' canvas colours lie more than a quarter of the colour cube")
    print("apart (frames drawn in different styles), and label_share in those videos | the rest.")
    print("own canvas: the trajectory against each frame's canvas colour, not the video's.\n")
    print(
        "| LoRA scale | module | label_share | direction | px/frame | frame_consistency | style "
        "| direction, own canvas | px/frame, own canvas | switching | label_share, switching "
        "| label_share, the rest | label_share by digit |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (scale, module), m in scored.items():
        style = run.style_difference(m, stills) if stills else float("nan")
        print(
            f"| {scale:g} | {module} | {m['label_share']:.4f} | {m['direction_accuracy']:.3f} | "
            f"{m['displacement_per_frame']:.2f} | {m['frame_consistency']:.4f} | {style:.3f} | "
            f"{columns[scale, module]} |"
        )


def main(argv: list[str] | None = None) -> None:
    probes = {
        "long_video": long_video,
        "direction": direction,
        "text_path": text_path,
        "frames": frames,
        "lora_scale": lora_scale,
        "style": style,
    }
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=list(probes))
    parser.add_argument("--config", default=str(PRESET))
    parser.add_argument("--work", default="outputs/reproduce", help="the reproduction's folder")
    parser.add_argument("--frames", type=int, default=64, help="long_video: frames")
    parser.add_argument("--prompts", type=int, default=12, help="prompts (direction: seeds)")
    parser.add_argument(
        "--scales",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="lora_scale: the style LoRA's scales, comma-separated",
    )
    parser.add_argument("--repeats", type=int, default=3, help="lora_scale: seeds per caption")
    parser.add_argument(
        "--off",
        action="append",
        default=[],
        type=lambda text: text.split(","),
        help="lora_scale: one more row with the motion modules under these blocks turned off",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    probes[args.probe](args)


if __name__ == "__main__":
    main()
