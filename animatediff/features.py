"""Per-frame feature extractors for the video metrics, behind one small protocol.

    extractor = PixelFeatures()                  # no network: always available
    extractor = ClipFeatures("/models/clip-vit-base-patch32")  # a local CLIP (or a hub id)
    extractor = ClassifierFeatures(digit_cnn, input_size=(28, 28), grayscale=True)
    frame_consistency(extractor(video))          # video (frames, height, width, 3) uint8

Every extractor maps ``(n, height, width, 3)`` uint8 frames to ``(n, dim)`` float32 features on the
CPU. Some can do more: ``ClassifierFeatures.classify`` (the ``Classifier`` protocol) and
``ClipFeatures.text_similarity`` (``TextScorer``). Nothing loads at import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F


@runtime_checkable
class FeatureExtractor(Protocol):
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """``(n, height, width, 3)`` uint8 -> ``(n, dim)`` float32."""
        ...


@runtime_checkable
class Classifier(Protocol):
    def classify(self, frames: np.ndarray) -> torch.Tensor:
        """``(n, height, width, 3)`` uint8 -> ``(n,)`` int64 class indices."""
        ...


@runtime_checkable
class TextScorer(Protocol):
    def text_similarity(self, frames: np.ndarray, prompt: str) -> torch.Tensor:
        """``(n, height, width, 3)`` uint8 -> ``(n,)`` cosine similarity to ``prompt``."""
        ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames: expected (n, height, width, 3) uint8, got {frames.shape} {frames.dtype}"
        )
    return np.ascontiguousarray(frames)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(n, h, w, 3)`` uint8 -> ``(n, 3, h, w)`` float32 in [0, 1]."""
    return torch.from_numpy(_check_frames(frames)).permute(0, 3, 1, 2).float() / 255.0


class PixelFeatures:
    """Downsampled pixels, centred and scaled to unit length per frame: a network-free baseline.

    Area downsampling to ``size x size`` keeps the layout and drops detail and noise. Centring each
    frame makes the cosine of two frames their Pearson correlation, so unrelated frames score
    about 0 rather than the ~0.75 that any two all-positive vectors share. A uniform frame has no
    pattern and maps to zeros. ``dim = 3 * size * size`` (``size * size`` if ``grayscale``)."""

    def __init__(self, size: int = 16, grayscale: bool = False) -> None:
        self.size = size
        self.grayscale = grayscale

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        pixels = _to_tensor(frames)  # (n, 3, h, w)
        if self.grayscale:
            pixels = pixels.mean(dim=1, keepdim=True)
        small = F.interpolate(pixels, size=(self.size, self.size), mode="area")
        flat = small.flatten(1)  # (n, channels * size * size)
        flat = flat - flat.mean(dim=1, keepdim=True)
        return F.normalize(flat, dim=1)


