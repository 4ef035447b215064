"""`python -m jobs.evaluate` on the session Ray cluster: a registered version is scored on held-out
shards and generated videos, the report and contact sheet are written, the metrics land on the
version's run, and `jobs.promote` can require them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_helpers import register_versions
from train_helpers import tiny_train_config, write_latent_shards

PROMPTS = [
    {"prompt": "a red square moving right", "seed": 1, "expect": {"direction": "right"}},
    {"prompt": "a blue disc moving up", "seed": 2, "expect": {"direction": "up"}},
    "a green square",
]


@pytest.fixture(scope="module")
def evaluated(ray_cluster, tmp_path_factory):
    from jobs import cli, evaluate

    work = tmp_path_factory.mktemp("evaluate")
    prompts = work / "prompts.txt"
    prompts.write_text(
        "\n".join(json.dumps(p) if isinstance(p, dict) else p for p in PROMPTS) + "\n"
    )
    overrides = [
        f"evaluate.prompts={prompts}",
        "evaluate.timesteps=3",
        "evaluate.contact_sheet_frames=3",
        f"output_dir={work / 'out'}",
        "generate.num_workers=1",
    ]
    cfg = tiny_train_config(work, *overrides)
    write_latent_shards(cfg)
    versions = register_versions(cfg, work, [3, 4])  # candidate: the second
    argv = [f"--config={Path(__file__).parents[1] / 'configs/tiny.yaml'}"]
    argv += [f"{k}={v}" for k, v in _overrides(cfg).items()] + overrides
    assert cli.run(evaluate.main, argv) == 0
    return cfg, versions, work / "out" / "evaluate", argv


def _overrides(cfg) -> dict[str, str]:
    """The tiny training config's own overrides, for the job's command line."""
    return {
        "train.data_uri": cfg.train.data_uri,
        "mlflow.tracking_uri": cfg.mlflow.tracking_uri,
        "model.base.cache_dir": cfg.model.base.cache_dir,
        "data.num_frames": cfg.data.num_frames,
        "data.resolution": cfg.data.resolution,
        "sample.num_frames": cfg.sample.num_frames,
        "sample.context_frames": cfg.sample.context_frames,
        "sample.context_overlap": cfg.sample.context_overlap,
        "sample.height": cfg.sample.height,
        "sample.width": cfg.sample.width,
        "sample.num_inference_steps": cfg.sample.num_inference_steps,
    }


def test_evaluation_writes_a_report_with_finite_metrics(evaluated):
    import math

    from PIL import Image

    _, _, out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("held_out_loss", "held_out_loss_permuted", "order_sensitivity"):
        assert math.isfinite(metrics[name]), name
    assert metrics["videos"] == 3 and 0 <= metrics["direction_accuracy"] <= 1
    assert math.isfinite(metrics["frame_consistency"])
    videos = [json.loads(line) for line in (out / "videos.jsonl").read_text().splitlines()]
    assert [v["prompt"] for v in videos] == [
        p["prompt"] if isinstance(p, dict) else p for p in PROMPTS
    ]
    assert "direction_correct" in videos[0] and "direction_correct" not in videos[2]
    assert all((out / v["file"]).is_file() for v in videos)
    report = (out / "report.md").read_text()
    assert "held_out_loss" in report and "a blue disc moving up" in report
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 3 * 32 and sheet.width >= 3 * 32  # 3 rows of 3 frames of 32 px


def test_metrics_land_on_the_versions_run_and_gate_promotion(evaluated, tmp_path):
    from mlflow import MlflowClient

    from jobs import cli, promote

    cfg, versions, _, argv = evaluated
    client = MlflowClient(cfg.mlflow.tracking_uri)
    candidate = client.get_model_version(cfg.mlflow.registered_model, versions[1])
    metrics = client.get_run(candidate.run_id).data.metrics
    assert "eval/held_out_loss" in metrics and "eval/direction_accuracy" in metrics
    artifacts = {a.path for a in client.list_artifacts(candidate.run_id, "evaluation")}
    assert "evaluation/contact_sheet.png" in artifacts
    # The per-video scores as an MLflow table, the held-out shards as the evaluation dataset,
    # and the summary in the version's description.
    local = client.download_artifacts(candidate.run_id, "evaluation/scores.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert len(table["data"]) == len(PROMPTS) and "prompt" in table["columns"]
    run = client.get_run(candidate.run_id)
    (dataset,) = [
        i.dataset
        for i in run.inputs.dataset_inputs
        if {t.key: t.value for t in i.tags}["mlflow.data.context"] == "evaluation"
    ]
    assert json.loads(dataset.source)["uri"].startswith(str(Path(cfg.train.data_uri).resolve()))
    description = candidate.description
    assert "**Evaluation**" in description and "`held_out_loss`" in description
    assert f"runs/{candidate.run_id})" in description
    config = [a for a in argv if a.startswith("--config")]
    store = [a for a in argv if a.startswith("mlflow.tracking_uri")]
    impossible = "mlflow.promote_require=['direction_accuracy >= 1.5']"
    assert cli.run(promote.main, [*config, *store, impossible]) == 1
    champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    assert str(champion.version) == versions[0]
    reachable = "mlflow.promote_require=['held_out_loss <= 1000', 'videos >= 3']"
    assert cli.run(promote.main, [*config, *store, reachable]) == 0
    champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    assert str(champion.version) == versions[1]


def _stage(evaluated, output_dir: Path, version: str, **evaluate_fields):
    """The job's config, MLflow off, evaluating ``version`` into ``output_dir``."""
    import dataclasses

    from jobs import cli, evaluate

    cfg, _, _, argv = evaluated
    base, _ = cli.parse(argv, evaluate.JOB)
    model = f"models:/{cfg.mlflow.registered_model}/{version}"
    fields = {"model": model, **evaluate_fields}
    return dataclasses.replace(
        base,
        output_dir=str(output_dir),
        mlflow=dataclasses.replace(base.mlflow, enabled=False),
        evaluate=dataclasses.replace(base.evaluate, **fields),
    )


