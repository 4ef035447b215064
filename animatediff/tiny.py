"""A tiny Stable-Diffusion-shaped base model with random weights: offline, deterministic, CPU-fast.

It has the real SD 1.5 structure at toy widths: a 4-level VAE (8x spatial downsampling, 4 latent
channels), a UNet with cross-attention at the first levels and 2 layers per block, and a CLIP text
encoder with a byte-level tokenizer (no BPE merges, so no vocabulary download). Every process that
builds it with the same seed gets bit-identical weights, so a Ray cluster needs no shared copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CROSS_ATTENTION_DIM = 32
TINY_VAE_SCALING_FACTOR = 0.18215


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (as in OpenAI's CLIP tokenizer)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def write_clip_bpe_tokenizer(directory: Path, bpe_path: str | Path) -> None:
    """Write the real CLIP tokenizer (vocab.json, merges.txt, configs) from OpenAI's BPE merges
    file ``bpe_simple_vocab_16e6.txt.gz`` (shipped inside the ``open_clip_torch`` wheel): the
    49,408-token vocabulary of SD 1.5's text encoder, built as OpenAI's ``SimpleTokenizer``
    builds it (bytes, bytes + ``</w>``, the first 48,894 merges, then the two special tokens)."""
    import gzip

    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(merge.split()) for merge in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    write_clip_tokenizer_files(directory, {t: i for i, t in enumerate(vocab_list)}, merges)


def write_byte_level_clip_tokenizer(directory: Path) -> None:
    """Write a CLIPTokenizer (vocab.json, merges.txt, configs) whose tokens are single bytes."""
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    write_clip_tokenizer_files(directory, {t: i for i, t in enumerate(vocab_list)}, [])


def write_clip_tokenizer_files(directory: Path, vocab: dict[str, int], merges: list[str]) -> None:
    """A CLIPTokenizer directory from a vocabulary and BPE merges (``"a b"`` lines)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )


def tiny_unet_kwargs() -> dict:
    """``UNet2DConditionModel`` arguments of the tiny base (also used by tests directly)."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_tiny_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random-weight ``unet``, ``vae`` and ``text_encoder`` (fp32, eval mode), seeded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_kwargs())
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=TINY_VAE_SCALING_FACTOR,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=TINY_CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval()}


def save_tiny_base(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny base as a diffusers ``StableDiffusionPipeline`` directory and return it.

    Writes to a temporary sibling and renames, so concurrent builders never see a partial copy."""
    import os
    import shutil
    import tempfile

    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    directory = Path(directory).expanduser()
    if (directory / "model_index.json").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        components = build_tiny_components(seed)
        components["unet"].save_pretrained(staging / "unet")
        components["vae"].save_pretrained(staging / "vae")
        # transformers' save_pretrained writes nothing on torch.distributed ranks other than 0, and
        # every Ray Train worker may be the one that builds this copy: write the weights ourselves.
        text_encoder = components["text_encoder"]
        text_encoder.config.save_pretrained(staging / "text_encoder")
        save_file(
            {k: v.contiguous() for k, v in text_encoder.state_dict().items()},
            str(staging / "text_encoder" / "model.safetensors"),
            metadata={"format": "pt"},
        )
        write_byte_level_clip_tokenizer(staging / "tokenizer")
        DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ).save_pretrained(staging / "scheduler")
        (staging / "model_index.json").write_text(
            json.dumps(
                {
                    "_class_name": "StableDiffusionPipeline",
                    "_diffusers_version": "0.42.1",
                    "feature_extractor": [None, None],
                    "image_encoder": [None, None],
                    "requires_safety_checker": False,
                    "safety_checker": [None, None],
                    "scheduler": ["diffusers", "DDIMScheduler"],
                    "text_encoder": ["transformers", "CLIPTextModel"],
                    "tokenizer": ["transformers", "CLIPTokenizer"],
                    "unet": ["diffusers", "UNet2DConditionModel"],
                    "vae": ["diffusers", "AutoencoderKL"],
                },
                indent=2,
            )
        )
        try:
            os.rename(staging, directory)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
