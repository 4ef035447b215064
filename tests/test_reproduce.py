"""`python -m jobs.reproduce` at toy size: every stage runs through the real jobs, the metrics are
finite and the report, contact sheet and models exist. Plumbing only: the numbers of a toy run
mean nothing (the full run's are in docs/reproduction.md); `-m slow` runs the full chain. The
image stage's tests (full fine-tuning, LoRA) check the chain's own image-stage fits."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from animatediff.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
PRESET_FILE = ROOT / "configs/moving_digits.yaml"
PRESET = f"--config={PRESET_FILE}"
TOY = [
    "reproduce.clip_bpe=",
    "reproduce.train_clips=8",
    "reproduce.heldout_clips=4",
    "reproduce.stills=8",
    "reproduce.style_stills=4",
    "reproduce.vae_steps=2",
    "reproduce.classifier_steps=2",
    "reproduce.vae_channels=[8,16,16]",
    "reproduce.unet_channels=[16,32]",
    "reproduce.directions=[left,up]",
    "reproduce.eval_digits=2",
    # The image stage's tests run on this fit: 2 ranks, a checkpoint each step, samples.
    "reproduce.base_train=[train.max_steps=2, train.num_workers=2, train.checkpoint_every=1,"
    " 'train.validation_prompts=[the digit 1]']",
    "reproduce.motion_train=[train.max_steps=1]",
    "reproduce.lora_train=[train.max_steps=1]",
    "train.num_workers=1",
    "train.batch_size=2",
    "train.val_max_clips=2",
    "train.checkpoint_every=0",
    "train.validation_prompts=[]",
    "train.health_check_interval_s=0.25",
    "sample.num_inference_steps=2",
    "evaluate.timesteps=2",
    "evaluate.max_clips=2",
]


def _toy_overrides(tmp_path: Path) -> list[str]:
    return [
        f"output_dir={tmp_path}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"train.storage_path={tmp_path / 'ray_results'}",
        f"model.base.cache_dir={tmp_path / 'cache'}",
        *TOY,
    ]


@pytest.fixture(scope="module")
def toy_chain(ray_cluster, tmp_path_factory) -> Path:
    """One toy chain shared by this module's tests: the ``output_dir`` it ran with (the run's
    files are under ``reproduce/``, its MLflow store is ``mlflow.db``)."""
    from jobs import cli, reproduce

    root = tmp_path_factory.mktemp("toy")
    assert cli.run(reproduce.main, [PRESET, *_toy_overrides(root)]) == 0
    return root


def test_the_chain_runs_at_toy_size(toy_chain):
    from mlflow import MlflowClient

    work = toy_chain / "reproduce"
    store = f"sqlite:///{toy_chain / 'mlflow.db'}"
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["metrics"]) == {"a1", "a2", "b", "c", "c0", "d", "r"}
    for condition, metrics in summary["metrics"].items():
        names = ["frame_consistency", "label_share", "direction_accuracy"]
        if condition != "r":  # the reference scores the held-out clips; it trains no model
            names += ["held_out_loss", "order_sensitivity"]
        for name in names:
            assert math.isfinite(metrics[name]), (condition, name)
        # 2 digits x 2 directions; the reference: the 4 held-out clips
        assert metrics["videos"] == 4, condition
    report = (work / "reproduction.md").read_text()
    assert "| (r) held-out clips, VAE-decoded (real data, no generation) |" in report
    assert (
        "the held-out clips themselves, decoded by the VAE (r), give direction_accuracy" in report
    )
    assert "| the module animates the frozen base |" in report
    # What exact numbers depend on besides the code, for comparing two runs digit for digit.
    machine = summary["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["torch"] == torch.__version__ and machine["cores"] >= 1
    assert f"({machine['cpu_capability']} kernels)" in report
    assert (work / "contact_sheet.png").stat().st_size > 0
    assert (work / "classifier" / "model.safetensors").is_file()
    # The trained models' local copies live in the run's folder; later stages load them there.
    models = work / "models"
    assert (models / "digits-base" / "pipeline" / "unet").is_dir()
    assert (models / "digits-motion" / "motion_module").is_dir()
    assert (models / "digits-style-lora" / "lora.safetensors").is_file()
    assert str(models / "digits-base" / "pipeline") in (work / "evaluate/b/report.md").read_text()
    # Each trained model went through the registry.
    client = MlflowClient(store)
    names = {m.name for m in client.search_registered_models()}
    assert {"moving-digits-motion", "moving-digits-motion-image"} <= names


def _chain_config(toy_chain: Path) -> Config:
    return load_config(PRESET_FILE, _toy_overrides(toy_chain))


def _unet(cfg: Config, pretrained: Path, *loras: Path) -> dict[str, torch.Tensor]:
    """The state dict of the UNet that ``model.base`` loads from ``pretrained`` (+ ``loras``)."""
    from animatediff.base_model import load_base_model
    from animatediff.config import LoraConfig

    base = dataclasses.replace(
        cfg.model.base, pretrained=str(pretrained), loras=tuple(LoraConfig(str(p)) for p in loras)
    )
    return load_base_model(base).unet.state_dict()


def test_the_image_stage_exports_a_pipeline_that_loads_as_the_base(toy_chain):
    """The chain's base: full fine-tuning of the 2D UNet on stills (``train.stage=image``, 2
    ranks), through the same loop, checkpoints and registry; the export is a StableDiffusion
    directory that ``model.base.pretrained`` loads, as the chain's later stages do."""
    from mlflow import MlflowClient

    cfg = _chain_config(toy_chain)
    work = toy_chain / "reproduce"
    pipeline = work / "models" / "digits-base" / "pipeline"
    assert (pipeline / "model_index.json").is_file()
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    assert unet_config["attention_head_dim"] == [1, 2]  # the preset's 16-channel heads
    run_dir = toy_chain / "ray_results" / "digits-base"
    assert [p.name for p in run_dir.glob("checkpoint_0*")] == ["checkpoint_00000002"]  # keep 1
    last = load_file(str(run_dir / "checkpoint_00000002/unet/diffusion_pytorch_model.safetensors"))
    trained, untrained = _unet(cfg, pipeline), _unet(cfg, work / "base-untrained")
    assert trained.keys() == last.keys()
    assert all(torch.equal(tensor, last[name]) for name, tensor in trained.items())
    moved = sum(not torch.equal(tensor, untrained[name]) for name, tensor in trained.items())
    assert moved > len(trained) // 2  # full fine-tuning moved most tensors
    client = MlflowClient(f"sqlite:///{toy_chain / 'mlflow.db'}")
    name = f"{cfg.mlflow.registered_model}-image"  # the style LoRA is registered there too
    by_run = {
        client.get_run(v.run_id).info.run_name: v
        for v in client.search_model_versions(f"name = '{name}'")
    }
    version = by_run["digits-base"]
    assert version.tags["stage"] == "image"
    assert {a.path for a in client.list_artifacts(version.run_id)} >= {"pipeline", "samples"}
    description = client.get_run(version.run_id).data.tags["mlflow.note.content"]
    assert "attempt 1: started at step 0 (2 workers)" in description


