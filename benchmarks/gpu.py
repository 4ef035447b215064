"""GPU benchmarks at SD 1.5 size: VAE-encode throughput and motion-module training speed, memory
and model FLOPs utilisation. Random weights in the real architectures (no download: FLOPs and
memory do not depend on the values); the project's own encode and training-step code.

    python -m benchmarks.gpu                                   # on a CUDA GPU: both sections
    python -m benchmarks.gpu --sections train --batch-size 4 --steps 10
    python -m benchmarks.gpu --preset tiny --device cpu --steps 1   # smoke run (the tests do it)

- encode: clips/s of ``pipelines.encode.encode_latents`` (what the encode actors run) on an
  SD 1.5 ``AutoencoderKL``, clips of 16x256x256, bf16 on GPU; peak memory.
- train: one optimizer step of the training job (``animatediff.training.batch_loss`` through a
  DeepSpeed ZeRO-2 engine built from ``deepspeed_config``, AdamW over the motion parameters only,
  cached text embeddings as in the sd15_webvid preset) on the SD 1.5 UNet inflated with that
  preset's motion module, bf16, 16 frames of 32x32 latents, with and without gradient
  checkpointing: samples/s, peak memory, and MFU = model FLOPs per step (counted once by torch's
  ``FlopCounterMode`` on a forward+backward without recomputation) / step time / the chip's peak
  bf16 FLOP/s (``--peak-tflops``; 989 for H100/H200 SXM, dense). The backward through the
  frozen 2D layers computes input gradients only, so a step is well under 3x a forward. On CPU
  torch's counter skips the fused attention kernel (the CUDA ones are counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animatediff.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, SXM


def sd15_vae() -> torch.nn.Module:
    """SD 1.5's ``AutoencoderKL``, random weights (fp32, CPU)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def sd15_text_encoder() -> torch.nn.Module:
    """SD 1.5's CLIP ViT-L/14 text encoder, random weights (fp32, CPU), with the byte-level
    tokenizer's special ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=512,  # the byte-level tokenizer's ids
            eos_token_id=513,
            pad_token_id=513,
        )
    )


def sd15_components() -> dict[str, torch.nn.Module]:
    """SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder, random weights (fp32, CPU)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(  # diffusers' defaults are SD 1.5's blocks and widths
        sample_size=64, cross_attention_dim=768, attention_head_dim=8
    )
    return {"unet": unet, "vae": sd15_vae(), "text_encoder": sd15_text_encoder()}


def build(args: argparse.Namespace) -> tuple[Config, dict[str, torch.nn.Module]]:
    from animatediff.tiny import build_tiny_components

    preset = "tiny.yaml" if args.preset == "tiny" else "sd15_webvid.yaml"
    cfg = load_config(
        ROOT / "configs" / preset,
        [
            f"data.num_frames={args.frames}",
            f"data.resolution={args.resolution}",
            f"train.batch_size={args.batch_size}",
            "train.num_workers=1",
            "train.zero_stage=2",
            f"train.use_gpu={str(args.device.startswith('cuda')).lower()}",
            f"train.mixed_precision={args.precision}",
        ],
    )
    torch.manual_seed(0)
    components = build_tiny_components() if args.preset == "tiny" else sd15_components()
    for module in components.values():
        module.requires_grad_(False).eval()
    return cfg, components


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """Peak allocated GPU memory since ``reset_peak``; on CPU the process's peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Any, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def bench_encode(args: argparse.Namespace, cfg: Config, components: dict) -> None:
    from pipelines.encode import encode_latents, resolve_dtype

    dtype = resolve_dtype(args.encode_dtype, args.device.startswith("cuda"))
    vae = components["vae"].to(args.device, dtype)
    rng = np.random.default_rng(0)
    shape = (args.encode_batch_size, args.frames, args.resolution, args.resolution, 3)
    clips = rng.integers(0, 256, shape, dtype=np.uint8)
    for _ in range(args.warmup):
        encode_latents(vae, clips, args.device, dtype)
    reset_peak(args.device)
    times = [
        timed(lambda: encode_latents(vae, clips, args.device, dtype), args.device)
        for _ in range(args.steps)
    ]
    mean, _ = encode_latents(vae, clips, args.device, dtype)
    assert np.isfinite(mean).all() and mean.shape[1:3] == (4, args.frames)
    print(
        f"[encode] {args.preset} VAE, {args.encode_batch_size} clips of {args.frames}x"
        f"{args.resolution}x{args.resolution} per batch, {dtype}, {args.device}: "
        f"{args.encode_batch_size / statistics.median(times):.2f} clips/s "
        f"({args.encode_batch_size * args.frames / statistics.median(times):.1f} frames/s), "
        f"median batch {statistics.median(times) * 1000:.1f} ms, peak {peak_gib(args.device):.2f} GiB"
    )
    components["vae"] = vae.cpu()


def _init_single_process_group(device: str) -> bool:
    """A one-rank process group for DeepSpeed; True when this call created it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def training_model(cfg: Config, components: dict, tokenizer: Any, device: str):
    """The training job's ``TrainingModel`` around in-memory components."""
    from animatediff.diffusion import alphas_cumprod, make_betas
    from animatediff.training import TextConditioner, TrainingModel
    from animatediff.unet import VideoUNet

    torch.manual_seed(cfg.train.seed)
    unet = VideoUNet.from_unet2d(components["unet"], cfg.model.motion).to(device)
    return TrainingModel(
        unet=unet,
        conditioner=TextConditioner(tokenizer, components["text_encoder"]),
        alphas_cumprod=alphas_cumprod(make_betas(cfg.model.diffusion)),
        scaling_factor=float(components["vae"].config.scaling_factor),
        base_source=f"random:{cfg.model.base.pretrained}",
        text_encoder_on_device=False,  # the batches carry text embeddings, as cached shards do
    )


