"""Smoke runs of the benchmark scripts at toy sizes, as a user runs them (``python -m
benchmarks.<name>``): a refactor of what they call cannot silently break them.
(``benchmarks/gpu.py``: test_benchmark_gpu.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def test_unet_step_compares_ours_with_diffusers_in_every_checkpointing_mode():
    out = _run(
        "unet_step",
        *("--preset", "tiny", "--frames", "2", "--size", "8", "--repeats", "1"),
        *("--budget", "--attention-frames", "4", "8", "--motion-share"),
    )
    rows = {
        match[1]: float(match[2])
        for match in re.finditer(r"^(off|all|2d-only|matmuls)\s.*\s(\S+)$", out, re.M)
    }
    assert rows.keys() == {"off", "all", "2d-only", "matmuls"}, out
    assert max(rows.values()) < 1e-4, rows  # max |diff|: the two UNets compute the same function
    budget = re.findall(r"checkpointing '(\S+)'\s+([\d.]+) GiB =\s+([\d.]+) GiB", out)
    assert [mode for mode, _, _ in budget] == ["off", "all", "2d-only", "matmuls"], out
    assert all(float(total) >= float(peak) for _, peak, total in budget), budget
    attention = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [int(frames) for frames, *_ in attention] == [4, 8], out
    assert all(float(peak) > 0 for _, *peaks in attention for peak in peaks), attention
    share = re.search(r"motion modules (-?[\d.]+)% of our step; 2D alone/diffusers ([\d.]+)", out)
    assert share and float(share[1]) < 100 and float(share[2]) > 0, out


def test_head_width_times_the_bases_two_head_widths_in_both_stages():
    out = _run(
        "head_width",
        *("--repeats", "1", "reproduce.unet_channels=[16,32]"),
        *("train.batch_size=2", "reproduce.base_train=[train.batch_size=2]"),
    )
    heads = re.search(r"8 heads (\[.*?\]), 16-channel (\[.*?\])", out)
    assert heads, out
    # Every layer 16 channels wide: the down and up blocks' (width 16), then the mid block's (32).
    assert set(json.loads(heads[1])) == {8} and json.loads(heads[2]) == [1] * 6 + [2, 2], out
    rows = re.findall(r"^\| (image|motion) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", out, re.M)
    assert [stage for stage, *_ in rows] == ["image", "motion"], out
    assert all(float(figure) > 0 for _, *figures in rows for figure in figures), rows


def test_sampling_times_ours_against_animatediff_pipeline_on_the_same_video():
    out = _run(
        "sampling",
        *("--frames", "4", "--sizes", "32", "64", "--steps", "2", "--repeats", "1"),
    )
    rows = re.findall(r"^\s+4x(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)$", out, re.M)
    assert [int(side) for side, *_ in rows] == [32, 64], out
    for _, ours, theirs, ratio, diff in rows:
        assert float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0
        # The same video: ours is rounded to uint8, so about half a level apart, never a level.
        assert float(diff) <= 1 / 255, out


# 57 s: four fresh processes, each importing torch and diffusers; CI's 25 minutes are nearly
# spent (`-m slow`). Sliding windows and their batching are tested in tests/test_sampling.py.
@pytest.mark.slow
def test_long_video_compares_lengths_and_window_batching():
    out = _run(
        "long_video",
        *("--config", str(ROOT / "configs/tiny.yaml"), "--short", "4", "--long", "8"),
        *("--steps", "1", "--height", "32", "--width", "32", "--context", "4", "--overlap", "1"),
        *("--decode-chunk", "4", "--repeats", "1"),
    )
    assert re.search(r"^time   8/4 frames: [\d.]+ s / [\d.]+ s = [\d.]+", out, re.M), out
    assert re.search(r"^memory 8/4 frames .* = [\d.]+", out, re.M), out
    assert re.search(r"^window batching: sequential / batched \(3 windows per call\)", out, re.M), (
        out
    )


def test_evaluate_prints_each_part_per_clip_and_against_generation():
    out = _run(
        "evaluate",
        *("--config", str(ROOT / "configs/tiny.yaml"), "--videos", "1", "--frames", "4"),
        *("--height", "32", "--width", "32", "--steps", "1", "--timesteps", "1", "--repeats", "1"),
    )
    rows = re.findall(r"^(\S.*?) +([\d.]+) +([\d.]+) +([\d.]+)$", out, re.M)
    parts = [name.strip() for name, *_ in rows]
    assert parts[0] == "generate a video" and len(parts) == 8, out
    assert float(rows[0][3]) == 1.0 and float(rows[0][1]) > 0, out  # generation, in ms
    assert re.search(r"^scoring a video .* = [\d.]+ x its generation", out, re.M), out


@pytest.mark.slow  # 70 s: its own Ray and Serve; CI's 25 minutes are nearly spent (`-m slow`)
@pytest.mark.integration
def test_serve_prints_latency_burst_and_throughput():
    out = _run(
        "serve",
        *("--requests", "2", "--frames", "2", "--steps", "1", "--size", "32"),
        *("--throughput-requests", "4"),
    )
    assert re.search(r"^HTTP /v1/generate +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out
    bursts = re.findall(r"^burst \d: (\d+) x 200, (\d+) x 503, other none;", out, re.M)
    assert len(bursts) == 4, out  # every request answered 200 or 503
    assert re.search(r"^batched / unbatched throughput: [\d.]+x$", out, re.M), out


@pytest.mark.slow  # minutes: a Ray Train run paired with a plain loop, then six short ZeRO runs
@pytest.mark.integration
def test_train_prints_overhead_data_stall_and_memory_per_zero_stage():
    out = _run(
        "train",
        *("--frames", "4", "--resolution", "32", "--batch-size", "1", "--threads", "1"),
        *("--clips", "16", "--cycles", "8", "--warmup", "1", "--log-every", "3"),
        *("--engine-blocks", "2", "--memory-steps", "1", "--memory-layers", "1"),
        *("--memory-ff-mult", "4", "--memory-buckets", "20000000"),
    )
    assert re.search(r"^  Ray Train overhead \(median\): [+-][\d.]+%", out, re.M), out
    assert re.search(
        r"^\[data stall\] data-wait fraction per clean window: mean [\d.]+%", out, re.M
    )
    peaks = re.findall(r"^    ZeRO-(\d).*: peak ([\d.]+) GiB", out, re.M)
    assert [stage for stage, _ in peaks] == ["0", "2", "3"] * 2, out  # two allocators
    assert all(float(peak) > 0 for _, peak in peaks), out


@pytest.mark.slow  # minutes: each section starts its own Ray
@pytest.mark.integration
def test_preprocess_prints_every_section(tmp_path):
    from data_media import PAGE_DIR, good_rows, write_video, write_webvid_csv

    rows = good_rows(3)
    for videoid, _, _ in rows:
        write_video(tmp_path / "videos" / PAGE_DIR / f"{videoid}.mp4", frames=24, seed=int(videoid))
    write_webvid_csv(tmp_path / "webvid.csv", rows)
    sections = "decode,scaling,memory,memory_curated,curation,curation_e2e,folder,order"
    out = _run(
        "preprocess",
        str(tmp_path),
        *("--clips", "4", "--memory-clips", "2", "--repeats", "1", "--num-frames", "4"),
        *("--stride", "2", "--resolution", "32", "--sections", sections),
    )
    assert re.search(r"pipeline overhead vs raw resized *: whole run +-?[\d.]+ %", out), out
    encoded = re.findall(r"^  \d core\(s\): (\d+) clips, wall", out, re.M)
    assert len(encoded) == 2 and all(int(n) > 0 for n in encoded), out
    assert re.search(r"speed-up 2 vs 1 core: whole run [\d.]+x", out), out
    assert len(re.findall(r"^  10N / N: driver [\d.]+x, process tree [\d.]+x", out, re.M)) == 2
    assert re.search(r"all curation \(no thumbnail\) [\d.]+ % of decode", out), out
    for key in ("off", "on "):  # every replicated row is read; none fails
        assert re.search(rf"curation {key}: [\d.]+ rows/s, \d+ clips encoded, 0 rows failed", out)
        assert re.search(rf"curation {key}: 4 rows read, \d+ clips encoded, 0 rows failed", out)
    for order in ("input order     ", "completion order"):
        assert re.search(rf"^  {order}: median [\d.]+ s \([\d.]+ clips/s; runs [\d.]+\)", out, re.M)
    assert re.search(r"input order / completion order, median wall: [\d.]+x", out), out


def test_motion_levers_profile_the_module_and_time_each_lever_against_it():
    out = _run(
        "motion_levers",
        *("--preset", "tiny", "--frames", "4", "--size", "8", "--batch", "2", "--repeats", "1"),
    )
    shares = re.findall(r"^  ([a-zA-Z ]+?)\s+([\d.]+) %$", out, re.M)
    kinds = ["layout copies", "matmuls", "attention", "GEGLU elementwise", "norms", "other"]
    assert [kind for kind, _ in shares] == kinds, out
    assert abs(sum(float(share) for _, share in shares) - 100) < 0.5, shares
    rows = re.findall(r"^  (.+?)\s+([\d.]+) s\s+([\d.]+)x as is.* (\S+)$", out, re.M)
    assert [name for name, *_ in rows] == ["as is", "fused GEGLU", "residual on the view", "both"]
    # max |diff| of outputs and gradients: every lever computes the same function.
    assert all(float(diff) < 1e-5 for *_, diff in rows), rows


def test_each_motion_lever_replaces_the_modules_code_only_while_it_is_on():
    """The levers really run (their autograd graphs differ from the module's) and are undone."""
    import collections

    import torch

    from animatediff.config import MotionModuleConfig
    from animatediff.motion_module import MotionModule
    from benchmarks.motion_levers import levers

    def graph(out: torch.Tensor) -> collections.Counter:
        kinds, stack, seen = collections.Counter(), [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is not None and node not in seen:
                seen.add(node)
                kinds[type(node).__name__] += 1
                stack += [parent for parent, _ in node.next_functions]
        return kinds

    torch.manual_seed(0)
    module = MotionModule(32, MotionModuleConfig(zero_init_out=False))
    hidden = torch.randn(2 * 4, 32, 4, 4, requires_grad=True)  # batch 2: the output copies
    plain = graph(module(hidden, 4))
    with levers(("fused GEGLU",)):
        fused = graph(module(hidden, 4))
    assert fused["_FusedGEGLUBackward"] == 1 and fused["GeluBackward0"] == 0, fused
    with levers(("residual on the view",)):
        on_view = graph(module(hidden, 4))
    assert on_view["CloneBackward0"] + on_view["UnsafeViewBackward0"] < (
        plain["CloneBackward0"] + plain["UnsafeViewBackward0"]
    ), (plain, on_view)
    assert graph(module(hidden, 4)) == plain
