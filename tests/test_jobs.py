"""Job entrypoints: the prompts-file parser, and `python -m jobs.preprocess` and
`python -m jobs.generate` submitted to a real `ray start --head` cluster (one for the module)
through the Job Submission client, as on a laptop or a remote cluster.

The submitted cluster is separate from the session fixture's (its own ports and temp dir) and is
stopped by terminating exactly the processes it started, never with `ray stop` (which would take
down every Ray on the machine, the session cluster included)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from serve_helpers import free_port, random_motion_modules, register_versions

from animatediff.config import load_config
from pipelines.generate import read_prompts
from tracking.registry import resolve_motion_source
from tracking.runs import RESUMED_TAG

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs/tiny.yaml")


def test_read_prompts_text_and_json_lines():
    rows = read_prompts(
        '# comment\na red ball\n\n{"prompt": "waves", "seed": 9, "num_frames": 4}\n', CFG
    )
    assert [r["prompt"] for r in rows] == ["a red ball", "waves"]
    assert rows[0]["seed"] == CFG.sample.seed and rows[1]["seed"] == 9
    assert rows[0]["num_frames"] == CFG.sample.num_frames and rows[1]["num_frames"] == 4
    assert [r["index"] for r in rows] == [0, 1]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a\n{bad json\n", "line 2: invalid JSON"),
        ('{"prompt": "a", "colour": 1}\n', "line 1: unknown keys ['colour']"),
        ('{"prompt": ""}\n', "line 1: needs a non-empty 'prompt'"),
        ("# only a comment\n", "holds no prompt"),
    ],
)
def test_read_prompts_errors_name_the_line(text, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_prompts(text, CFG)


def test_resolve_model_pins_a_local_directory(tmp_path):
    source = resolve_motion_source(str(tmp_path), CFG)
    assert (source.uri, source.version) == (str(tmp_path), "local")


def test_generate_writer_merges_the_configured_motion_loras(tmp_path):
    """``generate.motion_loras`` reach the writer pinned from the driver; the LoRA (a file in
    the original format, as people download them) changes the videos."""
    import numpy as np
    from PIL import Image
    from serve_helpers import random_motion_lora

    from animatediff.checkpoints import save_motion_modules
    from animatediff.config import to_dict
    from animatediff.motion_lora import ORIGINAL_FILE, save_motion_lora
    from pipelines.generate import VideoWriter
    from tracking.registry import resolve_motion_lora

    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"model.base.cache_dir={tmp_path / 'cache'}",
            "sample.num_frames=4",
            "sample.num_inference_steps=2",
            "generate.motion_loras=[{name: %s, scale: 0.8}]" % (tmp_path / "lora" / ORIGINAL_FILE),
        ],
    )
    save_motion_modules(random_motion_modules(cfg, seed=3), cfg.model.motion, tmp_path / "mm")
    save_motion_lora(random_motion_lora(cfg, seed=4), tmp_path / "lora")
    (ref,) = cfg.generate.motion_loras
    lora = resolve_motion_lora(ref.name, cfg, ref.scale)
    assert (lora.version, lora.scale, lora.label()) == ("local", 0.8, f"{ref.name}:local@0.8")
    rows = read_prompts("a red ball bouncing\n", cfg)
    batch = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    source = resolve_motion_source(str(tmp_path / "mm"), cfg)
    videos = {}
    for name, loras in (("plain", ()), ("lora", (lora,))):
        writer = VideoWriter(to_dict(cfg), source, str(tmp_path / name), loras)
        (written,) = writer(batch)["file"]
        image = Image.open(tmp_path / name / written)
        videos[name] = np.stack(
            [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]
        )
    assert videos["lora"].shape == videos["plain"].shape == (4, 64, 64, 3)
    assert not np.array_equal(videos["lora"], videos["plain"])


def test_generate_from_a_registry_alias(ray_cluster, tmp_path):
    """`generate.model=candidate` generates with the version the alias names: its videos are
    those of that version's own files, and not the champion's (the default)."""
    from jobs import cli, generate

    registry = [
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp_path / 'artifacts'}",
    ]
    cfg = load_config(ROOT / "configs/tiny.yaml", registry)
    champion, candidate = register_versions(cfg, tmp_path / "registered", seeds=[1, 2])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball bouncing\n")

    def generated(model: str, name: str) -> tuple[dict, bytes]:
        args = [
            *("--config", str(ROOT / "configs/tiny.yaml"), *registry),
            f"generate.prompts={prompts}",
            f"generate.model={model}",
            f"output_dir={tmp_path / name}",
            "sample.num_frames=4",
            "sample.num_inference_steps=2",
        ]
        assert cli.run(generate.main, args) == 0
        (entry,) = [json.loads(line) for line in (tmp_path / name / "generate/index.jsonl").open()]
        return entry, (tmp_path / name / "generate" / entry["file"]).read_bytes()

    entry, video = generated("candidate", "by-alias")
    name = cfg.mlflow.registered_model
    assert (entry["model_uri"], entry["model_version"]) == (
        f"models:/{name}/{candidate}",
        candidate,
    )
    files = tmp_path / "registered" / "seed-2" / "motion_module"  # what version 2 registered
    assert generated(str(files), "by-files")[1] == video
    default, other = generated("", "default")
    assert default["model_version"] == champion and other != video


class HeadNode:
    """`ray start --head --block` in its own session on free loopback ports and a private temp
    dir; `stop()` terminates that process tree only."""

    def __init__(self, auth_mode: str = "token") -> None:
        # Short path: Ray's Unix sockets live under it (107-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            # Jobs run `python -m jobs....`: the project's interpreter must come first on PATH.
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "CUDA_VISIBLE_DEVICES": "",
        }
        env.pop("RAY_ADDRESS", None)
        # Ray's default token auth, with the default token file (~/.ray/auth_token) on both ends.
        env["RAY_AUTH_MODE"] = auth_mode
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")  # noqa: SIM115
        command = [
            str(Path(bin_dir) / "ray"), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", self.temp_dir,
            # Every fixed default port may be taken by another Ray on this machine.
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
            "--num-cpus", "4",
            "--disable-usage-stats",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def client(self, timeout_s: float = 120.0):
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.output()}")
            try:
                return JobSubmissionClient(self.address)
            except (ConnectionError, OSError):  # the dashboard is not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def output(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray_start.log").read_text()[-3000:]

    def stop(self) -> None:
        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=5)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def started_head_node(auth_mode: str = "token"):
    """A ``HeadNode`` for the block; afterwards none of its processes may be left."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", auth_mode)  # the client sends the token the cluster expects
        node = HeadNode(auth_mode)
        try:
            yield node
        finally:
            node.stop()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if node.temp_dir in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, f"processes of the submitted cluster still running: {leftovers}"