class ClassifierFeatures:
    """Penultimate features and labels of a frame classifier, e.g. the Moving Digits CNN.

    The module must have two methods:

    - ``features(x) -> (n, dim)``, with ``x`` ``(n, channels, height, width)`` float32 in [0, 1]:
      ``channels`` is 1 if ``grayscale`` else 3 (RGB), ``height, width`` is ``input_size`` (frames
      are resized with area/bilinear interpolation) or the frames' own size if ``None``;
    - ``head(features) -> (n, classes)`` logits.

    Any normalisation the module was trained with (mean/std) belongs inside ``features``, so that
    what this class feeds it is unambiguous. The module is put in eval mode and run without grad."""

    def __init__(
        self,
        model: torch.nn.Module,
        input_size: tuple[int, int] | None = None,
        grayscale: bool = False,
        batch_size: int = 64,
        foreground: bool = False,
    ) -> None:
        for method in ("features", "head"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"ClassifierFeatures: the model has no {method}() method")
        self.model = model.eval()
        self.input_size = input_size
        self.grayscale = grayscale
        self.batch_size = batch_size
        self.foreground = foreground

    def _inputs(self, frames: np.ndarray) -> torch.Tensor:
        if self.foreground:  # (n, 1, h, w): the subject's coverage, whatever its colours
            from animatediff.metrics import foreground_coverage

            x = torch.from_numpy(foreground_coverage(_check_frames(frames)))[:, None]
        else:
            x = _to_tensor(frames)  # (n, 3, h, w)
        if self.grayscale and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            # "area" averages when shrinking (no aliasing); it cannot enlarge, bilinear can.
            shrink = x.shape[-2] >= self.input_size[0] and x.shape[-1] >= self.input_size[1]
            mode = "area" if shrink else "bilinear"
            x = F.interpolate(x, size=tuple(self.input_size), mode=mode)
        return x

    def _run(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (n, dim), logits (n, classes))`` float32 on the CPU."""
        x = self._inputs(frames)
        device = next(self.model.parameters(), torch.empty(0)).device
        features, logits = [], []
        with torch.no_grad():
            for chunk in x.split(self.batch_size):
                f = self.model.features(chunk.to(device))
                features.append(f.float().cpu())
                logits.append(self.model.head(f).float().cpu())
        return torch.cat(features), torch.cat(logits)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self._run(frames)[0]

    def logits(self, frames: np.ndarray) -> torch.Tensor:
        """``(n, classes)`` float32."""
        return self._run(frames)[1]

    def classify(self, frames: np.ndarray) -> torch.Tensor:
        """``(n,)`` int64: the arg-max class of each frame."""
        return self.logits(frames).argmax(dim=1)


def _embedding(output: object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding;
    # transformers 4 returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


class ClipFeatures:
    """CLIP image embeddings ``(n, projection_dim)`` and CLIP scores, from a local directory or a
    hub id that holds a ``CLIPModel``, its image processor and its tokenizer.

    Features are the raw projected embeddings (``frame_consistency`` normalises them).
    ``text_similarity`` is the CLIP score as a plain cosine in [-1, 1], without the usual
    ``100 * max(cos, 0)`` rescaling."""

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        source = str(model)
        self.model = CLIPModel.from_pretrained(source).eval().to(device)
        self.processor = CLIPImageProcessor.from_pretrained(source)
        self.tokenizer = CLIPTokenizer.from_pretrained(source)
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = _check_frames(frames)
        embeddings = []
        with torch.no_grad():
            for start in range(0, len(frames), self.batch_size):
                batch = list(frames[start : start + self.batch_size])  # (h, w, 3) uint8 images
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
                output = self.model.get_image_features(pixel_values=pixels.to(self.device))
                embeddings.append(_embedding(output).float().cpu())
        return torch.cat(embeddings)

    def text_features(self, prompt: str) -> torch.Tensor:
        """``(projection_dim,)`` float32 embedding of ``prompt``."""
        tokens = self.tokenizer([prompt], truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        return _embedding(output)[0].float().cpu()

    def text_similarity(self, frames: np.ndarray, prompt: str) -> torch.Tensor:
        """``(n,)`` float32 cosine similarity of each frame's embedding with the prompt's."""
        images = self(frames)  # (n, dim)
        text = self.text_features(prompt)  # (dim,)
        return F.cosine_similarity(images, text[None], dim=1)


class FrameClassifier(torch.nn.Module):
    """A small CNN frame classifier with the ``features``/``head`` interface of
    ``ClassifierFeatures``: what an experiment trains itself where no pretrained network can be
    downloaded (the Moving Digits scorer). Saved as ``config.json`` + ``model.safetensors``.

    ``features(x: (n, channels, size, size) in [0, 1]) -> (n, width * 2)``;
    ``head(features) -> (n, classes)``."""

    def __init__(
        self,
        classes: int,
        channels: int = 1,
        size: int = 32,
        width: int = 32,
        foreground: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "classes": classes,
            "channels": channels,
            "size": size,
            "width": width,
            "foreground": foreground,
        }
        if foreground and channels != 1:
            raise ValueError("FrameClassifier: foreground input has one channel")
        conv = torch.nn.Conv2d
        self.body = torch.nn.Sequential(
            conv(channels, width, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.MaxPool2d(2),
            conv(width, width * 2, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.MaxPool2d(2),
            conv(width * 2, width * 2, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.classifier = torch.nn.Linear(width * 2, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / MODEL_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FrameClassifier:
        from safetensors.torch import load_file

        directory = Path(directory)
        model = cls(**json.loads((directory / "config.json").read_text()))
        model.load_state_dict(load_file(str(directory / MODEL_FILE)))
        return model.eval()

    def extractor(self) -> ClassifierFeatures:
        """This classifier as a feature extractor (frames resized to its input size)."""
        size = self.config["size"]
        grey = self.config["channels"] == 1
        return ClassifierFeatures(
            self, (size, size), grayscale=grey, foreground=self.config["foreground"]
        )


MODEL_FILE = "model.safetensors"


def load_extractor(spec: str) -> FeatureExtractor:
    """A feature extractor by name: ``pixels``, ``clip:<directory or hub id>`` (a CLIP model:
    image features and text alignment) or ``classifier:<directory>`` (a saved
    ``FrameClassifier``: features and labels)."""
    kind, _, where = spec.partition(":")
    if kind == "pixels" and not where:
        return PixelFeatures()
    if kind == "clip" and where:
        return ClipFeatures(where)
    if kind == "classifier" and where:
        return FrameClassifier.load(where).extractor()
    raise ValueError(
        f"evaluate.features: {spec!r} is not 'pixels', 'clip:<path or hub id>' or "
        "'classifier:<directory>'"
    )
