"""The Moving Digits chain: data -> VAE -> base (image stage) -> motion module -> LoRA -> scores.

    summary = run_reproduction(cfg, work)     # needs a running Ray; every stage prints progress

``jobs.reproduce`` checks ``reproduce.clip_bpe`` (``models.check_clip_bpe``) before it starts Ray.

Each model goes through the project's jobs with the preset plus the stage's overrides
(``reproduce.base_train``, ``motion_train``, ``lora_train``, ``ablation``), tracked in MLflow and
registered. Conditions, all on held-out digits (the held-out loss) and held-out seeds (videos):

- ``a1``: the base alone, every frame sampled on its own (an identity motion module);
- ``a2``: the base alone, one noise shared by all frames;
- ``b``: the base + the trained motion module;
- ``c``: the personalized base (+ its LoRA) + the same motion module;
- ``c0``: the personalized base alone (its stills: the style reference of ``c``);
- ``d``: the base + the ablation's motion module (e.g. a random ``proj_out`` at init).

Beside them, ``r``: the held-out clips themselves, decoded from their latents by the base's VAE
and scored the same way (``held_out_reference``): what each measure gives on real data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from animatediff.config import Config, ReproduceConfig, apply_overrides, from_dict, to_dict
from experiments.moving_digits import data, models
from jobs.cli import Progress

T = TypeVar("T")

CONDITIONS = {
    "a1": "base alone, frames sampled independently",
    "a2": "base alone, one noise for all frames",
    "b": "base + motion module",
    "c": "personalized base + the same motion module",
    "c0": "personalized base alone (style reference)",
    "d": "base + ablation's motion module",
}
REFERENCES = {"r": "held-out clips, VAE-decoded (real data, no generation)"}


def clip_data(cfg: Config) -> list[str]:
    """The ``data.`` overrides that read the reproduction's clips (frames, stride 1, canvas)."""
    rc = cfg.reproduce
    return [f"data.num_frames={rc.frames}", "data.stride=1", f"data.resolution={rc.canvas}"]


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with dotted overrides applied (what the command line would give)."""
    return from_dict(Config, apply_overrides(to_dict(cfg), list(overrides)))


@dataclass
class Sets:
    """The rendered collections (CSV paths) and their latent shards."""

    clips: Path
    stills: Path
    style: Path
    heldout: Path

    @classmethod
    def rendered(cls, work: Path) -> Sets:
        """The collections that ``render`` wrote under ``work``."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: data.collection_table(work / "videos" / name) for name in names})

    def to_preprocess(self, cfg: Config) -> dict[str, tuple[Path, int]]:
        """``{name: (table, frames per clip)}``, as ``preprocess_collections`` takes them: clips
        of ``reproduce.frames``, stills of one frame."""
        frames = cfg.reproduce.frames
        return {
            "clips": (self.clips, frames),
            "stills": (self.stills, 1),
            "style": (self.style, 1),
            "heldout": (self.heldout, frames),
        }


def render(cfg: Config, work: Path) -> tuple[Sets, dict[str, np.ndarray]]:
    """Write the four collections; return their CSVs and frames for the VAE and classifier."""
    rc = cfg.reproduce
    rng = np.random.default_rng(rc.seed)
    train_digits, held_digits = data.digit_split(rc)
    plain = (rc.background, rc.foreground)
    personal = (rc.style_background, rc.style_foreground)
    clip_items = data.clips(train_digits, rc.train_clips, rng, rc, plain)
    placed = (rc.base_captions, rc.still_position)
    still_items = data.stills(train_digits, rc.stills, rng, rc, plain, *placed)
    style_items = data.stills(train_digits, rc.style_stills, rng, rc, personal, *placed)
    held_items = data.clips(held_digits, rc.heldout_clips, rng, rc, plain)
    sets = Sets(
        clips=data.write_collection(work / "videos" / "clips", clip_items),
        stills=data.write_collection(work / "videos" / "stills", still_items),
        style=data.write_collection(work / "videos" / "style", style_items),
        heldout=data.write_collection(work / "videos" / "heldout", held_items),
    )
    frames = np.concatenate(
        [item.frames[:1] for item in still_items + style_items]
        + [item.frames[np.array([0, -1])] for item in clip_items]
    )
    labels = np.concatenate(
        [[item.label] for item in still_items + style_items]
        + [[item.label] * 2 for item in clip_items]
    )
    return sets, {"frames": frames, "labels": labels}