def test_the_image_stage_lora_is_a_kohya_file_for_model_base_loras(toy_chain):
    """The personalized base's LoRA (``train.stage=image``, ``train.lora.rank``): a kohya file
    that ``model.base.loras`` merges into the attention projections it trained, nothing else."""
    cfg = _chain_config(toy_chain)
    models = toy_chain / "reproduce" / "models"
    lora_file = models / "digits-style-lora" / "lora.safetensors"
    lora = load_file(str(lora_file))
    assert lora and all(k.startswith("lora_unet_") for k in lora)
    assert any(k.endswith("attn1_to_q.lora_up.weight") for k in lora)
    base = models / "digits-base" / "pipeline"
    merged, plain = _unet(cfg, base, lora_file), _unet(cfg, base)
    changed = {k for k in merged if not torch.equal(merged[k], plain[k])}
    assert changed and all(
        k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))
        for k in changed
    )


def test_a_missing_clip_bpe_stops_the_chain_before_any_stage(tmp_path, capsys):
    """The merges file is checked first, not after minutes of rendering and VAE training."""
    from jobs import cli, reproduce

    missing = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    argv = [PRESET, f"output_dir={tmp_path}", f"reproduce.clip_bpe={missing}"]
    assert cli.run(reproduce.main, argv) == 2
    assert f"reproduce.clip_bpe: {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "reproduce").exists()


