"""Text-to-video latency: our ``TextToVideo`` against diffusers' ``AnimateDiffPipeline`` on the same
weights, DDIM with classifier-free guidance, timed side by side in one process.

Both pipelines get the same random base (UNet, VAE, CLIP text encoder at the preset's size, a
byte-level tokenizer), the same motion weights (diffusers' cross-frame GroupNorm, so both compute
the same function: the script prints how far their videos are apart) and the same initial noise.
Each timed call is a whole generation: prompt encoding, ``--steps`` guided denoising steps and the
VAE decode. Calls alternate between the pipelines so machine load hits both alike; the median
counts. ``--compile`` adds ours with ``model.motion.compile_motion_modules``; its first call
(which compiles, or loads inductor's cache) is reported apart.

    .venv/bin/python -m benchmarks.sampling                                  # tiny, 25 steps
    .venv/bin/python -m benchmarks.sampling --preset sd15 --steps 1 --repeats 1 --threads 2 \
        --decode-chunk 2                                                   # 24 GiB of RAM
    .venv/bin/python -m benchmarks.sampling --preset sd15 --device cuda --dtype fp16 --steps 25
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu import sd15_text_encoder, sd15_vae, synchronize
from benchmarks.unet_step import DTYPES, build_models

PROMPT = "a red ball bouncing on a beach"

# DDIM as the project samples: SD 1.5's scheduler settings, the training run's linear betas.
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_vae_and_text_encoder(preset: str, cross_dim: int):
    """Random ``AutoencoderKL`` and ``CLIPTextModel``: the tiny base's, or SD 1.5's shapes."""
    from animatediff.tiny import build_tiny_components

    if preset == "sd15":
        torch.manual_seed(1)
        return sd15_vae().eval(), sd15_text_encoder().eval()
    tiny = build_tiny_components()
    if tiny["text_encoder"].config.hidden_size != cross_dim:
        raise ValueError(f"--preset {preset}: no text encoder of width {cross_dim}")
    return tiny["vae"], tiny["text_encoder"]


def build_pipelines(args: argparse.Namespace):
    """``(ours, theirs)``: a ``TextToVideo`` and an ``AnimateDiffPipeline`` sharing every weight
    but the UNet's (diffusers' ``UNetMotionModel`` holds a copy of the same values)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from transformers import CLIPTokenizer

    from animatediff.base_model import BaseComponents
    from animatediff.config import load_config
    from animatediff.sampling import TextToVideo
    from animatediff.tiny import write_byte_level_clip_tokenizer

    unet_args = argparse.Namespace(
        preset=args.preset, size=args.sizes[0] // 8, device=args.device, dtype=args.dtype
    )
    ours_unet, theirs_unet, cross_dim = build_models(unet_args)
    vae, text_encoder = build_vae_and_text_encoder(args.preset, cross_dim)
    with tempfile.TemporaryDirectory() as directory:
        write_byte_level_clip_tokenizer(Path(directory))
        tokenizer = CLIPTokenizer.from_pretrained(directory)
    dtype = DTYPES[args.dtype]
    vae, text_encoder = vae.to(args.device, dtype), text_encoder.to(args.device, dtype)
    scheduler = DDIMScheduler(**SCHEDULER)
    base = BaseComponents(
        ours_unet.unet2d, vae, text_encoder, tokenizer, dict(scheduler.config), args.preset
    )
    # The motion config build_models used; one window over the frames (no sliding windows).
    cfg = load_config(
        None,
        [
            f"sample.context_frames={max(args.frames)}",
            "sample.context_overlap=0",
            f"sample.decode_chunk_frames={args.decode_chunk}",
        ],
    )
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, motion=ours_unet.motion_cfg)
    )
    ours = TextToVideo(cfg, base=base, unet=ours_unet, device=args.device, dtype=dtype)
    theirs = AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=theirs_unet,
        motion_adapter=None,
        scheduler=scheduler,
    )
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def generate_ours(ours, frames: int, side: int, steps: int, guidance: float) -> np.ndarray:
    """``(frames, side, side, 3)`` float in [0, 1]."""
    video = ours(
        PROMPT,
        negative_prompt="",
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=0,
        height=side,
        width=side,
    )
    return video.astype(np.float32) / 255


def generate_theirs(
    theirs, latents, decode_chunk: int, frames: int, side: int, steps: int, guidance: float
) -> np.ndarray:
    """``(frames, side, side, 3)`` float in [0, 1], from ``latents`` (ours for seed 0)."""
    return theirs(
        PROMPT,
        decode_chunk_size=decode_chunk,
        num_frames=frames,
        height=side,
        width=side,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents.clone(),
        output_type="np",
    ).frames[0]


def wall_seconds(call, device: str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = call()
    synchronize(device)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--frames", type=int, nargs="+", default=[16], help="frames per video")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="pixel sides")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--decode-chunk", type=int, default=16, help="frames the VAE decodes at once (both)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per pipeline and shape")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with compiled motion modules"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, theirs = build_pipelines(args)
    compiled = None
    if args.compile:  # ours again, with its own compiled copy of the motion modules
        compiled = copy.copy(ours)
        compiled.unet = copy.deepcopy(ours.unet)
        compiled.unet.compile_motion_modules()
    print(
        f"preset={args.preset} DDIM steps={args.steps} guidance={args.guidance} "
        f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()}"
    )
    print(
        f"{'shape':>10} {'ours s':>9} {'diffusers s':>12} {'ours/diffusers':>15} {'max |diff|':>11}"
    )
    for frames in args.frames:
        for side in args.sizes:
            shape = (frames, side, args.steps, args.guidance)
            latents = ours.initial_latents([0], frames, side, side)
            calls = {
                "ours": functools.partial(generate_ours, ours, *shape),
                "diffusers": functools.partial(
                    generate_theirs, theirs, latents, args.decode_chunk, *shape
                ),
            }
            first = {}
            if compiled is not None:
                calls["compiled"] = functools.partial(generate_ours, compiled, *shape)
                first["compiled"], _ = wall_seconds(calls["compiled"], args.device)
            seconds: dict[str, list[float]] = {name: [] for name in calls}
            videos = {}
            for _ in range(args.repeats):
                for name, call in calls.items():
                    elapsed, videos[name] = wall_seconds(call, args.device)
                    seconds[name].append(elapsed)
            median = {name: statistics.median(times) for name, times in seconds.items()}
            diff = float(np.abs(videos["ours"] - videos["diffusers"]).max())
            print(
                f"{frames:>4}x{side:<5} {median['ours']:>9.2f} {median['diffusers']:>12.2f} "
                f"{median['ours'] / median['diffusers']:>15.3f} {diff:>11.2e}",
                flush=True,
            )
            if "compiled" in median:
                print(
                    f"{'':>10} compiled motion modules: first call {first['compiled']:.1f} s "
                    f"(compiles, or loads inductor's cache), then {median['compiled']:.2f} s; "
                    f"compiled/eager {median['compiled'] / median['ours']:.3f}, "
                    f"compiled/diffusers {median['compiled'] / median['diffusers']:.3f}"
                )


if __name__ == "__main__":
    main()
