"""Browsing experiments as a person does: from a model version to the run that trained it, its
data and the preprocessing that wrote the data, its code commit, samples, and its training,
validation and system curves grouped.

The MLflow store is the one the session's tiny reference training run wrote (``conftest.reference``:
Ray Train, 2 workers, registered as version 1), with the preprocess run ``conftest.shards`` logged
for its shards. The client-level tests read it through ``MlflowClient``; the browser test opens
it in MLflow's UI (``mlflow server`` + headless Chromium) and keeps its screenshots in
``test-artifacts/mlflow/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from mlflow_helpers import tracking_server

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "mlflow"
PREFIXES = ("train/", "val/", "perf/", "memory/", "system/")


def _client(cfg):
    from mlflow import MlflowClient

    return MlflowClient(cfg.mlflow.tracking_uri)


def _inputs(run) -> dict[str, object]:
    """``{context: dataset}`` of a run's dataset inputs."""
    found = {}
    for dataset_input in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        found[tags["mlflow.data.context"]] = dataset_input.dataset
    return found


def test_preprocess_run_logs_the_shards_it_wrote_and_its_errors(shards: Path) -> None:
    """No Ray: the ``shards`` fixture logs what ``jobs.preprocess`` logs with data.log_mlflow."""
    from train_helpers import tiny_train_config

    cfg = tiny_train_config(shards)
    client = _client(cfg)
    manifest_path = next((shards / "latents").glob("fp-*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    run_id = manifest["runs"][-1]["mlflow_run_id"]  # the manifest leads to the MLflow run
    run = client.get_run(run_id)
    output = _inputs(run)["output"]
    assert output.name == f"latents/{manifest_path.parent.name}"
    assert json.loads(output.source) == {"uri": str(manifest_path.parent)}
    assert json.loads(output.profile)["clips"] == manifest["num_clips"] == 8
    columns = {column["name"] for column in json.loads(output.schema)["mlflow_colspec"]}
    assert {"clip_id", "caption", "latent_mean", "latent_std"} <= columns
    tags = run.data.tags
    assert tags["job"] == "preprocess" and tags["data_fingerprint"] == manifest_path.parent.name
    assert tags["mlflow.source.name"] == "jobs.preprocess" and tags["mlflow.user"]
    assert "1 failed (missing_file 1)" in tags["mlflow.note.content"]
    assert tags["errors_uri"].endswith("errors.parquet")
    local = client.download_artifacts(run_id, "errors.json", str(shards / "dl"))
    table = json.loads(Path(local).read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert row["key"] == "missing0" and row["reason"] == "missing_file"
    assert not any(key.startswith("mlflow.") for key in run.data.params)
    assert {key.split(".")[0] for key in run.data.params} == {"data", "model"}


def test_runs_logging_one_shard_set_at_once_each_get_it(tmp_path: Path) -> None:
    """Trainings side by side log the same held-out set as their validation input; MLflow's
    find-or-create of the dataset row let all but one fail with a uniqueness error."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    from tracking.datasets import ShardSet, log_shard_set

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment = client.create_experiment("at-once", (tmp_path / "artifacts").as_uri())
    runs = [client.create_run(experiment).info.run_id for _ in range(6)]
    manifest = {"num_clips": 2, "shards": [{"path": "shards/a.parquet", "rows": 2, "sha256": "a"}]}
    shards = ShardSet.of(str(tmp_path / "latents" / "fp-0123456789abcdef"), manifest)
    start = threading.Barrier(len(runs), timeout=30)

    def log(run_id: str) -> None:
        start.wait()
        log_shard_set(store, run_id, shards, "validation")

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        list(pool.map(log, runs))
    for run_id in runs:
        assert _inputs(client.get_run(run_id))["validation"].digest == shards.digest


@pytest.mark.parametrize("store", ["new", "existing"])
def test_jobs_started_at_once_share_one_store_and_one_experiment(tmp_path: Path, store) -> None:
    """Four jobs started together on one SQLite file. Before `tracking.runs.client` took turns:
    on a new file, MLflow's table creation ran in all four at once and most or all of them
    failed, leaving the file half migrated; on an existing one, some failed to create the
    experiment that another had just created."""
    import multiprocessing

    from mlflow_helpers import find_or_create_experiment_when_released

    from tracking.runs import client

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store == "existing":
        client(tracking_uri)
    context = multiprocessing.get_context("spawn")  # a fresh process each, as jobs are
    start, results = context.Barrier(4, timeout=120), context.Queue()
    jobs = [
        context.Process(
            target=find_or_create_experiment_when_released, args=(tracking_uri, start, results)
        )
        for _ in range(4)
    ]
    for job in jobs:
        job.start()
    found = [results.get(timeout=180) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
    experiment = client(tracking_uri).get_experiment_by_name("at-once")
    assert experiment is not None, found
    assert found == [experiment.experiment_id] * 4
    assert [job.exitcode for job in jobs] == [0] * 4


def test_training_run_names_its_data_code_and_user(reference) -> None:
    from tracking.provenance import code_version

    outcome, cfg = reference
    client = _client(cfg)
    run = client.get_run(outcome.run_id)
    tags = run.data.tags
    fingerprint = tags["data_fingerprint"]
    assert fingerprint.startswith("fp-")
    assert (tags["preset"], tags["stage"], tags["base_model"]) == ("tiny", "motion", "builtin:tiny")
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("jobs.train", "JOB")
    assert tags["mlflow.user"]
    code = code_version()
    if code is not None:  # a git checkout: the commit is on the run (absent in the image)
        assert tags["mlflow.source.git.commit"] == code.commit
    # Only the sections training uses are params; relative paths are logged resolved.
    sections = {key.split(".")[0] for key in run.data.params}
    assert sections == {"model", "train", "sample", "data"}
    assert run.data.params["data.fingerprint"] == fingerprint
    assert run.data.params["train.data_uri"] == str(Path(cfg.train.data_uri).resolve())
    # The data: the shard set with its absolute URI, counts and the preprocess run.
    training = _inputs(run)["training"]
    directory = Path(cfg.train.data_uri) / fingerprint
    assert json.loads(training.source) == {"uri": str(directory.resolve())}
    profile = json.loads(training.profile)
    assert (profile["clips"], profile["shards"], profile["fingerprint"]) == (8, 2, fingerprint)
    manifest = json.loads((directory / "manifest.json").read_text())
    preprocess = manifest["runs"][-1]["mlflow_run_id"]
    assert profile["preprocess_runs"] == [preprocess]
    experiment = client.get_run(preprocess).info.experiment_id
    description = tags["mlflow.note.content"]
    assert f"(#/experiments/{experiment}/runs/{preprocess})" in description
    assert "attempt 1: started at step 0" in description and "finished at step 6" in description


def test_metrics_are_grouped_and_system_metrics_and_samples_are_logged(reference) -> None:
    outcome, cfg = reference
    client = _client(cfg)
    run = client.get_run(outcome.run_id)
    metrics = run.data.metrics
    assert all(key.startswith(PREFIXES) for key in metrics), sorted(metrics)
    assert "resumed_from_step" not in metrics
    # Train and validation loss share their definition and step axis.
    train = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "train/loss")}
    val = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "val/loss")}
    assert sorted(train) == [1, 2, 3, 4, 5, 6] and list(val) == [6]
    assert metrics["perf/clips_per_s"] > 0
    system = [key for key in metrics if key.startswith("system/node0/")]
    assert "system/node0/cpu_utilization_percentage" in system
    assert "system/node0/system_memory_usage_megabytes" in system
    # Samples: a step-named GIF per prompt at a visible size, and a step-indexed image.
    from PIL import Image

    (gif,) = client.list_artifacts(outcome.run_id, "samples/step00000006")
    assert gif.path.endswith("/prompt0-a-red-ball-bouncing.gif")
    local = client.download_artifacts(
        outcome.run_id, gif.path, str(Path(outcome.export_path).parent)
    )
    assert min(Image.open(local).size) >= 256
    images = [a.path for a in client.list_artifacts(outcome.run_id, "images")]
    assert any("samples~0 a red ball bouncing+step+6+" in path for path in images), images


def test_model_version_says_what_trained_it(reference) -> None:
    outcome, cfg = reference
    client = _client(cfg)
    name = cfg.mlflow.registered_model
    version = client.get_model_version(name, "1")
    assert version.run_id == outcome.run_id
    weights = Path(outcome.motion_dir) / "motion_module.safetensors"
    tags = version.tags
    assert tags["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    run_tags = client.get_run(outcome.run_id).data.tags
    assert (tags["step"], tags["stage"], tags["preset"]) == ("6", "motion", "tiny")
    assert tags["data_fingerprint"] == run_tags["data_fingerprint"]
    if "mlflow.source.git.commit" in run_tags:
        assert tags["git_commit"] == run_tags["mlflow.source.git.commit"]
    experiment = client.get_run(outcome.run_id).info.experiment_id
    description = version.description
    assert f"[reference](#/experiments/{experiment}/runs/{outcome.run_id})" in description
    assert "6 steps" in description and run_tags["data_fingerprint"] in description
    assert "written by preprocess run [preprocess-" in description
    assert "Identical weights are never registered twice" in (
        client.get_registered_model(name).description
    )
    # The logged model: named after what it is, with the run's last losses attached.
    model = client.search_logged_models(experiment_ids=[experiment])
    (logged,) = [
        m for m in model if m.source_run_id == outcome.run_id and m.name == "motion-module"
    ]
    attached = {metric.key: metric for metric in logged.metrics}
    assert attached["val/loss"].value == pytest.approx(outcome.val_loss)
    assert (
        attached["train/loss"].step == 6 and logged.tags["weights_sha256"] == tags["weights_sha256"]
    )
    assert len(client.get_metric_history(outcome.run_id, "val/loss")) == 1  # no extra point


# ---------------------------------------------------------------------------------------------
# The UI in headless Chromium
# ---------------------------------------------------------------------------------------------


class Browser:
    """Headless Chromium on MLflow's UI: open a route, wait for texts, keep screenshots."""

    def __init__(self, url: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,2000",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(
            service=Service(shutil.which("chromedriver")), options=options
        )
        self.url, self.shots = url, shots
        self.taken: list[Path] = []

    def open(self, route: str) -> None:
        self.driver.get(f"{self.url}/#{route}")

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for(self, *texts: str, timeout: float = 90) -> str:
        """The page's text once it shows every one of ``texts``; else the missing ones fail
        the test (with a screenshot of what was there)."""
        deadline = time.time() + timeout
        while True:
            body = self.text()
            missing = [text for text in texts if text not in body]
            if not missing:
                return body
            if time.time() > deadline:
                self.shot("failed-" + str(len(self.taken)))
                raise AssertionError(f"{self.driver.current_url}: not shown: {missing}")
            time.sleep(0.5)

    def click(self, link_text: str) -> None:
        """Follow a link; one that opens a new tab (MLflow's markdown links do) is followed
        there."""
        from selenium.webdriver.common.by import By

        before = set(self.driver.window_handles)
        self.driver.find_element(By.LINK_TEXT, link_text).click()
        time.sleep(1)
        opened = set(self.driver.window_handles) - before
        if opened:
            self.driver.switch_to.window(opened.pop())

    def click_if_present(self, selector: str = "", text: str = "") -> None:
        """Click what is shown of ``selector`` (CSS) or of the elements reading ``text``."""
        from selenium.webdriver.common.by import By

        if text:
            found = self.driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
        else:
            found = self.driver.find_elements(By.CSS_SELECTOR, selector)
        for element in found:
            if element.is_displayed():
                element.click()

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def mlflow_ui(reference, tmp_path):
    """MLflow's UI (``mlflow server``) on the reference run's store."""
    outcome, cfg = reference
    with tracking_server(cfg.mlflow.tracking_uri, tmp_path / "artifacts") as url:
        yield url


def test_a_person_browses_from_a_version_to_its_run_data_code_and_curves(
    reference, mlflow_ui: str
) -> None:
    """Version page -> (Source run link) run overview: dataset, tags, source and commit,
    description -> (its link) the preprocess run and its errors -> the run's grouped metric
    charts, system metrics, a sample GIF; the runs table's Dataset column; the registered
    model. Screenshots: ``test-artifacts/mlflow/<n>-<page>.png``."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip(
            "Debian chromium + chromium-driver are not installed (`make test` installs them)"
        )
    from tracking.provenance import code_version

    outcome, cfg = reference
    client = _client(cfg)
    run = client.get_run(outcome.run_id)
    experiment, fingerprint = run.info.experiment_id, run.data.tags["data_fingerprint"]
    name = cfg.mlflow.registered_model
    weights_sha = client.get_model_version(name, "1").tags["weights_sha256"]
    preprocess = client.get_run(_inputs_profile(run)["preprocess_runs"][0])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    browser = Browser(mlflow_ui, SCREENSHOTS)
    try:
        # 1. The version: what trained it, its tags, its evaluation place, its source run.
        browser.open(f"/models/{name}/versions/1")
        browser.wait_for("Version 1", "Trained by", "6 steps", fingerprint, weights_sha)
        browser.click_if_present("button[aria-label='Close']")  # MLflow's assistant panel
        browser.wait_for("weights_sha256", "data_fingerprint", "git_commit", "candidate")
        browser.shot("1-model-version")

        # 2. Its run, reached through the version's "Source Run" link.
        browser.click("reference")
        page = browser.wait_for("About this run", "Datasets", f"latents/{fingerprint}", "Training")
        assert outcome.run_id in browser.driver.current_url
        browser.click_if_present("button[aria-label='Close']")
        browser.click_if_present(text="Show more")  # the whole description
        page = browser.wait_for(
            "jobs.train",
            "preset",
            "tiny",
            "stage",
            "data_fingerprint",
            "Registered models",
            name,
            "motion-module",  # the logged model
            preprocess.info.run_name,
            "attempt 1: started at step 0",
            "perf/clips_per_s: training clips per second, summed over all workers",
        )
        code = code_version()
        if code is not None:
            assert code.commit[:7] in page
        browser.shot("2-run-overview")

        # 3. The data's origin: the preprocess run, through the link in the description.
        browser.click(preprocess.info.run_name)
        browser.wait_for("Datasets", f"latents/{fingerprint}", "Preprocessing of")
        browser.click_if_present(text="Show more")
        browser.wait_for("missing_file", "errors.json", "errors.parquet")
        browser.shot("3-preprocess-run")

        # 4. Curves, grouped: train/ and val/ side by side, perf/, memory/, samples.
        run_page = f"/experiments/{experiment}/runs/{outcome.run_id}"
        browser.driver.set_window_size(1400, 3600)  # charts render only when in view
        browser.open(f"{run_page}/model-metrics")
        browser.wait_for(
            "train\n(4)",
            "val\n(1)",
            "perf\n(4)",
            "memory\n(2)",
            "samples",
            "reference (train/loss)",
            "reference (val/loss)",
            "reference (perf/clips_per_s)",
        )
        browser.shot("4-run-model-metrics")
        browser.driver.set_window_size(1400, 2000)
        browser.open(f"{run_page}/system-metrics")
        browser.wait_for("system/node0", "cpu_utilization_percentage", "system_memory_usage")
        browser.shot("5-run-system-metrics")

        # 5. A validation sample, big enough to see.
        browser.open(f"{run_page}/artifacts/samples/step00000006/prompt0-a-red-ball-bouncing.gif")
        browser.wait_for("prompt0-a-red-ball-bouncing.gif")
        width = 0
        for _ in range(60):
            width = browser.driver.execute_script(
                "return Math.max(0, ...[...document.images].filter(i => i.src.startsWith('blob:'))"
                ".map(i => i.complete ? i.naturalWidth : 0))"  # the artifact, fetched by the page
            )
            if width:
                break
            time.sleep(0.5)
        assert width >= 256
        browser.shot("6-run-sample")

        # 6. The runs table's Dataset column, and the registered model's description.
        browser.open(f"/experiments/{experiment}/runs")
        browser.wait_for("Dataset", f"latents/{fingerprint}", "reference")
        browser.shot("7-experiment-runs")
        browser.open(f"/models/{name}")
        browser.wait_for("Identical weights are never registered twice", "Version 1")
        browser.shot("8-registered-model")
    finally:
        browser.quit()
    assert [p.name for p in browser.taken] == [
        "1-model-version.png",
        "2-run-overview.png",
        "3-preprocess-run.png",
        "4-run-model-metrics.png",
        "5-run-system-metrics.png",
        "6-run-sample.png",
        "7-experiment-runs.png",
        "8-registered-model.png",
    ]
    for shot in browser.taken:
        assert shot.stat().st_size > 20_000, shot


def _inputs_profile(run) -> dict:
    return json.loads(_inputs(run)["training"].profile)