def test_preprocesses_run_at_once_only_where_each_keeps_a_cpu_for_decoding():
    """Each preprocess holds its encode actors for its whole run; one more at once than the
    cluster holds would leave a pipeline without a CPU for its decode tasks, waiting forever."""
    from experiments.moving_digits.run import concurrent_preprocesses, with_overrides

    cfg = load_config(PRESET_FILE)  # 1 encode actor of 1 CPU, decode tasks of 1 CPU
    assert [concurrent_preprocesses(cfg, cpus) for cpus in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]
    wider = with_overrides(cfg, ["data.num_encode_actors=2", "data.decode_num_cpus=2"])
    assert [concurrent_preprocesses(wider, cpus) for cpus in (4, 8, 16)] == [1, 2, 4]


def test_trainings_run_at_once_only_where_a_cpu_stays_free_for_their_reads():
    """Trainings side by side hold their workers' CPUs for their whole fits; the shard reads
    that feed them need one more, or they wait forever. The preset's trainings (2 workers of 1
    CPU) run one at a time on its 4 logical CPUs; one-worker toy trainings, three at once."""
    from experiments.moving_digits.run import concurrent_trainings, with_overrides

    preset = load_config(PRESET_FILE)
    assert [concurrent_trainings([preset], cpus) for cpus in (2, 4, 5, 8)] == [1, 1, 2, 3]
    toy = with_overrides(preset, ["train.num_workers=1"])
    assert [concurrent_trainings([toy], cpus) for cpus in (2, 4, 8)] == [1, 3, 7]
    assert concurrent_trainings([toy, preset], 4) == 1  # the widest decides


def test_at_once_runs_calls_side_by_side_or_in_this_thread_with_a_limit_of_one():
    import threading

    from experiments.moving_digits.run import at_once

    here = threading.get_ident()
    in_turn = at_once({"a": threading.get_ident, "b": threading.get_ident}, 1)
    assert in_turn == {"a": here, "b": here}
    meeting = threading.Barrier(2, timeout=10)  # broken, an error, unless both wait at once

    def meet(name: str) -> str:
        meeting.wait()
        return name

    side_by_side = at_once({"b": lambda: meet("b"), "a": lambda: meet("a")}, 2)
    assert list(side_by_side.items()) == [("b", "b"), ("a", "a")]  # by name, in call order


# A benchmark's smoke run (271 s on 2 cores, with the toy chain it needs); one-pass scoring is
# tested in test_evaluate_job.py (test_models_scored_in_one_pass_match_their_own_evaluations).
@pytest.mark.slow
def test_the_evaluation_benchmark_runs_on_the_chains_models(toy_chain, capsys):
    from benchmarks import evaluate_pass

    work = toy_chain / "reproduce"
    capsys.readouterr()
    modes = ["--order", "sequential,pass,pass-unshared"]
    evaluate_pass.main(
        ["--work", str(work), "--conditions", "a1,a2", *modes, PRESET, *_toy_overrides(toy_chain)]
    )
    out = capsys.readouterr().out
    assert re.search(r"^\| sequential \| [\d.]+ \| 1\.00x \|$", out, re.M), out
    for mode in ("pass", "pass-unshared"):
        assert re.search(rf"^\| {mode} \| [\d.]+ \| [\d.]+x \|$", out, re.M), out
        assert f"largest metric difference, {mode} vs sequential: " in out


