"""The suite's own rules (``conftest.py``), each checked by running pytest in a subprocess as a
user does: selected `gpu` tests fail without a GPU, and no test leaks environment variables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from marker_selection import selects_marker

ROOT = Path(__file__).resolve().parents[1]


def _pytest(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("markexpr", "selected"),
    [
        ("gpu", True),
        ("gpu and slow", True),
        ("slow or gpu", True),
        ("(gpu)", True),
        ("", False),
        ("not gpu", False),
        ("not slow", False),
        ("not slow and not gpu", False),
        ("not slow and not gpu and not integration", False),
        ("slow", False),
    ],
)
def test_a_run_selects_the_gpu_tests_only_when_its_marker_expression_asks_for_them(
    markexpr, selected
):
    assert selects_marker(markexpr, "gpu") is selected


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A directory with the suite's conftest and pytest settings, for throwaway test files."""
    for name in ("conftest.py", "marker_selection.py"):
        shutil.copy(ROOT / "tests" / name, tmp_path / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_selected_gpu_tests_fail_without_a_gpu():
    """`pytest -m gpu` once reported the GPU test skipped ("needs a CUDA GPU") on any machine,
    GPUs included, because the suite hid them first; on a machine without one it must fail."""
    done = _pytest(["-m", "gpu", "tests/test_benchmark_gpu.py"], ROOT, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "-m selected the gpu tests but torch sees no CUDA device" in done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout


def test_gpu_tests_are_skipped_in_a_run_that_does_not_select_them(sandbox):
    (sandbox / "test_on_cuda.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_on_cuda():\n    pass\n"
    )
    done = _pytest(["test_on_cuda.py"], sandbox, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 skipped" in done.stdout and "-m gpu" in done.stdout


def test_no_test_sees_the_environment_another_left(sandbox):
    """benchmarks/gpu.py run in-process sets MASTER_ADDR, RANK and WORLD_SIZE for its one-rank
    process group; later tests must not inherit them (nor anything else a test sets)."""
    (sandbox / "test_leaks.py").write_text(
        "import os\n\n"
        "def test_sets_variables():\n"
        "    os.environ.update(MASTER_ADDR='127.0.0.1', RANK='0', WORLD_SIZE='1')\n"
        "    os.environ.pop('KEPT_BY_THE_SESSION')\n\n"
        "def test_runs_after_it():\n"
        "    assert 'MASTER_ADDR' not in os.environ and 'WORLD_SIZE' not in os.environ\n"
        "    assert os.environ['KEPT_BY_THE_SESSION'] == 'yes'\n"
    )
    done = _pytest(["test_leaks.py"], sandbox, KEPT_BY_THE_SESSION="yes")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 passed" in done.stdout
