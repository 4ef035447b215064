"""Preprocess and train on a three-node Ray cluster on one machine, everything in S3; a node dies.

    python tests/multinode_check.py <workdir> <facts.json>

Run as its own process by ``tests/test_multinode.py`` (the test session's in-process Ray cluster
and a ``ray.cluster_utils.Cluster`` cannot share one process). It writes what it observed to
``facts.json``; the test asserts on it.

The cluster: a head (the driver's node; no ``trainer`` resource) and two nodes with
``{"trainer": 1}``, so that ``train.worker_resources={trainer: 1}`` puts the two Train workers on
different nodes. Every node has its own logical CPUs (the machine has 2 cores). A moto S3 server on
127.0.0.1 holds the videos, their manifest, the latent shards and the runs; an ``mlflow server``
holds the tracking store. The driver runs in an empty working directory, and every process of the
cluster has its own ``HOME`` and ``TMPDIR`` under ``workdir``: after the runs the test lists what
is left on local disk.

Steps: ``jobs.preprocess`` (S3 -> S3); ``jobs.train`` uninterrupted (the reference run); the same
run again under another name, held at step 3 (checkpoint at 2) until the node of rank 0 is
removed (``train.max_failures=0``: the fit fails); a new ``trainer`` node joins and the run is
started again with the same name: it resumes from the step-2 checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"
NODE_CPUS = 2
OBJECT_STORE_BYTES = 256 * 2**20
VIDEOS = 8
HOLD_STEP = 3


@dataclass(frozen=True)
class RecordNode:
    """A step hook: each rank writes the id of its Ray node to ``<directory>/rank<r>.node``."""

    directory: str

    def __call__(self, info) -> None:
        import ray

        path = Path(self.directory) / f"rank{info.rank}.node"
        if not path.exists():
            path.write_text(ray.get_runtime_context().get_node_id())


@dataclass(frozen=True)
class HoldAt:
    """A step hook: at ``step`` steps done, each rank touches ``<directory>/held-rank<r>`` and
    waits there (until its node is removed or its worker group torn down; 5 minutes at most)."""

    step: int
    directory: str

    def __call__(self, info) -> None:
        if info.step != self.step:
            return
        (Path(self.directory) / f"held-rank{info.rank}").touch()
        time.sleep(300)  # bounded: if no node is removed, the run goes on and the test fails


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


def _s3_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _checkpoints(s3, run: str) -> list[str]:
    """The checkpoint directories of ``run`` in S3 (``checkpoint_00000002``, ...)."""
    return sorted(
        {
            k.split("/")[2]
            for k in _s3_keys(s3, "runs", f"ray/{run}/checkpoint_")
            if re.fullmatch(r"checkpoint_\d{8}", k.split("/")[2])
        }
    )


def _local_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def main(workdir: Path, facts_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    facts: dict = {"timings_s": {}}
    started = time.perf_counter()

    def mark(name: str) -> None:
        facts["timings_s"][name] = round(time.perf_counter() - started, 1)

    # Every process started from here (moto, mlflow, the nodes' raylets and workers) inherits
    # these: its own HOME and TMPDIR, so that what anything leaves on local disk can be listed.
    home, tmp, cwd = workdir / "home", workdir / "tmp", workdir / "driver-cwd"
    for directory in (home, tmp, cwd):
        directory.mkdir(parents=True)
    os.environ.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        TOKENIZERS_PARALLELISM="false",
        OMP_WAIT_POLICY="PASSIVE",
        CUDA_VISIBLE_DEVICES="",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    tempfile.tempdir = None  # re-read TMPDIR

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    for bucket in ("videos", "latents", "runs", "outputs"):
        s3.create_bucket(Bucket=bucket)

    from data_media import write_video

    media = workdir / "media"
    rows = []
    for i in range(VIDEOS):
        path = write_video(media / f"clip{i}.mp4", frames=20 + i, seed=i)
        s3.upload_file(str(path), "videos", f"clips/clip{i}.mp4")
        rows.append({"video": f"clip{i}.mp4", "caption": f"a moving bar number {i}"})
    rows.append({"video": "missing.mp4", "caption": "no such object"})
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3.put_object(Bucket="videos", Key="clips/manifest.jsonl", Body=body)

    # The frozen base as a directory every node reads (on a real cluster: a volume mounted at
    # the same path on every node, infra/README.md).
    from animatediff.tiny import save_tiny_base

    base = save_tiny_base(workdir / "models" / "tiny", seed=0)

    from mlflow_helpers import tracking_server

    store = workdir / "mlflow-server"  # the tracking server's own disk
    store.mkdir()
    with tracking_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts") as tracking_uri:
        mark("servers_up")
        from ray.cluster_utils import Cluster

        node_args = {"num_cpus": NODE_CPUS, "object_store_memory": OBJECT_STORE_BYTES}
        cluster = Cluster(
            initialize_head=True,
            head_node_args={**node_args, "include_dashboard": False},
        )
        try:
            trainer_nodes = [
                cluster.add_node(**node_args, resources={"trainer": 1}) for _ in range(2)
            ]
            cluster.wait_for_nodes()
            os.chdir(cwd)
            run_all(cluster, trainer_nodes, s3, base, tracking_uri, workdir, facts, mark)
        finally:
            import ray

            ray.shutdown()
            cluster.shutdown()
            server.stop()
    facts["local_files"] = {
        "driver_cwd": _local_files(cwd),
        "home": _local_files(home),
        "tmp_entries": sorted(p.name for p in tmp.iterdir()),
        "tmp_checkpoint_files": [
            f
            for f in _local_files(tmp)
            if f.endswith(("_states.pt", "trainer_state.json")) or "/rng/rank" in f
        ],
    }
    mark("done")
    facts_path.write_text(json.dumps(facts, indent=1))


def run_all(cluster, trainer_nodes, s3, base, tracking_uri, workdir, facts, mark) -> None:
    import ray
    from safetensors.torch import load_file
    from train_helpers import TOY_SHAPES

    from animatediff.config import load_config
    from jobs import preprocess as preprocess_job
    from jobs import train as train_job
    from trainer import run_training

    ray.init(address=cluster.address, log_to_driver=False)
    shared = [
        f"model.base.pretrained={base}",
        f"mlflow.tracking_uri={tracking_uri}",
        "output_dir=s3://outputs/tiny",
        *TOY_SHAPES,
    ]
    preprocess_args = [
        "data.format=jsonl",
        "data.input=s3://videos/clips/manifest.jsonl",
        "data.video_root=s3://videos/clips",
        "data.output=s3://latents/tiny",
        "data.log_mlflow=true",
    ]
    train_args = [
        "train.data_uri=s3://latents/tiny",
        "train.storage_path=s3://runs/ray",
        "train.worker_resources={trainer: 1}",
        "train.max_steps=6",
        "train.checkpoint_every=2",
        "train.keep_last=3",
        "train.validation_prompts=[]",
        "train.system_metrics_interval_s=0",
    ]
    argv = ["--config", str(CONFIG), *shared]
    facts["preprocess_exit"] = preprocess_job.main([*argv, *preprocess_args])
    facts["latent_keys"] = _s3_keys(s3, "latents")
    mark("preprocessed")

    facts["reference_exit"] = train_job.main([*argv, *train_args, "train.run_name=reference"])
    mark("reference_trained")

    cfg = load_config(CONFIG, [*shared, *train_args, "train.run_name=node-lost"])
    first, second = workdir / "ranks-first", workdir / "ranks-second"
    first.mkdir()
    second.mkdir()
    removed: dict = {}

    def remove_rank0_node() -> None:
        # Both ranks are held at step 3: the step-2 checkpoint was reported. Give Ray Train's
        # controller (which polls reports every few seconds) time to register it, then lose the
        # node of rank 0 (its raylet and every worker on it, no graceful shutdown).
        try:
            _wait_for(
                lambda: all((first / f"held-rank{r}").exists() for r in (0, 1)), 600, "the hold"
            )
            time.sleep(6)
            node_id = (first / "rank0.node").read_text()
            node = next(n for n in trainer_nodes if n.node_id == node_id)
            removed["node_id"] = node_id
            removed["checkpoints_then"] = _checkpoints(s3, "node-lost")
            cluster.remove_node(node, allow_graceful=False)
            removed["at_s"] = round(time.time(), 1)
        except Exception:
            removed["error"] = traceback.format_exc()

    killer = threading.Thread(target=remove_rank0_node, daemon=True)
    killer.start()
    try:
        run_training(
            _with_failures(cfg, 0), hooks=[RecordNode(str(first)), HoldAt(HOLD_STEP, str(first))]
        )
        facts["node_lost_error"] = None
    except Exception as error:  # the fit must fail: max_failures=0 and a node is gone
        facts["node_lost_error"] = f"{type(error).__name__}: {str(error)[:500]}"
    killer.join(timeout=60)
    facts["removed"] = removed
    facts["ranks_first"] = {r: (first / f"rank{r}.node").read_text() for r in (0, 1)}
    mark("node_lost")

    new_node = cluster.add_node(
        num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE_BYTES, resources={"trainer": 1}
    )
    cluster.wait_for_nodes()
    facts["new_node_id"] = new_node.node_id
    facts["trainer_nodes_alive"] = sorted(
        n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("trainer")
    )
    resumed = run_training(cfg, hooks=[RecordNode(str(second))])
    facts["ranks_second"] = {r: (second / f"rank{r}.node").read_text() for r in (0, 1)}
    mark("resumed")

    facts["resumed_step"] = resumed.step
    facts["resumed_checkpoint"] = resumed.checkpoint_path
    facts["resumed_run_id"] = resumed.run_id
    reference_dir = "ray/reference/checkpoint_00000006/motion_module/motion_module.safetensors"
    local = workdir / "reference_motion.safetensors"
    s3.download_file("runs", reference_dir, str(local))
    ours = load_file(str(resumed.motion_dir / "motion_module.safetensors"))
    theirs = load_file(str(local))
    facts["same_keys"] = sorted(ours) == sorted(theirs)
    facts["max_abs_weight_diff"] = max(
        float((ours[k] - theirs[k]).abs().max()) for k in ours if k in theirs
    )
    facts["run_keys"] = _s3_keys(s3, "runs")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(resumed.run_id)
    facts["mlflow"] = {
        "status": run.info.status,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "note": run.data.tags.get("mlflow.note.content", ""),
        "loss_steps": sorted(
            m.step for m in client.get_metric_history(run.info.run_id, "train/loss")
        ),
    }
    reference = client.search_runs([run.info.experiment_id], "attributes.run_name = 'reference'")
    facts["reference_runs"] = [
        {"status": r.info.status, "run_name": r.info.run_name} for r in reference
    ]


def _with_failures(cfg, max_failures: int):
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_failures=max_failures))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