@pytest.mark.slow  # two rounds of the toy chain's four preprocesses, with the chain it needs
def test_the_preprocess_benchmark_runs_on_the_chains_videos(toy_chain, capsys):
    from benchmarks import preprocess_collections

    work = toy_chain / "reproduce"
    capsys.readouterr()
    preprocess_collections.main(["--work", str(work), PRESET, *_toy_overrides(toy_chain)])
    out = capsys.readouterr().out
    assert re.search(r"^\| sequential \| [\d.]+ \| 1\.00x \|$", out, re.M), out
    assert re.search(r"^\| at-once \| [\d.]+ \| [\d.]+x \|$", out, re.M), out
    for name in ("clips", "stills", "style", "heldout"):
        assert re.search(rf"^{name}, at-once vs sequential: \d+ rows, the same rows in", out, re.M)


@pytest.mark.slow  # the toy chain's three downstream trainings twice, with the chain it needs
def test_the_trainings_benchmark_runs_on_the_chains_models(toy_chain, capsys):
    from benchmarks import trainings_at_once

    work = toy_chain / "reproduce"
    capsys.readouterr()
    trainings_at_once.main(["--work", str(work), PRESET, *_toy_overrides(toy_chain)])
    out = capsys.readouterr().out
    assert "4 logical CPUs: 3 at a time" in out, out  # the session's cluster, one-worker fits
    assert re.search(r"^\| at-once \| [\d.]+ \| [\d.]+x \|$", out, re.M), out
    for name in ("motion", "ablation", "lora"):
        assert f"{name}, at-once vs sequential: the same weights" in out, out


def _centres(items, directions=("left", "right", "up", "down")) -> dict[str, np.ndarray]:
    """Each caption direction's stills: the digit's centre of coverage ``(x, y)``, in pixels."""
    found: dict[str, list] = {d: [] for d in directions}
    for item in items:
        coverage = item.frames[0].astype(np.float64).sum(axis=2)
        ys, xs = np.indices(coverage.shape)
        centre = ((xs * coverage).sum(), (ys * coverage).sum()) / coverage.sum()
        found[item.caption.rsplit(" ", 1)[1]].append(centre)
    return {d: np.array(c) for d, c in found.items()}


def test_clip_start_stills_show_where_their_captions_clip_starts():
    """``still_position=clip_start``: a still is the first frame of a clip moving the caption's
    way, so left-captioned stills sit right of right-captioned ones (and up below down); with
    ``anywhere`` the place says nothing about the caption."""
    from animatediff.config import ReproduceConfig
    from experiments.moving_digits import data

    def centres(position: str) -> dict[str, np.ndarray]:
        rc = ReproduceConfig(
            canvas=32, digit_size=16, speed=2, base_captions="clip", still_position=position
        )
        digits, _ = data.digit_split(rc)
        style = (rc.background, rc.foreground)
        items = data.stills(digits, 400, np.random.default_rng(0), rc, style, "clip", position)
        return _centres(items)

    start = centres("clip_start")  # 14 px of travel on a 16 px room: the start fixes the side
    assert start["left"][:, 0].min() > start["right"][:, 0].max()
    assert start["up"][:, 1].min() > start["down"][:, 1].max()
    anywhere = centres("anywhere")
    assert abs(anywhere["left"][:, 0].mean() - anywhere["right"][:, 0].mean()) < 2
    assert abs(anywhere["up"][:, 1].mean() - anywhere["down"][:, 1].mean()) < 2