def _time_steps(
    args: argparse.Namespace, cfg: Config, model: Any, batch: Any, count_flops: bool
) -> tuple[float, int, int]:
    """``(median step seconds, model FLOPs of one step or 0, trainable parameters)`` of
    optimizer steps through a fresh DeepSpeed engine; the peak-memory counter starts after the
    warm-up."""
    from torch.utils.flop_counter import FlopCounterMode

    from animatediff.training import batch_loss, step_generator
    from trainer.engine import setup_engine

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    params = model.unet.trainable_parameters()
    engine = setup_engine(model, cfg.train, 1, args.device)
    steps = iter(range(10**9))

    def step() -> None:
        generator = step_generator(0, next(steps), 0, 0)
        engine.backward(batch_loss(model, engine, batch, cfg, generator, dtype=dtype))
        engine.step()

    flops = 0
    if count_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            step()  # the optimizer update is elementwise: negligible beside the model
        flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    reset_peak(args.device)
    times = [timed(step, args.device) for _ in range(args.steps)]
    return statistics.median(times), flops, sum(p.numel() for p in params)


def bench_train(args: argparse.Namespace, cfg: Config, components: dict) -> None:
    from transformers import CLIPTokenizer

    from animatediff.tiny import write_byte_level_clip_tokenizer
    from animatediff.training import Batch

    created = _init_single_process_group(args.device)
    with tempfile.TemporaryDirectory() as directory:
        write_byte_level_clip_tokenizer(Path(directory))
        tokenizer = CLIPTokenizer.from_pretrained(directory)
    latent = args.resolution // 8
    shape = (args.batch_size, 4, args.frames, latent, latent)
    generator = torch.Generator().manual_seed(0)
    width = components["text_encoder"].config.hidden_size
    batch = Batch(
        captions=[f"clip {i}" for i in range(args.batch_size)],
        latent_mean=torch.randn(shape, generator=generator).half(),
        latent_std=(0.05 + 0.1 * torch.rand(shape, generator=generator)).half(),
        text_embedding=torch.randn(args.batch_size, 77, width, generator=generator).half(),
    )
    peak_tflops = args.peak_tflops
    if peak_tflops is None and args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model_flops = 0
    print(
        f"[train] {args.preset} UNet + motion module, batch {args.batch_size} x {args.frames} "
        f"frames x {latent}x{latent} latents, {cfg.train.precision}, ZeRO-{cfg.train.zero_stage}, "
        f"{args.device}"
    )
    for checkpointing in (False, True):
        motion = dataclasses.replace(cfg.model.motion, gradient_checkpointing=checkpointing)
        run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, motion=motion))
        model = training_model(run_cfg, components, tokenizer, args.device)
        seconds, flops, params = _time_steps(args, run_cfg, model, batch, not model_flops)
        model_flops = model_flops or flops
        achieved = model_flops / seconds / 1e12
        mfu = f"MFU {100 * achieved / peak_tflops:.1f}%" if peak_tflops else "MFU n/a"
        print(
            f"  checkpointing {'on ' if checkpointing else 'off'}: "
            f"{args.batch_size / seconds:.2f} samples/s (median step {seconds * 1000:.0f} ms), "
            f"peak {peak_gib(args.device):.1f} GiB, {model_flops / 1e9:.4g} model GFLOP/step "
            f"= {achieved:.2f} TFLOP/s, {mfu}; trainable {params / 1e6:.0f} M params"
        )
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if created:
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default="encode,train")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256, help="pixels (latents: /8)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per training step")
    parser.add_argument("--encode-batch-size", type=int, default=8, help="clips per VAE batch")
    parser.add_argument("--encode-dtype", default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--precision", default="auto", help="training: auto (bf16 on GPU), bf16, fp32"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's bf16 peak")
    args = parser.parse_args(argv)
    cfg, components = build(args)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}")
    sections = {"encode": bench_encode, "train": bench_train}
    for section in args.sections.split(","):
        sections[section](args, cfg, components)


if __name__ == "__main__":
    main()
