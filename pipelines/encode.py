"""Encode stage (actor pool): clip rows of uint8 frames -> latent rows.

Each actor loads the frozen VAE (and optionally the CLIP text encoder) once. A clip whose plain
and flipped variants are both wanted is decoded once and expanded here into two rows, so the
flipped frames never travel through the object store. The latent posterior's mean and std are
stored (float16, unscaled), not a sample: training draws a fresh latent every epoch, as the
original AnimateDiff does by encoding on the fly.

Latents are bit-identical whatever batch a clip lands in (a resumed run batches clips
differently): the VAE always sees chunks of exactly ``data.encode_batch_size`` clips, the last one
padded. Convolution libraries choose their algorithm by tensor shape, and at SD sizes a clip
encoded in a batch of one differed from the same clip in a batch of six by one float16 step in a
few values (measured on CPU); with one shape the arithmetic is the same.
"""

from __future__ import annotations

import numpy as np

from animatediff.config import BaseModelConfig
from pipelines import windows


def to_model_input(frames: np.ndarray):
    """uint8 ``(batch, frames, H, W, 3)`` -> float ``(batch * frames, 3, H, W)`` in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames))
    batch, num_frames, height, width, _ = x.shape
    x = x.reshape(batch * num_frames, height, width, 3).permute(0, 3, 1, 2)
    return x.float().div_(127.5).sub_(1.0)


def encode_latents(
    vae, frames: np.ndarray, device, dtype, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The VAE posterior of each frame: uint8 ``(batch, frames, H, W, 3)`` -> mean, std float16
    ``(batch, latent channels, frames, H/8, W/8)`` on the CPU (unscaled).

    ``chunk``: encode exactly that many clips at a time, padding the last chunk with zeros, so
    that a clip's latents do not depend on how many clips it was batched with."""
    if chunk is not None:
        parts = []
        for start in range(0, len(frames), chunk):
            piece = frames[start : start + chunk]
            padded = np.zeros((chunk, *frames.shape[1:]), frames.dtype)
            padded[: len(piece)] = piece
            mean, std = encode_latents(vae, padded, device, dtype)
            parts.append((mean[: len(piece)], std[: len(piece)]))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    import torch

    batch, num_frames = frames.shape[:2]
    x = to_model_input(frames).to(device, dtype)
    with torch.inference_mode():
        posterior = vae.encode(x).latent_dist
        mean, std = posterior.mean, posterior.std

    def layout(t):  # (batch * frames, C, h, w) -> (batch, C, frames, h, w)
        t = t.float().reshape(batch, num_frames, *t.shape[1:]).permute(0, 2, 1, 3, 4)
        return t.to(torch.float16).cpu().numpy()

    return layout(mean), layout(std)


