"""The segmenter protocol every method implements, and the registry: one entry per method.

A `MethodSpec` names where the method's settings model, builder and tune search space live;
they are imported on first use, so that importing the registry (`autolabel --help`) loads neither
pydantic nor torch, and a method's optional dependencies (transformers for pnp) stay optional.
Settings are validated without torch (autolabel.methods.settings), before any model loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autolabel.errors import UsageError
from autolabel.vocab import Vocabulary

if TYPE_CHECKING:
    import numpy as np

    from autolabel.methods.settings import MethodSettings
    from autolabel.refine.finish import Finish


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

    def forward_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[Finish]:
        """segment_batch's model part: per image, the rest (CRF, label map) as a Finish."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and model provenance for run.json."""
        ...


def _load(reference: str) -> Any:
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class MethodSpec:
    """One method: its name, what it does, and "module:attribute" references to its settings
    model (a MethodSettings subclass), its builder (validated settings, device) -> Segmenter,
    and its tune search space (validated settings, device) -> {setting: values}, if any."""

    name: str
    description: str
    settings: str
    builder: str
    space: str | None = None

    def settings_type(self) -> type[MethodSettings]:
        """The method's settings model (imports no torch)."""
        return _load(self.settings)

    def builder_function(self) -> Callable[[MethodSettings, str], Segmenter]:
        """The method's builder (imports the method's module, which imports torch)."""
        return _load(self.builder)

    def space_function(self) -> Callable[[MethodSettings, str], dict[str, list]] | None:
        """The method's tune search space, or None for a method tune cannot search."""
        return None if self.space is None else _load(self.space)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "fast",
            "single-pass dense CLIP (NACLIP-style last-block attention); fastest",
            "autolabel.methods.settings:DenseSettings",
            "autolabel.methods.dense:build",
        ),
        MethodSpec(
            "car",
            "CLIP as RNN: recurrent class pruning, Grad-CAM proposals, prompted classifier, CRF",
            "autolabel.methods.settings:CaRSettings",
            "autolabel.methods.car:build",
            "autolabel.methods.car:search_space",
        ),
        MethodSpec(
            "pnp",
            "PnP-OVSS: BLIP cross-attention + GradCAM + Salience DropOut + CRF",
            "autolabel.methods.settings:PnPSettings",
            "autolabel.methods.pnp:build",
            "autolabel.methods.pnp:search_space",
        ),
    )
}


def method_names() -> list[str]:
    """Every method name, in registry order."""
    return list(METHODS)


def method_spec(method: str) -> MethodSpec:
    """A method's registry entry; UsageError listing the methods for an unknown name."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[method]


def validate_settings(method: str, settings: Mapping[str, Any]) -> MethodSettings:
    """A method's validated settings; UsageError naming each bad setting. Loads no model."""
    return method_spec(method).settings_type().from_dict(settings)


def _validated(spec: MethodSpec, settings: Mapping[str, Any] | MethodSettings) -> MethodSettings:
    return spec.settings_type().coerce(settings)


def build_segmenter(
    method: str, settings: Mapping[str, Any] | MethodSettings, device: str
) -> Segmenter:
    """Instantiate a method by name with recipe settings (or validated ones) on a device."""
    spec = method_spec(method)
    return spec.builder_function()(_validated(spec, settings), device)


def check_tunable(method: str) -> MethodSpec:
    """A method's registry entry if `autolabel tune` can search it; UsageError otherwise."""
    spec = method_spec(method)
    if spec.space is None:
        tunable = ", ".join(name for name, s in METHODS.items() if s.space is not None)
        raise UsageError(f"method {method} cannot be tuned; tunable methods: {tunable}")
    return spec


def search_space(
    method: str, settings: Mapping[str, Any] | MethodSettings, device: str
) -> dict[str, list]:
    """The values tune tries for each searched setting of a method; UsageError if it has none."""
    spec = check_tunable(method)
    return spec.space_function()(_validated(spec, settings), device)