def test_models_scored_in_one_pass_match_their_own_evaluations(evaluated, tmp_path):
    """``run_evaluations``: one actor pool generates both versions' videos (switching models
    between rows) while the driver measures their held-out losses; each model's scores are
    those of its own evaluation (the job's, for the candidate). A third config, the first
    version sampled with one shared noise, reuses the first's held-out measurement."""
    import dataclasses

    from pipelines.evaluate import run_evaluation, run_evaluations

    _, versions, out, _ = evaluated

    def stage(version: str, subdir: str):
        return _stage(evaluated, tmp_path, version, output_subdir=subdir)

    shared_noise = stage(versions[0], "v0-shared-noise")
    shared_noise = dataclasses.replace(
        shared_noise, sample=dataclasses.replace(shared_noise.sample, shared_noise=True)
    )
    first, candidate, shared = run_evaluations(
        [stage(versions[0], "v0"), stage(versions[1], "v1"), shared_noise]
    )
    alone = run_evaluation(stage(versions[0], "v0-alone"))
    job = [json.loads(line) for line in (out / "videos.jsonl").read_text().splitlines()]
    job_metrics = json.loads((out / "metrics.json").read_text())
    scores = ("frame_consistency", "displacement_per_frame", "motion_magnitude")

    def per_video(videos):
        return [video[name] for video in videos for name in scores]

    # A video denoised in another batch can differ by a uint8 level in a few pixels; the two
    # versions' videos differ by far more (0.01 to 0.4 here), so a pass that scored one model's
    # videos for both would fail.
    assert per_video(candidate.videos) == pytest.approx(per_video(job), abs=1e-4)
    assert per_video(first.videos) == pytest.approx(per_video(alone.videos), abs=1e-4)
    assert per_video(first.videos) != pytest.approx(per_video(candidate.videos), abs=1e-2)
    assert candidate.metrics["held_out_loss"] == job_metrics["held_out_loss"]
    assert first.metrics["held_out_loss"] == alone.metrics["held_out_loss"]
    held_out = [name for name in first.metrics if name.startswith("held_out_loss")]
    assert len(held_out) == 2 + 3  # the mean, the permuted mean, evaluate.timesteps=3
    assert {n: shared.metrics[n] for n in held_out} == {n: first.metrics[n] for n in held_out}
    assert shared.metrics["held_out_seconds"] == 0
    assert first.metrics["held_out_seconds"] > 0 and candidate.metrics["held_out_seconds"] > 0
    assert (tmp_path / "v0" / "report.md").is_file() and (tmp_path / "v1" / "report.md").is_file()


def test_a_missing_held_out_set_fails_before_any_video_is_generated(evaluated, tmp_path):
    """Every model's held-out shards are found first: a wrong ``evaluate.data_uri`` fails in
    seconds, not after the pool has generated (and written) the other models' videos."""
    from pipelines.evaluate import run_evaluations

    _, versions, _, _ = evaluated
    empty = tmp_path / "no-shards"
    empty.mkdir()
    good = _stage(evaluated, tmp_path, versions[0], output_subdir="good")
    wrong = _stage(evaluated, tmp_path, versions[1], output_subdir="wrong", data_uri=str(empty))
    with pytest.raises(ValueError, match=f"{empty}: no shards with the expected fingerprint"):
        run_evaluations([good, wrong])
    assert not (tmp_path / "good").exists()


def test_models_in_one_pass_must_share_the_generate_settings():
    import dataclasses

    from animatediff.config import load_config
    from pipelines.evaluate import run_evaluations

    cfg = load_config(Path(__file__).parents[1] / "configs/tiny.yaml")
    other = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, num_workers=3))
    with pytest.raises(ValueError, match="^generate: "):
        run_evaluations([cfg, other])
    with pytest.raises(ValueError, match="no configuration"):
        run_evaluations([])