def test_rendered_clips_score_as_their_captions_say():
    """The reference row's scoring (``score_clips``) on real rendered clips: each moves the
    caption's way at the rendered speed. Scored against another clip's caption, a clip whose
    direction differs counts as wrong; a caption that is no clip's is an error."""
    from animatediff.config import ReproduceConfig
    from animatediff.features import PixelFeatures
    from experiments.moving_digits import data
    from experiments.moving_digits.run import score_clips

    rc = ReproduceConfig(canvas=32, digit_size=16, speed=2)
    digits, _ = data.digit_split(rc)
    items = data.clips(digits, 12, np.random.default_rng(0), rc, (rc.background, rc.foreground))
    videos = [item.frames for item in items]
    captions = [item.caption for item in items]
    own = score_clips(videos, captions, PixelFeatures(), rc)
    assert own["direction_accuracy"] == 1 and own["moving_share"] == 1
    assert own["displacement_per_frame"] == pytest.approx(rc.speed, abs=0.25)
    assert own["trajectory_residual"] < 0.25  # rendered clips move in straight lines
    shifted = captions[1:] + captions[:1]
    differs = np.mean([a.direction != b.direction for a, b in zip(items, items[1:] + items[:1])])
    assert differs > 0
    assert score_clips(videos, shifted, PixelFeatures(), rc)["direction_accuracy"] == 1 - differs
    with pytest.raises(ValueError, match="not a caption of a Moving Digits clip"):
        score_clips(videos[:1], ["the digit 3"], PixelFeatures(), rc)


def test_clip_start_stills_need_clip_captions():
    from animatediff.config import ConfigError, ReproduceConfig

    with pytest.raises(ConfigError, match=r"reproduce\.still_position: clip_start needs"):
        ReproduceConfig(base_captions="digit", still_position="clip_start")


def test_the_bases_attention_heads_are_as_wide_as_configured():
    from diffusers.models.attention_processor import Attention

    from animatediff.config import ConfigError, ReproduceConfig
    from experiments.moving_digits.models import build_unet

    def head_widths(rc: ReproduceConfig) -> dict[int, set[int]]:
        """Each attention's width -> the widths of its heads."""
        widths: dict[int, set[int]] = {}
        for attention in build_unet(rc).modules():
            if isinstance(attention, Attention):
                widths.setdefault(attention.inner_dim, set()).add(
                    attention.inner_dim // attention.heads
                )
        return widths

    assert head_widths(ReproduceConfig(unet_channels=(32, 64), unet_head_channels=16)) == {
        32: {16},
        64: {16},  # the mid block's
    }
    assert head_widths(ReproduceConfig(unet_channels=(32, 64))) == {32: {4}, 64: {8}}  # 8 heads
    with pytest.raises(ConfigError, match=r"reproduce\.unet_head_channels: must divide"):
        ReproduceConfig(unet_channels=(32, 64), unet_head_channels=24)


# Both adaptation experiments on the toy chain's models, in CI (about 80 s): while marked slow it
# missed adapt.py's calls going stale for a day (fixed in 7d29efb).
def test_the_adaptation_experiments_run_on_the_reproductions_models(toy_chain):
    from experiments.moving_digits import adapt

    work = toy_chain / "reproduce"
    small = ["--work", str(work), "--steps", "1", "--clips", "4", PRESET]
    adapt.main(["finetune", *small, *_toy_overrides(toy_chain)])
    finetune = (work / "adapt" / "finetune.md").read_text()
    for condition in ("as-is", "scratch", "finetuned"):
        assert f"| {condition} |" in finetune
    assert (work / "adapt" / "finetune" / "finetune_sheet.png").stat().st_size > 0
    # --scales takes every number after it: the overrides come first
    lora = [*small, *_toy_overrides(toy_chain), "--prompts", "2", "--scales", "0", "1"]
    adapt.main(["motion_lora", *lora])
    report = (work / "adapt" / "motion_lora.md").read_text()
    assert "| 0 |" in report and "| 1 |" in report
    # Scale 0 merges nothing: the plain module's video, pixel for pixel.
    assert "largest pixel difference 0 (of 255)" in report
    assert (work / "adapt" / "motion_lora" / "zoom_sheet.png").stat().st_size > 0