def preprocess(
    cfg: Config, table: Path, output: Path, frames: int, extra: list[str] | tuple[str, ...] = ()
) -> str:
    """Ray Data preprocess of one collection (``extra``: more ``data.`` overrides, e.g. camera
    motion); returns the shard set's URI."""
    from pipelines.preprocess import run_preprocess

    stage = with_overrides(
        cfg,
        [
            "data.format=csv",
            f"data.input={table}",
            f"data.output={output}",
            f"data.num_frames={frames}",
            "data.stride=1",
            f"data.resolution={cfg.reproduce.canvas}",
            *extra,
        ],
    )
    summary = run_preprocess(stage)
    if summary["clips_encoded"] + summary["clips_cached"] == 0:
        raise RuntimeError(f"{table}: no clip was encoded")
    return summary["output"]


def concurrent_preprocesses(cfg: Config, cluster_cpus: float) -> int:
    """How many preprocesses may run at once: each holds an encode actor for its whole run and
    needs room for a decode task beside it, or its pipeline waits forever for a CPU."""
    data = cfg.data
    per_run = data.num_encode_actors * data.encode_num_cpus + data.decode_num_cpus
    return max(1, int(cluster_cpus // per_run))


def preprocess_collections(
    cfg: Config, collections: dict[str, tuple[Path, int]], latents: Path
) -> dict[str, str]:
    """``preprocess`` of each ``{name: (table, frames)}`` into ``latents/<name>``, as many at
    once as the cluster holds (``concurrent_preprocesses``); the shard sets' URIs by name. On a
    small cluster this overlaps one run's encode-actor start-up with another's work."""
    import ray

    limit = concurrent_preprocesses(cfg, ray.cluster_resources().get("CPU", 1))
    calls = {
        name: functools.partial(preprocess, cfg, table, latents / name, frames)
        for name, (table, frames) in collections.items()
    }
    return at_once(calls, limit)


def at_once(calls: dict[str, Callable[[], T]], limit: int) -> dict[str, T]:
    """Each call's result by name, up to ``limit`` calls at a time from a thread pool; with a
    limit of 1, one after another in this thread, where Ctrl-C stops a training gracefully (Ray
    Train installs its handler only from the main thread)."""
    from concurrent.futures import ThreadPoolExecutor

    if limit <= 1:
        return {name: call() for name, call in calls.items()}
    with ThreadPoolExecutor(max_workers=min(limit, len(calls))) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def stage_config(cfg: Config, run_name: str, overrides: list[str] | tuple[str, ...]) -> Config:
    """One training job's config: the preset, the stage's overrides, a run name."""
    return with_overrides(cfg, [*overrides, f"train.run_name={run_name}"])


def train(stage: Config, work: Path) -> Any:
    """Run ``stage``'s training job; its outcome, with its export copied to
    ``work/models/<train.run_name>``."""
    from trainer import run_training

    return run_training(stage, export_dir=work / "models" / stage.train.run_name)


TRAINING_READ_CPUS = 1
"""CPUs that trainings running at once leave free of workers: the Ray Data tasks that read their
shards need one, or they wait forever behind the workers they feed."""


def concurrent_trainings(stages: Sequence[Config], cluster_cpus: float) -> int:
    """How many of ``stages``' trainings may run at once: each holds its workers' CPUs for its
    whole fit, and ``TRAINING_READ_CPUS`` stay free for reading shards. On the preset's 4
    logical CPUs that is one (2 workers each); toy trainings of one worker run three at once,
    overlapping their processes' start-up, which is most of a toy fit."""
    per_run = max(stage.train.num_workers * stage.train.cpus_per_worker for stage in stages)
    return max(1, int((cluster_cpus - TRAINING_READ_CPUS) // per_run))


def still_data(cfg: Config) -> list[str]:
    """The ``data.`` overrides that read the reproduction's stills (one frame, the canvas)."""
    return ["data.num_frames=1", "data.stride=1", f"data.resolution={cfg.reproduce.canvas}"]


def downstream_stages(cfg: Config, uris: dict[str, str]) -> dict[str, Config]:
    """The trainings that need only the trained base (``cfg``'s ``model.base.pretrained``), by
    name: the motion module, its ablation and the style LoRA. ``uris``: the shard sets by
    collection, as ``preprocess_collections`` returns them."""
    rc = cfg.reproduce
    motion = [f"train.data_uri={uris['clips']}", f"train.val_data_uri={uris['heldout']}"]
    motion += [*clip_data(cfg), *rc.motion_train]
    lora = ["train.stage=image", "train.lora.rank=4", f"train.data_uri={uris['style']}"]
    return {
        "motion": stage_config(cfg, "digits-motion", motion),
        "ablation": stage_config(
            cfg, "digits-ablation", [*motion, *rc.ablation, "train.register=false"]
        ),
        "lora": stage_config(cfg, "digits-style-lora", [*lora, *still_data(cfg), *rc.lora_train]),
    }


def identity_module(cfg: Config, directory: Path) -> Path:
    """A fresh motion module (zero ``proj_out``: each frame is denoised on its own), saved."""
    import torch

    from animatediff.base_model import load_base_model
    from animatediff.checkpoints import save_motion_modules
    from animatediff.motion_module import MotionModules

    unet = load_base_model(cfg.model.base).unet
    motion = dataclasses.replace(cfg.model.motion, zero_init_out=True)
    torch.manual_seed(0)
    modules = MotionModules(
        tuple(unet.config.block_out_channels), unet.config.layers_per_block, motion
    )
    save_motion_modules(modules, motion, directory)
    return directory


def prompts_file(cfg: Config, path: Path) -> Path:
    """Every (digit, direction) caption ``eval_repeats`` times, on seeds training never used,
    with what each video should show."""
    rc = cfg.reproduce
    lines, seed = [], rc.eval_seed
    for _ in range(rc.eval_repeats):
        for label in range(rc.eval_digits):
            for direction in rc.directions:
                expect = {"label": label, "direction": direction}
                prompt = data.caption(label, direction)
                lines.append(json.dumps({"prompt": prompt, "seed": seed, "expect": expect}))
                seed += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def read_prompts(work: Path) -> list[dict[str, Any]]:
    """The evaluation's prompts that ``prompts_file`` wrote to ``work/prompts.jsonl``, in order."""
    return [json.loads(line) for line in (work / "prompts.jsonl").read_text().splitlines()]


Conditions = dict[str, tuple[str, list[str]]]
"""``{name: (motion module, jobs.evaluate overrides)}``."""


def evaluation_stages(cfg: Config, conditions: Conditions) -> dict[str, Config]:
    """Each condition's ``jobs.evaluate`` config; its reports go to ``evaluate/<name>``."""
    return {
        name: with_overrides(
            cfg,
            [f"evaluate.model={model}", f"evaluate.output_subdir=evaluate/{name}", *overrides],
        )
        for name, (model, overrides) in conditions.items()
    }


def evaluate(cfg: Config, conditions: Conditions) -> dict[str, dict[str, float]]:
    """``jobs.evaluate``'s scoring of every condition, in one pass; their metrics by name."""
    from pipelines.evaluate import run_evaluations

    stages = evaluation_stages(cfg, conditions)
    return {
        name: result.metrics for name, result in zip(stages, run_evaluations(list(stages.values())))
    }


def reproduction_conditions(
    cfg: Config,
    work: Path,
    heldout_uri: str,
    classifier_dir: Path,
    motion: str,
    motion_dir: str,
    ablation: str,
    lora: str,
) -> Conditions:
    """The conditions of the module docstring on ``cfg``'s base. ``motion``: the motion module
    of (b), a path or a registered version (whose training run then gets the metrics);
    ``motion_dir``: the same module's files, for (c), whose metrics go to a run of their own;
    ``ablation``: the ablation's module; ``lora``: the personalized base's LoRA. Reports go to
    ``work/evaluate/<condition>``."""
    rc = cfg.reproduce
    identity = str(identity_module(cfg, work / "identity_motion_module"))
    common = scoring(cfg, work, heldout_uri, classifier_dir)
    own = [*common, "evaluate.log_to=own_run"]
    lora_base = personalized(lora)
    return {
        "a1": (identity, own),
        "a2": (identity, [*own, "sample.shared_noise=true"]),
        "b": (motion, common),
        "c": (motion_dir, [*own, *lora_base]),
        "c0": (identity, [*own, *lora_base]),
        "d": (ablation, [*own, *rc.ablation]),
    }


def scoring(cfg: Config, work: Path, heldout_uri: str, classifier_dir: Path) -> list[str]:
    """The ``jobs.evaluate`` overrides that score a condition as the reproduction does: its
    prompts (written to ``work/prompts.jsonl``), the held-out shards for the loss, the digit
    classifier as the feature extractor, the caption's direction and half the rendered speed;
    reports under ``work``."""
    rc = cfg.reproduce
    return [
        f"evaluate.prompts={prompts_file(cfg, work / 'prompts.jsonl')}",
        f"evaluate.data_uri={heldout_uri}",
        f"evaluate.features=classifier:{classifier_dir}",
        f"evaluate.directions={trajectory_directions(rc)}",
        f"evaluate.min_speed={rc.speed / 2}",
        f"output_dir={work}",
        *clip_data(cfg),
    ]


def personalized(lora: str) -> list[str]:
    """The override that loads the base with the style LoRA at ``lora``: the personalized base."""
    return [f"model.base.loras=[{{path: {lora}}}]"]


def trajectory_directions(rc: ReproduceConfig) -> int:
    """``evaluate.directions``: the trajectory scorer knows 4 or 8 directions."""
    return len(rc.directions) if len(rc.directions) > 4 else 4


def caption_expectations(rc: ReproduceConfig) -> dict[str, dict[str, Any]]:
    """What each clip caption says: ``{caption: {"label": digit, "direction": direction}}``."""
    return {
        data.caption(label, direction): {"label": label, "direction": direction}
        for label in range(10)
        for direction in rc.directions
    }


def score_rows(
    videos: Sequence[np.ndarray], captions: Sequence[str], extractor: Any, rc: ReproduceConfig
) -> list[dict[str, Any]]:
    """``score_video``'s row of each of ``videos`` (each ``(frames, height, width, 3)`` uint8),
    scored as a generated video is, against the digit and direction its caption names."""
    from animatediff.evaluation import score_video

    expected, directions = caption_expectations(rc), trajectory_directions(rc)
    rows = []
    for video, caption in zip(videos, captions, strict=True):
        if caption not in expected:
            raise ValueError(f"{caption!r} is not a caption of a Moving Digits clip")
        rows.append(
            score_video(video, extractor, expected[caption], caption, directions, rc.speed / 2)
        )
    return rows


def score_clips(
    videos: Sequence[np.ndarray], captions: Sequence[str], extractor: Any, rc: ReproduceConfig
) -> dict[str, float]:
    """The evaluation's summary of ``score_rows``."""
    from animatediff.evaluation import summarize

    return summarize(score_rows(videos, captions, extractor, rc))


def held_out_videos(cfg: Config, heldout_uri: str) -> tuple[np.ndarray, list[str]]:
    """``(videos (clips, frames, height, width, 3) uint8, captions)``: every held-out clip's
    stored latent (the VAE posterior's mean) decoded by the base's VAE as generated videos are."""
    import torch

    from animatediff.base_model import load_vae
    from animatediff.sampling import decode_latents
    from pipelines.fingerprint import data_fingerprint
    from pipelines.latents import find_shard_set
    from trainer.data import read_clips

    clips_cfg = with_overrides(cfg, clip_data(cfg))  # the fingerprint of 8-frame clips
    location, manifest = find_shard_set(heldout_uri, data_fingerprint(clips_cfg), cfg.storage)
    clips = read_clips(location, manifest, cfg.reproduce.heldout_clips, ["caption", "latent_mean"])
    vae = load_vae(cfg.model.base)
    latents = torch.as_tensor(np.asarray(clips["latent_mean"])).float()  # (clips, 4, f, h, w)
    with torch.no_grad():
        videos = decode_latents(
            vae, latents * vae.config.scaling_factor, cfg.sample.decode_chunk_frames
        )
    return videos, [str(caption) for caption in clips["caption"]]


def held_out_reference(cfg: Config, heldout_uri: str, extractor: Any) -> dict[str, float]:
    """The measures on real data (``r``): ``score_clips`` of the ``held_out_videos`` with the
    digit scorer's ``extractor``. A generated video cannot be expected to score above these: the
    VAE's losses and the digit scorer's own errors are in them."""
    videos, captions = held_out_videos(cfg, heldout_uri)
    return score_clips(list(videos), captions, extractor, cfg.reproduce)


def style_difference(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Relative difference of the mean colours (subject, canvas) to the reference's."""
    from animatediff.evaluation import STYLE_COLUMNS
    from animatediff.metrics import relative_difference

    return relative_difference(
        np.array([metrics[n] for n in STYLE_COLUMNS]),
        np.array([reference[n] for n in STYLE_COLUMNS]),
    )


def machine() -> dict[str, Any]:
    """What a run's exact numbers depend on besides the code: the CPU (its model and the
    instruction set PyTorch's kernels use: AVX2 and AVX-512 kernels round differently), the core
    count, torch, and the commit. Two runs agree digit for digit only where these match."""
    import os
    import platform

    import torch

    from tracking.provenance import code_version

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            ]
        model = names[0] if names else model
    except OSError:  # not Linux
        pass
    code = code_version()
    return {
        "cpu": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "commit": code.short if code else None,
    }


def run_reproduction(cfg: Config, work: Path) -> dict[str, Any]:
    """The whole chain under ``work``; returns the table's rows, timings and paths."""
    import ray

    rc = cfg.reproduce
    progress = Progress(9)
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"  {name}: {timings[name]:.0f} s", flush=True)

    progress("rendering Moving Digits clips and stills (UCI digits, split by image)")
    start = time.perf_counter()
    sets, frames = render(cfg, work)
    timed("render", start)

    progress("training the VAE and writing the untrained base")
    start = time.perf_counter()
    vae = models.train_vae(frames["frames"], rc, print)
    base0 = models.write_base(work / "base-untrained", rc, vae)
    cfg = with_overrides(cfg, [f"model.base.pretrained={base0}"])
    timed("vae", start)

    progress("preprocessing the four collections (Ray Data: decode, VAE-encode, shards)")
    start = time.perf_counter()
    uris = preprocess_collections(cfg, sets.to_preprocess(cfg), work / "latents")
    timed("preprocess", start)

    progress("image stage: training the base's UNet on still frames (Ray Train + DeepSpeed)")
    start = time.perf_counter()
    base_stage = stage_config(
        cfg,
        "digits-base",
        ["train.stage=image", f"train.data_uri={uris['stills']}", *still_data(cfg), *rc.base_train],
    )
    base = train(base_stage, work).export_path
    cfg = with_overrides(cfg, [f"model.base.pretrained={base}"])
    timed("base", start)

    # The three trainings on the trained base need only it: they run at once where the cluster
    # has room (concurrent_trainings), else one after another in this order.
    stages = downstream_stages(cfg, uris)
    limit = concurrent_trainings(list(stages.values()), ray.cluster_resources().get("CPU", 1))
    progress(
        "motion stage (the base frozen), its ablation (" + ", ".join(rc.ablation) + ") and a "
        f"LoRA of the base on a style the module never saw: {min(limit, len(stages))} at a time"
    )

    def fit(name: str) -> Any:
        start = time.perf_counter()
        print(f"  {name}: training {stages[name].train.run_name}", flush=True)
        outcome = train(stages[name], work)
        timed(name, start)
        return outcome

    outcomes = at_once({name: functools.partial(fit, name) for name in stages}, limit)
    motion, ablation, lora = outcomes["motion"], outcomes["ablation"], outcomes["lora"]

    progress("training the digit classifier that scores the frames")
    start = time.perf_counter()
    classifier = models.train_classifier(frames["frames"], frames["labels"], rc, print)
    classifier_dir = classifier.save(work / "classifier")
    timed("classifier", start)

    progress("generating and scoring the conditions on held-out digits and seeds")
    start = time.perf_counter()
    conditions = reproduction_conditions(
        cfg,
        work,
        uris["heldout"],
        classifier_dir,
        motion=str(motion.model_version),
        motion_dir=str(motion.motion_dir),
        ablation=str(ablation.motion_dir),
        lora=str(lora.export_path),
    )
    metrics = evaluate(cfg, conditions)
    timed("evaluate", start)

    progress("scoring the held-out clips themselves: the measures on real data")
    start = time.perf_counter()
    metrics["r"] = held_out_reference(cfg, uris["heldout"], classifier.extractor())
    timed("reference", start)
    metrics["c"]["style_difference"] = style_difference(metrics["c"], metrics["c0"])
    metrics["b"]["style_difference"] = style_difference(metrics["b"], metrics["c0"])
    return {"metrics": metrics, "timings": timings, "work": str(work), "machine": machine()}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

Claim = tuple[str, str, str, float | None, bool | None]
"""(claim, measure, target, measured, met)."""


def claims(metrics: dict[str, dict[str, float]], cfg: Config) -> list[Claim]:
    """The issue's claims, measured: each with its target and whether it is met."""
    b, a1, a2, c = metrics["b"], metrics["a1"], metrics["a2"], metrics["c"]
    half = cfg.reproduce.speed / 2
    chance = 1 / len(cfg.reproduce.directions)
    get = lambda m, k: m.get(k, float("nan"))  # noqa: E731
    rows: list[Claim] = [
        (
            "the module animates the frozen base",
            "direction of the trajectory vs the caption, (b)",
            f">= 0.80 (chance {chance:.2f})",
            get(b, "direction_accuracy"),
            get(b, "direction_accuracy") >= 0.8,
        ),
        (
            "frames stay coherent",
            "frames classified as the caption's digit, (b)",
            ">= 0.90 and far above (a1)",
            get(b, "label_share"),
            get(b, "label_share") >= 0.9 and get(b, "label_share") >= get(a1, "label_share") + 0.2,
        ),
        (
            "frames stay coherent",
            "frames agreeing with the clip's majority digit, (b)",
            ">= 0.90 and far above (a1)",
            get(b, "label_agreement"),
            get(b, "label_agreement") >= 0.9
            and get(b, "label_agreement") >= get(a1, "label_agreement") + 0.2,
        ),
        (
            "the motion is real",
            "mean displacement per frame (px), (b)",
            f">= {half:g} (half the rendered {cfg.reproduce.speed} px/frame)",
            get(b, "displacement_per_frame"),
            get(b, "displacement_per_frame") >= half,
        ),
        (
            "the motion is real",
            "share of videos that move, (a2)",
            "about 0 (one shared noise, no module)",
            get(a2, "moving_share"),
            get(a2, "moving_share") <= 0.1,
        ),
        (
            "it transfers to a personalized base",
            "direction accuracy, (c) minus (b)",
            "within 10 points",
            get(c, "direction_accuracy") - get(b, "direction_accuracy"),
            abs(get(c, "direction_accuracy") - get(b, "direction_accuracy")) <= 0.10,
        ),
        (
            "it transfers to a personalized base",
            "style (mean subject and canvas colours), (c) vs the personalized stills (c0)",
            "within 10 %",
            get(c, "style_difference"),
            get(c, "style_difference") <= 0.10,
        ),
    ]
    return rows


def report(summary: dict[str, Any], cfg: Config, command: str, wall_s: float) -> str:
    """``reproduction.md``: the claims table, the conditions, timings and the contact sheet."""
    from animatediff.report import format_value, markdown_table

    metrics = summary["metrics"]
    claim_rows = [
        {
            "claim": claim,
            "measure": measure,
            "target": target,
            "measured": measured,
            "met": "yes" if met else "**no**",
        }
        for claim, measure, target, measured, met in claims(metrics, cfg)
    ]
    columns = [
        "direction_accuracy",
        "displacement_per_frame",
        "trajectory_residual",
        "moving_share",
        "label_share",
        "label_agreement",
        "frame_consistency",
        "held_out_loss",
        "order_sensitivity",
        "style_difference",
    ]
    condition_rows = [
        {"condition": f"({name}) {title}", **{k: metrics[name].get(k) for k in columns}}
        for name, title in {**CONDITIONS, **REFERENCES}.items()
        if name in metrics
    ]
    timings = ", ".join(f"{k} {format_value(v)} s" for k, v in summary["timings"].items())
    return "\n".join(
        [
            "# Moving Digits: does the pipeline learn motion?",
            "",
            f"Command: `{command}`  ",
            f"Wall time: {wall_s / 60:.1f} min on this machine ({timings}).  ",
            "Machine: {cpu} ({cpu_capability} kernels), {cores} cores, torch {torch}, "
            "commit {commit}.".format(**summary["machine"]),
            "",
            "## Claims",
            "",
            markdown_table(claim_rows, ["claim", "measure", "target", "measured", "met"]),
            "",
            *reference_line(metrics),
            "## Conditions (held-out digits for the loss, held-out seeds for the videos)",
            "",
            markdown_table(condition_rows, ["condition", *columns]),
            "",
            "![contact sheet](contact_sheet.png)",
            "",
        ]
    )


def reference_line(metrics: dict[str, dict[str, float]]) -> list[str]:
    """Under the claims: what the held-out clips themselves (``r``) score on the claims'
    measures, the most a generated video can be expected to reach; nothing without ``r``."""
    from animatediff.report import format_value

    if "r" not in metrics:
        return []
    names = ("direction_accuracy", "label_share", "label_agreement", "displacement_per_frame")
    figures = ", ".join(f"{name} {format_value(metrics['r'][name])}" for name in names)
    return [
        f"On the same measures the held-out clips themselves, decoded by the VAE (r), give "
        f"{figures}: real data, not generated.",
        "",
    ]


def sheet(
    work: Path, cfg: Config, rows_per_condition: int = 4, conditions: Sequence[str] = CONDITIONS
) -> np.ndarray:
    """The contact sheet: the first prompts of every condition (its ``evaluate/<condition>``
    folder under ``work``), one row per video."""
    from animatediff.report import contact_sheet

    videos, labels = [], []
    prompts = read_prompts(work)
    for name in conditions:
        for index in sheet_indices(len(prompts), rows_per_condition):
            videos.append(read_gif(work / "evaluate" / name / f"{index:05d}.gif"))
            labels.append(f"({name}) {prompts[index]['prompt']}")
    return contact_sheet(videos, labels, max_frames=cfg.reproduce.frames)


def sheet_indices(prompts: int, rows: int) -> range:
    """Which of ``prompts`` prompts a contact sheet shows: ``rows`` evenly spaced from the first
    (all of them when there are fewer)."""
    return range(0, prompts, max(1, prompts // rows))[:rows]


def read_gif(path: Path) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: the frames a GIF stores (a run of identical frames
    is stored once, with a longer duration)."""
    from PIL import Image

    with Image.open(path) as gif:
        frames = []
        for frame in range(gif.n_frames):
            gif.seek(frame)
            frames.append(np.asarray(gif.convert("RGB")))
    return np.stack(frames)
