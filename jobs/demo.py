"""Generate one video from a preset and say where it is (what ``make demo`` runs).

    python -m jobs.demo --config configs/tiny.yaml
    python -m jobs.demo --config configs/tiny.yaml --prompt "a corgi on the beach" sample.num_frames=24

On the tiny preset the base has random weights and the motion module is freshly initialised (its
zero-initialised output projection makes it the identity), so the GIF is coloured noise shaped by
the sampler: the point is that the whole path (text encoder, inflated UNet, scheduler, context
windows, VAE, export) runs end to end in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from animatediff.config import load_config


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML preset")
    parser.add_argument("--prompt", default="a corgi running on the beach, sunset")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--format", default="gif", choices=["gif", "mp4", "webp"])
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sample.num_frames=24")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if "://" in cfg.output_dir:
        raise SystemExit(f"output_dir: the demo writes local files, got {cfg.output_dir!r}")

    from animatediff.export import save_video
    from animatediff.sampling import TextToVideo

    start = time.perf_counter()
    t2v = TextToVideo(cfg)
    frames = t2v(args.prompt, negative_prompt=args.negative_prompt)
    path = save_video(frames, Path(cfg.output_dir) / "demo" / f"demo.{args.format}", cfg.sample.fps)
    sample = cfg.sample
    print(
        f"wrote {path.resolve()} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, "
        f"{sample.scheduler} {sample.num_inference_steps} steps, guidance {sample.guidance_scale}, "
        f"seed {sample.seed}, base {cfg.model.base.pretrained}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return path


if __name__ == "__main__":
    main()