def test_longer_training_goes_on_in_a_copy_of_the_chains_motion_run(toy_chain, capsys):
    """The continuation resumes the chain's last checkpoint in a copy, as an MLflow run of its own,
    and scores (b) and (c) with each module; the chain's run folder, its MLflow run and its
    registered versions stay as they were."""
    from mlflow import MlflowClient
    from PIL import Image

    from animatediff.report import GAP, LABEL_HEIGHT
    from experiments.moving_digits import longer

    work, store = toy_chain / "reproduce", f"sqlite:///{toy_chain / 'mlflow.db'}"
    chain_run = toy_chain / "ray_results" / "digits-motion"
    folder = sorted(path.name for path in chain_run.iterdir())
    client = MlflowClient(store)
    versions = [v.version for v in client.search_model_versions("name='moving-digits-motion'")]
    argv = ["--config", str(PRESET_FILE), "--work", str(work), *_toy_overrides(toy_chain)]
    with pytest.raises(SystemExit, match="--steps: each must exceed the chain's 1 steps"):
        longer.main([*argv, "--steps", "1"])

    longer.main([*argv, "--steps", "2"])
    table = (work / "longer" / "longer.md").read_text()
    assert table in capsys.readouterr().out
    rows = re.findall(r"^\| \((\w)\) \| (\d+) \| (.+) \|$", table, flags=re.M)
    # The chain's module, then the longer one, on the base and on the personalized base.
    assert [row[:2] for row in rows] == [("b", "1"), ("b", "2"), ("c", "1"), ("c", "2")]
    for *_, cells in rows:
        values = [float(cell) for cell in cells.split(" | ")]
        evaluated, own = values[: len(longer.COLUMNS)], values[len(longer.COLUMNS) :]
        assert len(own) == len(longer.OWN_CANVAS_COLUMNS)
        assert all(math.isfinite(value) for value in evaluated)
        direction, *_, jumping, switching = own
        assert 0 <= direction <= 1 and 0 <= switching <= 1
        assert jumping in range(5)  # the toy's 4 videos
    # 4 rows a video each, of the 4 toy prompts: as many as the sheet shows.
    canvas = load_config(PRESET_FILE, TOY).reproduce.canvas
    sheet = Image.open(work / "longer" / "longer_sheet.png")
    assert sheet.height == 4 * 4 * (LABEL_HEIGHT + canvas + GAP) - GAP
    chain = load_file(work / "models/digits-motion/motion_module/motion_module.safetensors")
    trained = load_file(work / "longer/models/steps-2/motion_module.safetensors")
    assert chain.keys() == trained.keys()
    assert any(not torch.equal(chain[name], trained[name]) for name in chain)
    copy = work / "longer/ray_results" / longer.RUN_NAME
    assert (copy / "checkpoint_00000002").is_dir()
    assert sorted(path.name for path in chain_run.iterdir()) == folder
    experiment = client.get_experiment_by_name("moving-digits").experiment_id
    for name, last_step in (("digits-motion", 1), (longer.RUN_NAME, 2)):
        runs = client.search_runs([experiment], f"attributes.run_name = '{name}'")
        assert len(runs) == 1, name  # the probes find the chain's module by its run's name
        history = client.get_metric_history(runs[0].info.run_id, "train/loss")
        assert max(metric.step for metric in history) == last_step, name
    assert [v.version for v in client.search_model_versions("name='moving-digits-motion'")] == (
        versions
    )


def test_the_frames_probe_reads_every_conditions_videos_and_the_held_out_clips(toy_chain, capsys):
    from experiments.moving_digits import probes

    argv = ["frames", "--config", str(PRESET_FILE), "--work", str(toy_chain / "reproduce")]
    probes.main([*argv, *_toy_overrides(toy_chain)])
    out = capsys.readouterr().out
    shares = dict(re.findall(r"^\((\w+)\) \d+ videos: ([\d.]+) \|", out, flags=re.M))
    merged = set(re.findall(r"^\((\w+)\) 4 videos left out", out, flags=re.M))
    assert set(shares) | merged == {"a1", "b", "c", "c0", "d", "r"}
    assert "(r) 4 videos:" in out  # the 4 held-out clips, decoded by the VAE
    assert all(0 <= float(share) <= 1 for share in shares.values())