def shape_groups(column: np.ndarray) -> list[np.ndarray]:
    """Row indices of each shape in a tensor column, in order of first appearance: one group for a
    regular ``(rows, ...)`` array, several for an object array of per-row arrays (clips of
    different ``data.buckets`` in one batch)."""
    if column.dtype != object:
        return [np.arange(len(column))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(column):
        groups.setdefault(np.shape(row), []).append(i)
    return [np.array(rows, np.int64) for rows in groups.values()]


def stack_group(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``column[rows]`` as one ``(len(rows), ...)`` array (the rows share a shape)."""
    part = column[rows]
    return np.stack(list(part)) if part.dtype == object else part


def resolve_dtype(name: str, use_gpu: bool):
    import torch

    if name == "auto":
        return torch.bfloat16 if use_gpu else torch.float32
    return getattr(torch, name)


class EncodeClips:
    """Ray Data actor: ``__call__(clip batch) -> latent batch`` (see ``pipelines.shards`` for the
    output columns)."""

    def __init__(
        self,
        base: BaseModelConfig,
        fingerprint_hash: str,
        seed: int,
        dtype: str = "auto",
        cache_text_embeddings: bool = False,
        num_threads: int = 1,
        batch_size: int = 4,
    ):
        import torch

        from animatediff.base_model import load_text_encoder, load_vae

        self.use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        if not self.use_gpu:
            torch.set_num_threads(max(1, num_threads))
        self.dtype = resolve_dtype(dtype, self.use_gpu)
        self.vae = load_vae(base, self.dtype).to(self.device)
        self.tokenizer = self.text_encoder = None
        if cache_text_embeddings:
            self.tokenizer, text_encoder = load_text_encoder(base, self.dtype)
            self.text_encoder = text_encoder.to(self.device)
        self.fingerprint_hash = fingerprint_hash
        self.seed = seed
        self.batch_size = batch_size
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _expand(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input row of each output row, flipped, row_first)``: one output row per wanted
        variant (bit 0: plain, bit 1: flipped)."""
        take, flipped, first = [], [], []
        for i, mask in enumerate(batch["need_mask"]):
            wanted = [f for f in (False, True) if (int(mask) >> int(f)) & 1]
            for k, f in enumerate(wanted):
                take.append(i)
                flipped.append(f)
                first.append(bool(batch["row_first"][i]) and k == 0)
        return np.array(take, np.int64), np.array(flipped, bool), np.array(first, bool)

    def encode_latents(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(batch, frames, H, W, 3)`` -> mean, std float16 ``(batch, 4, frames, H/8, W/8)``."""
        return encode_latents(self.vae, frames, self.device, self.dtype, chunk=self.batch_size)

    def _encode(self, frames: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(batch, frames, H, W, 3)`` of one shape, flipping the rows marked ``flipped``
        (reverse the width axis, in place: ``frames`` is the caller's own copy), -> mean, std
        ``(batch, 4, frames, H/8, W/8)``."""
        frames[flipped] = frames[flipped][:, :, :, ::-1]
        return self.encode_latents(frames)

    def encode_text(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> embeddings float16 ``(batch, tokens, dim)`` and token ids int32."""
        import torch

        from animatediff.base_model import tokenize

        ids = tokenize(self.tokenizer, captions)
        with torch.inference_mode():
            hidden = self.text_encoder(ids.to(self.device))[0]
        return hidden.float().to(torch.float16).cpu().numpy(), ids.numpy().astype(np.int32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        take, flipped, first = self._expand(batch)
        pixels = batch["pixels"][take]
        groups = shape_groups(pixels)
        if len(take) and len(groups) > 1:  # clips of several buckets: encode each shape apart
            mean, std = np.empty(len(take), object), np.empty(len(take), object)
            for rows in groups:
                group_mean, group_std = self._encode(stack_group(pixels, rows), flipped[rows])
                for j, i in enumerate(rows):
                    mean[i], std[i] = group_mean[j], group_std[j]
        elif len(take):
            mean, std = self._encode(stack_group(pixels, groups[0]), flipped)
        else:  # keep the column shapes of empty batches consistent with the others
            _, num_frames, height, width, _ = pixels.shape
            shape = (0, self.latent_channels, num_frames, height // self.downsample)
            mean = std = np.zeros((*shape, width // self.downsample), np.float16)
        sources, ordinals = batch["source"][take], batch["ordinal"][take]
        versions = batch["source_version"][take]
        out = {
            "clip_id": np.array(
                [
                    windows.clip_id(self.fingerprint_hash, str(s), self.seed, int(o), bool(f), v)
                    for s, o, f, v in zip(sources, ordinals, flipped, versions)
                ],
                dtype=object,
            ),
            "video_id": batch["video_id"][take],
            "caption": batch["caption"][take],
            "frame_indices": batch["frame_indices"][take],
            "fps": batch["fps"][take],
            "source": sources,
            "source_version": versions,
            "flipped": flipped,
            "latent_mean": mean,
            "latent_std": std,
            "row": batch["row"][take],
            "key": batch["key"][take],
            "row_first": first,
            "row_clips": batch["row_clips"][take],
            "row_cached": batch["row_cached"][take],
            "ordinal": batch["ordinal"][take],  # read by deduplication, not stored
        }
        # Per clip, when the camera moves; curation's scores and hashes (``pipelines.curation``);
        # the bucket with data.buckets.
        for name in (
            "camera_motion", "camera_strength", "motion_score", "text_score", "phash", "height",
            "width",
        ):  # fmt: skip
            if name in batch:
                out[name] = batch[name][take]
        if self.text_encoder is not None:
            captions = [str(c) for c in out["caption"]]
            if captions:
                out["text_embedding"], out["input_ids"] = self.encode_text(captions)
            else:
                tokens, dim = self.tokenizer.model_max_length, self.text_encoder.config.hidden_size
                out["text_embedding"] = np.zeros((0, tokens, dim), np.float16)
                out["input_ids"] = np.zeros((0, tokens), np.int32)
        return out