@pytest.fixture(scope="module")
def head_node():
    with started_head_node() as node:
        yield node


def run_job(
    node: HeadNode,
    entrypoint: str,
    timeout_s: float = 400,
    home: Path | None = None,
    excludes: tuple[str, ...] = (),
) -> str:
    """Submit ``entrypoint`` with this repository as the working dir (less ``excludes``), and
    ``$ANIMATEDIFF_HOME`` set to ``home``; wait for SUCCEEDED; the job's logs."""
    from ray.job_submission import JobStatus

    client = node.client()
    runtime_env: dict = {
        "working_dir": str(ROOT),
        "excludes": ["outputs", ".git", "*.db", ".venv", "test-artifacts", *excludes],
    }
    if home is not None:
        runtime_env["env_vars"] = {"ANIMATEDIFF_HOME": str(home)}
    deadline = time.monotonic() + 120
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as error:  # the node's job agent starts after the dashboard
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-3000:]}\n{node.output()}"
    return logs


def test_preprocess_job_submitted_to_a_ray_start_cluster(head_node, tiny_base_dir, tmp_path):
    """The same command as the README's, through `ray job submit`: good rows become shards,
    bad ones land in the errors table, and the summary table reaches the job's logs."""
    import pyarrow.parquet as pq
    from data_media import build_collection

    table = build_collection(tmp_path / "webvid", num_good=3)
    home = tmp_path / "home"
    logs = run_job(
        head_node,
        f"python -m jobs.preprocess --config configs/tiny.yaml model.base.pretrained={tiny_base_dir} "
        f"data.input={table} data.video_root={tmp_path / 'webvid' / 'videos'} "
        "data.max_error_fraction=0.9",  # the collection is mostly bad rows on purpose
        home=home,
    )
    out = home / "outputs" / "latents"  # the default data.output, under the results home
    (manifest_path,) = out.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["num_clips"] == 3
    assert sum(entry["rows"] for entry in manifest["shards"]) == 3
    (summary,) = manifest["runs"]
    assert summary["clips_encoded"] == 3
    assert summary["rows_read"] == summary["rows_encoded"] + summary["rows_failed"]
    errors = pq.read_table(list(manifest_path.parent.glob("runs/*/errors.parquet"))[0])
    assert errors.num_rows == summary["rows_failed"] > 0
    assert f"clips encoded    {3:>10}" in logs and "rows failed" in logs