def test_the_lora_scale_probe_scores_both_modules_at_each_scale_and_draws_its_sheet(
    toy_chain, capsys
):
    """Plumbing only: toy models score alike in every row. That the probe's rows at scales 0 and
    1 are the chain's (b), (a1), (c) and (c0) was measured at full size (docs/reproduction.md)."""
    from PIL import Image

    from animatediff.report import GAP, LABEL_HEIGHT
    from experiments.moving_digits import probes

    work = toy_chain / "reproduce"
    argv = ["lora_scale", "--config", str(PRESET_FILE), "--work", str(work), "--scales", "0,1"]
    off = ["--off", "down_blocks.0,up_blocks.1"]
    probes.main([*argv, "--repeats", "1", *off, *_toy_overrides(toy_chain)])
    rows = re.findall(
        r"^\| ([\d.]+) \| ([\w.,]+(?: off)?) \| ([\d.]+)(?: \| [\d.]+){6} \| ([\d.]+) \|",
        capsys.readouterr().out,
        flags=re.M,
    )
    modules = ("trained", "identity", "down_blocks.0,up_blocks.1 off")
    assert {(scale, module) for scale, module, *_ in rows} == {
        (scale, module) for scale in ("0", "1") for module in modules
    }
    assert all(
        0 <= float(share) <= 1 and 0 <= float(switching) <= 1 for *_, share, switching in rows
    )
    # The trained module's videos of the 4 toy prompts at each of the 2 scales, one row each.
    canvas = load_config(PRESET_FILE, TOY).reproduce.canvas
    assert Image.open(work / "lora_scale.png").height == 8 * (LABEL_HEIGHT + canvas + GAP) - GAP


def test_the_style_probe_reads_the_personalized_conditions_and_the_rendered_stills(
    toy_chain, capsys
):
    from experiments.moving_digits import probes

    argv = ["style", "--config", str(PRESET_FILE), "--work", str(toy_chain / "reproduce")]
    probes.main([*argv, *_toy_overrides(toy_chain)])
    out = capsys.readouterr().out
    assert "(stills) 4 rendered style stills: subject (" in out  # reproduce.style_stills=4
    counts = re.findall(
        r"^\((c0?)\) 4 videos: (\d) with a plain frame, (\d+) plain frames of (\d+)",
        out,
        flags=re.M,
    )
    assert [name for name, *_ in counts] == ["c", "c0"]
    assert all(
        int(videos) <= 4 and int(frames) <= int(total) for _, videos, frames, total in counts
    )
    # Over all videos, the probe's figure is the claim's: the same per-video colours.
    claim = json.loads((toy_chain / "reproduce" / "summary.json").read_text())["metrics"]["c"]
    assert re.search(
        rf"^style of \(c\) vs \(c0\): {claim['style_difference']:.2%} over all videos",
        out,
        flags=re.M,
    )


def test_plain_frames_are_those_whose_canvas_is_nearer_the_plain_style():
    from experiments.moving_digits.probes import plain_frames

    rc = load_config(PRESET_FILE).reproduce
    video = np.zeros((4, 16, 16, 3), dtype=np.uint8)  # (frames, height, width, rgb)
    video[:] = np.round(np.asarray(rc.style_background) * 255).astype(np.uint8)
    video[2] = np.round(np.asarray(rc.background) * 255).astype(np.uint8)
    video[:, 5:11, 5:11] = 255  # a subject away from the border does not count
    video[3, :, :2] = 0  # nor does a border partly dark, while most of it is the style's canvas
    assert plain_frames(video, rc).tolist() == [False, False, True, False]


