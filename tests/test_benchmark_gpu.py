"""``benchmarks/gpu.py`` runs the project's encode and training-step code: a tiny CPU run keeps
it working between the sessions that have a GPU; ``-m gpu`` runs it at SD 1.5 size on CUDA."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks import gpu


def test_tiny_cpu_run_prints_every_figure(capsys) -> None:
    gpu.main(
        ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0"]
        + ["--frames", "4", "--resolution", "32", "--batch-size", "1", "--encode-batch-size", "2"]
        + ["--precision", "bf16", "--encode-dtype", "bfloat16"]  # the GPU recipe's dtypes
    )
    out = capsys.readouterr().out
    assert re.search(r"\[encode\] tiny VAE, 2 clips of 4x32x32 .*bfloat16.* [\d.]+ clips/s", out)
    assert "bf16, ZeRO-2" in out
    lines = [line for line in out.splitlines() if "samples/s" in line]
    assert len(lines) == 2  # checkpointing off and on
    flops = [float(re.search(r"([\d.e+-]+) model GFLOP/step", line).group(1)) for line in lines]
    assert flops[0] == flops[1] > 0  # model FLOPs: counted once, without recomputation
    assert not torch.distributed.is_initialized()  # the benchmark's process group is gone


@pytest.mark.gpu  # conftest: fails under `-m gpu` without a CUDA device, else skipped there
def test_sd15_size_on_cuda(capsys) -> None:
    gpu.main(["--steps", "2", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "bfloat16" in out and out.count("samples/s") == 2 and "MFU" in out
