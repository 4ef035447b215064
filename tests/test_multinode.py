"""Preprocess and train on a three-node Ray cluster (one machine), all storage on S3, a node lost.

``tests/multinode_check.py`` does the work in its own process (a ``ray.cluster_utils.Cluster``
cannot share a process with the session's Ray cluster) and writes what it saw; these assertions
read it. The two Train workers must land on different nodes (``train.worker_resources``), both
ranks' DeepSpeed files must reach S3, losing rank 0's node must fail the run, and re-running it
with the same name on a new node must resume from the last checkpoint and end with exactly the
weights of an uninterrupted run. Nothing but documented files may be left on local disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def facts() -> Iterator[dict]:
    # A short base path: Ray's socket paths under TMPDIR must stay within AF_UNIX's 107 bytes.
    top = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))
    facts_path, log_path = top / "facts.json", top / "log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    script = ROOT / "tests" / "multinode_check.py"
    with open(log_path, "w") as log:
        # Its own process group: on a timeout the cluster's processes (GCS, raylets) go too.
        process = subprocess.Popen(
            [sys.executable, str(script), str(top / "work"), str(facts_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert returncode == 0, log_path.read_text()[-8000:]
    yield json.loads(facts_path.read_text())
    shutil.rmtree(top, ignore_errors=True)


pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_preprocess_reads_and_writes_s3_from_a_cluster(facts) -> None:
    assert facts["preprocess_exit"] == 0
    keys = facts["latent_keys"]
    assert [k for k in keys if k.endswith("/manifest.json")], keys
    assert [k for k in keys if k.endswith(".parquet") and "/runs/" not in k], keys


def test_the_two_workers_run_on_different_trainer_nodes(facts) -> None:
    assert facts["reference_exit"] == 0
    first, second = facts["ranks_first"], facts["ranks_second"]
    assert first["0"] != first["1"]
    assert second["0"] != second["1"]
    # After the loss, one rank runs on the node that joined, none on the removed one.
    assert facts["new_node_id"] in second.values()
    assert facts["removed"]["node_id"] not in second.values()
    assert sorted(second.values()) == facts["trainer_nodes_alive"]


def test_losing_a_node_fails_the_run_after_its_first_checkpoint(facts) -> None:
    removed = facts["removed"]
    assert "error" not in removed, removed.get("error")
    assert removed["node_id"] == facts["ranks_first"]["0"]
    assert removed["checkpoints_then"] == ["checkpoint_00000002"]
    assert facts["node_lost_error"], "the fit went on without the lost node"


def test_the_rerun_resumes_and_matches_the_uninterrupted_run(facts) -> None:
    assert facts["resumed_step"] == 6
    assert facts["resumed_checkpoint"] == "s3://runs/ray/node-lost/checkpoint_00000006"
    assert facts["same_keys"] and facts["max_abs_weight_diff"] == 0.0
    tracked = facts["mlflow"]
    assert tracked["status"] == "FINISHED"
    assert tracked["loss_steps"] == [1, 2, 3, 4, 5, 6]  # each step logged once
    assert tracked["tags"]["resumed_from_step"] == "2"
    assert "resumed from the step-2 checkpoint" in tracked["note"]
    assert [r["status"] for r in facts["reference_runs"]] == ["FINISHED"]


def test_both_ranks_checkpoints_live_in_s3_only(facts) -> None:
    keys = facts["run_keys"]
    for run in ("reference", "node-lost"):
        last = f"ray/{run}/checkpoint_00000006"
        files = {k.removeprefix(last + "/") for k in keys if k.startswith(last + "/")}
        assert {
            "trainer_state.json",
            "rng/rank0.json",
            "rng/rank1.json",
            "deepspeed/ds/mp_rank_00_model_states.pt",
            "deepspeed/ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "deepspeed/ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        } <= files, sorted(files)
        kept = {k.split("/")[2] for k in keys if k.startswith(f"ray/{run}/checkpoint_0")}
        assert kept == {"checkpoint_00000002", "checkpoint_00000004", "checkpoint_00000006"}
    # Local disk: nothing in the driver's working directory, no checkpoint file in any node's
    # TMPDIR; what is left there is Ray's session and the copy of the final export that
    # ``run_training`` hands its caller (``TrainOutcome.export_path``, infra/README.md).
    local = facts["local_files"]
    assert local["driver_cwd"] == []
    assert local["tmp_checkpoint_files"] == []
    exports = [n for n in local["tmp_entries"] if n.startswith("animatediff-train-")]
    assert len(exports) == 1  # the resumed run's; ``jobs.train`` deletes its own with the job
    assert set(local["tmp_entries"]) - set(exports) <= {
        "ray",
        "_ray_lockfiles",
        "torchinductor_root",
    }