def test_generate_job_submitted_to_a_ray_start_cluster(head_node, tmp_path):
    from animatediff.checkpoints import save_motion_modules

    motion_dir = tmp_path / "motion_module"
    save_motion_modules(random_motion_modules(CFG, seed=3), CFG.model.motion, motion_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red ball bouncing\n{"prompt": "waves at dusk", "seed": 5}\n')
    entrypoint = (
        f"python -m jobs.generate --config configs/tiny.yaml generate.prompts={prompts} "
        f"generate.model={motion_dir} sample.num_frames=4 "
        "sample.num_inference_steps=2 generate.output_format=webp"
    )
    logs = run_job(head_node, entrypoint, home=tmp_path / "home")
    out = tmp_path / "home" / "outputs"  # the default output_dir, under the results home
    assert "generated 2 videos" in logs

    index = [
        json.loads(line) for line in (out / "generate" / "index.jsonl").read_text().splitlines()
    ]
    assert [entry["prompt"] for entry in index] == ["a red ball bouncing", "waves at dusk"]
    assert index[1]["seed"] == 5 and index[0]["model_version"] == "local"
    for entry in index:
        data = (out / "generate" / entry["file"]).read_bytes()
        assert data[8:12] == b"WEBP" and entry["frames"] == 4


def _ray_packages(node: HeadNode) -> dict[str, set[str]]:
    """What each per-job copy of ``--working-dir`` that the cluster unpacked holds now (Ray
    deletes copies no job uses any more, so look right after a job)."""
    found = {}
    for package in Path(node.temp_dir).glob("session_*/runtime_resources/working_dir_files/*"):
        try:
            found[package.name] = {f.name for f in package.iterdir()}
        except (FileNotFoundError, NotADirectoryError):  # a zip, a lock, or deleted meanwhile
            continue
    return found


# Four submitted jobs on their own head (~200 s on 2 cores), too long for CI's 25 minutes: CI
# keeps job submission through the preprocess and generate jobs above; `make test-all` runs this.
@pytest.mark.slow
@pytest.mark.integration  # its own `ray start` head, not the module's `head_node`
def test_submitted_train_promote_and_serve_keep_their_results_in_the_home(tmp_path, tiny_base_dir):
    """The tiny preset's default relative paths, submitted as a user would: checkpoints, the
    MLflow store and the registered version land in ``$ANIMATEDIFF_HOME``, survive the cluster,
    a re-submission from changed code resumes, and a submitted serve finds the model."""
    import urllib.request

    from mlflow import MlflowClient
    from train_helpers import write_latent_shards

    from jobs.cluster import anchor_results

    home = tmp_path / "home"
    base = [f"model.base.pretrained={tiny_base_dir}", "train.validation_prompts=[]"]
    train = f"python -m jobs.train --config configs/tiny.yaml {' '.join(base)} "
    # Without token auth: this process's client fixes its auth mode at its first use (in this
    # module's earlier tests, or not), and a cluster without auth accepts either.
    with started_head_node(auth_mode="disabled") as node:
        # What `jobs.preprocess data.output=outputs/latents/tiny` would have left in the home.
        cfg = anchor_results(load_config(ROOT / "configs/tiny.yaml", base), home)
        assert cfg.train.data_uri == str(home / "outputs/latents/tiny")
        write_latent_shards(cfg)
        packages: dict[str, set[str]] = {}
        run_job(node, train + "train.max_steps=2 train.checkpoint_every=2", home=home)
        packages |= _ray_packages(node)
        run_job(node, "python -m jobs.promote --config configs/tiny.yaml", home=home)
        # Another package (as after a code change: here the docs are left out) resumes the run.
        logs = run_job(node, train + "train.max_steps=4", home=home, excludes=("docs",))
        packages |= _ray_packages(node)
        assert "trained to step 4" in logs
        port = free_port()
        run_job(
            node, f"python -m jobs.serve --config configs/tiny.yaml serve.port={port}", home=home
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as answer:
            served = json.loads(answer.read())
        packages |= _ray_packages(node)

    assert served["aliases"]["champion"] == "1"
    assert sorted(v["version"] for v in served["versions"]) == ["1", "2"]
    assert len(packages) >= 2  # the re-submission ran from another copy
    for name, files in packages.items():  # nothing was written into Ray's copies
        assert "jobs" in files and not {"outputs", "mlflow.db", "mlartifacts"} & files, name
    # Where infra/README.md says, after the cluster is gone.
    run_dir = home / "outputs" / "ray_results" / cfg.train.run_name
    assert sorted(p.name for p in run_dir.glob("checkpoint_*"))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags[RESUMED_TAG] == "2"  # the re-submission continued the first one's run
    assert run.info.artifact_uri.startswith((home / "mlartifacts").as_uri())
