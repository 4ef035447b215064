"""The Moving Digits base (a tiny Stable Diffusion: VAE, frozen CLIP text encoder, UNet) and
the digit classifier that scores generated frames.

The VAE and the classifier are trained here with plain PyTorch loops (the project's jobs train
only UNets); the UNet starts random and the image stage (``train.stage=image``) trains it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from animatediff.config import ConfigError, ReproduceConfig
from animatediff.features import FrameClassifier

Report = Callable[[str], None]


def _batches(count: int, batch_size: int, steps: int, seed: int):
    """``steps`` index batches drawn without replacement within each pass over ``count``."""
    rng = np.random.default_rng(seed)
    order, position = rng.permutation(count), 0
    for _ in range(steps):
        if position + batch_size > count:
            order, position = rng.permutation(count), 0
        yield order[position : position + batch_size]
        position += batch_size


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``(n, h, w, 3)`` uint8 -> ``(n, 3, h, w)`` float32 in [-1, 1] (the VAE's input)."""
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


def build_vae(cfg: ReproduceConfig):
    from diffusers import AutoencoderKL

    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=cfg.canvas,
    )


def train_vae(frames: np.ndarray, cfg: ReproduceConfig, report: Report):
    """An ``AutoencoderKL`` fitted to ``frames`` ``(n, h, w, 3)`` uint8: L1 + MSE
    reconstruction and a small KL term; the latent scaling factor is set to 1 / the latents'
    std, as SD's 0.18215 was chosen."""
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)  # subnormals slowed this loop 14x on CPU (measured)
    vae = build_vae(cfg).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    pixels = to_pixels(frames)
    start = time.perf_counter()
    for step, index in enumerate(
        _batches(len(pixels), cfg.vae_batch_size, cfg.vae_steps, cfg.seed)
    ):
        x = pixels[torch.as_tensor(index)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, cfg.vae_steps // 5) == 0:
            report(f"  VAE step {step + 1}/{cfg.vae_steps}: loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = pixels[: min(len(pixels), 256)]
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    report(f"  VAE trained in {time.perf_counter() - start:.0f} s; scaling factor {1 / std:.4f}")
    return vae


def build_text_encoder(cfg: ReproduceConfig, vocab_size: int):
    """A frozen CLIP text encoder with random weights (seeded): distinct captions give distinct
    embeddings, which is all a base trained from scratch on top of it needs."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_width,
            intermediate_size=cfg.text_width * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    ).eval()


def latent_size(cfg: ReproduceConfig) -> int:
    """Side of a frame's latent: the canvas over the VAE's downsampling."""
    return cfg.canvas // 2 ** (len(cfg.vae_channels) - 1)


def build_unet(cfg: ReproduceConfig):
    """A random UNet2DConditionModel of the layout ``VideoUNet`` inflates."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(cfg.seed)
    levels = len(cfg.unet_channels)
    if cfg.unet_head_channels is None:
        heads: int | tuple[int, ...] = 8
    else:  # one count per down block; diffusers' mid block takes the last
        heads = tuple(width // cfg.unet_head_channels for width in cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size(cfg),
        in_channels=4,
        out_channels=4,
        layers_per_block=cfg.unet_layers,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=8,
    )


def check_clip_bpe(cfg: ReproduceConfig) -> None:
    """``reproduce.clip_bpe``, when set, names an existing file (``ConfigError`` otherwise)."""
    if cfg.clip_bpe and not Path(cfg.clip_bpe).is_file():
        raise ConfigError(
            f"reproduce.clip_bpe: {cfg.clip_bpe} does not exist (`make reproduce` fetches it; "
            "reproduce.clip_bpe= uses a byte-level tokenizer instead)"
        )


def write_base(directory: Path, cfg: ReproduceConfig, vae) -> Path:
    """The untrained base as a diffusers StableDiffusion directory (``model.base.pretrained``
    loads it): the trained VAE, the frozen text encoder and tokenizer (the real CLIP BPE when
    ``reproduce.clip_bpe`` names its merges file), a random UNet and AnimateDiff's linear
    DDIM schedule."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    from animatediff.tiny import write_byte_level_clip_tokenizer, write_clip_bpe_tokenizer

    if cfg.clip_bpe:  # checked by ``check_clip_bpe`` before the chain starts
        write_clip_bpe_tokenizer(directory / "tokenizer", cfg.clip_bpe)
    else:
        write_byte_level_clip_tokenizer(directory / "tokenizer")
    vocab = len(CLIPTokenizer.from_pretrained(directory / "tokenizer"))
    text_encoder = build_text_encoder(cfg, vocab)
    text_encoder.config.save_pretrained(directory / "text_encoder")
    save_file(
        {k: v.contiguous() for k, v in text_encoder.state_dict().items()},
        str(directory / "text_encoder" / "model.safetensors"),
        metadata={"format": "pt"},
    )
    vae.save_pretrained(directory / "vae")
    build_unet(cfg).save_pretrained(directory / "unet")
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(directory / "scheduler")
    components = {
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1"}
    index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
    index |= {"requires_safety_checker": False, **components}
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory


def train_classifier(
    frames: np.ndarray, labels: np.ndarray, cfg: ReproduceConfig, report: Report
) -> FrameClassifier:
    """A ``FrameClassifier`` of digits on single frames ``(n, h, w, 3)`` uint8. It reads the
    digit's coverage (``metrics.foreground_coverage``), so any two-colour style reads the same;
    random contrast and an occasional blur keep it fair to the VAE's softer reconstructions."""
    torch.manual_seed(cfg.seed)
    model = FrameClassifier(classes=10, size=min(cfg.canvas, 32), foreground=True).train()
    extractor = model.extractor()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    targets = torch.as_tensor(labels)
    rng = np.random.default_rng(cfg.seed + 1)
    start = time.perf_counter()
    for step, index in enumerate(_batches(len(frames), 64, cfg.classifier_steps, cfg.seed + 1)):
        x = extractor._inputs(frames[index])  # (n, 1, size, size) in [0, 1]
        x = x * torch.as_tensor(rng.uniform(0.5, 1.0, (len(index), 1, 1, 1)), dtype=torch.float32)
        if rng.random() < 0.3:
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        loss = F.cross_entropy(model(x), targets[torch.as_tensor(index)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, cfg.classifier_steps // 5) == 0:
            report(f"  classifier step {step + 1}/{cfg.classifier_steps}: loss {loss.item():.4f}")
    report(f"  classifier trained in {time.perf_counter() - start:.0f} s")
    return model.eval()