def test_without_blocks_turns_off_only_the_named_blocks_modules_in_a_copy():
    from animatediff.config import MotionModuleConfig
    from animatediff.motion_module import MotionModules
    from experiments.moving_digits.probes import without_blocks

    generator = torch.Generator().manual_seed(0)
    modules = MotionModules((32, 64), 1, MotionModuleConfig(norm_groups=8, num_heads=4))
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    before = {name: p.clone() for name, p in modules.state_dict().items()}
    off = without_blocks(modules, ["down_blocks.0", "up_blocks.1"])
    # (batch * frames, channels, height, width) at each level's width: 32, then 64 channels
    at_32, at_64 = (torch.randn(2 * 4, c, 3, 3, generator=generator) for c in (32, 64))
    # Turned off, a module passes its input through; one of another block still changes it.
    assert torch.equal(off.down_blocks[0].motion_modules[0](at_32, 4), at_32)
    assert torch.equal(off.up_blocks[1].motion_modules[0](at_32, 4), at_32)
    assert not torch.equal(off.down_blocks[1].motion_modules[0](at_64, 4), at_64)
    zeroed = {n for n, p in off.state_dict().items() if not torch.equal(p, before[n])}
    assert zeroed and all(n.startswith(("down_blocks.0.", "up_blocks.1.")) for n in zeroed)
    assert all(torch.equal(p, before[n]) for n, p in modules.state_dict().items())  # a copy
    with pytest.raises(SystemExit, match="no motion module"):
        without_blocks(modules, ["down_blocks.7"])


def test_canvas_spread_is_zero_for_one_canvas_and_the_colour_distance_for_two():
    from experiments.moving_digits.probes import canvas_spread

    video = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    video[:, 6:10, 6:10] = 255  # a subject away from the border does not count
    assert canvas_spread(video) == 0.0
    video[2:, ..., 2] = np.where(video[2:, ..., 2] == 255, 255, 204)  # frames 2, 3: a blue canvas
    assert canvas_spread(video) == pytest.approx(0.8)


def test_a_frame_canvas_trajectory_follows_a_subject_whose_canvas_changes_colour():
    """A square moving right 2 px per frame; the canvas turns from black to blue halfway. The
    evaluation's one canvas colour per video takes the canvas for the subject; each frame's own
    does not."""
    from animatediff.metrics import trajectory
    from experiments.moving_digits.probes import frame_canvas_trajectory

    video = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    video[4:, ..., 2] = 204
    for t in range(8):
        video[t, 13:19, 4 + 2 * t : 10 + 2 * t] = 255
    own = frame_canvas_trajectory(video, load_config(PRESET_FILE))
    assert own.direction == "right"
    assert own.displacement_per_frame == pytest.approx(2.0, abs=0.01)
    assert trajectory(video).displacement_per_frame < 1.0


def test_the_longer_tables_own_canvas_cells_count_style_switches_and_not_their_jumps():
    """Two squares gliding right 2 px per frame, one on a canvas that turns blue halfway: on each
    frame's own canvas both glide (residual 0, no jump); one of the two switches style."""
    from experiments.moving_digits.longer import own_canvas

    videos = [np.zeros((8, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    videos[1][4:, ..., 2] = 204
    for video in videos:
        for t in range(8):
            video[t, 13:19, 4 + 2 * t : 10 + 2 * t] = 255
    direction, speed, residual, jumping, switching = own_canvas(
        videos, ["right", "left"], load_config(PRESET_FILE)
    )
    assert direction == 0.5  # the second caption said left
    assert speed == pytest.approx(2.0, abs=0.01) and residual == pytest.approx(0.0, abs=0.01)
    assert jumping == 0 and switching == 0.5


@pytest.mark.slow
def test_the_full_reproduction(ray_cluster, tmp_path):
    """The full run (about 45 minutes on 2 cores): `make reproduce` does the same."""
    from jobs import cli, reproduce

    argv = [PRESET, f"output_dir={tmp_path}"]
    assert cli.run(reproduce.main, argv) == 0
