"""The segmenter protocol every method implements, and the registry that finds methods by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from autolabel.vocab import Vocabulary


@dataclass
class SegResult:
    """What a segmenter says about one image, at the size of the image it was given.

    labels: H x W int32, 0 = background, k = vocabulary class k (1-based).
    scores: (K,) image-level presence score per class in [0, 1] (0 for classes pruned away).
    probs: (K+1) x H x W float32 class probabilities (channel 0 = background), or None.
    """

    labels: np.ndarray
    scores: np.ndarray
    probs: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Segmenter(Protocol):
    """A method: built once per process (models loaded), then asked about batches of images."""

    name: str

    def segment_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[SegResult]:
        """Segment each H x W x 3 uint8 RGB image into the vocabulary's classes."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and model provenance for run.json."""
        ...


# name -> "module:factory"; factories take (settings: dict, device: str) and return a Segmenter.
# Importing lazily keeps `autolabel --help` fast and lets a method's optional dependencies
# (transformers for pnp) stay optional.
METHODS: dict[str, str] = {
    "fast": "autolabel.methods.dense:build",
    "car": "autolabel.methods.car:build",
    "pnp": "autolabel.methods.pnp:build",
}
DESCRIPTIONS: dict[str, str] = {
    "fast": "single-pass dense CLIP (NACLIP-style last-block attention); fastest",
    "car": "CLIP as RNN: recurrent class pruning, Grad-CAM proposals, prompted classifier, CRF",
    "pnp": "PnP-OVSS: BLIP cross-attention + GradCAM + Salience DropOut + CRF",
}


def build_segmenter(method: str, settings: dict[str, Any], device: str) -> Segmenter:
    """Instantiate a method by name with recipe settings on a device."""
    from autolabel.errors import UsageError

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    module_name, factory = METHODS[method].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory)(settings, device)
