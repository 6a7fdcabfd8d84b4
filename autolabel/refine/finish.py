"""Each method's per-image tail after its model: the dense CRF and the label map.

A method's `forward_batch` runs the model (torch, batched) and returns one `Finish` per image;
calling it gives the image's SegResult. The tails live here, apart from the methods, because
they are numpy and pydensecrf only: the local engine runs the heavy ones (with a CRF) in worker
processes while the model works on the next batch, and a worker that imports no torch starts in
a fraction of a second. pydensecrf holds the GIL for the whole inference, so threads would not
overlap it with anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from autolabel.methods.base import SegResult
from autolabel.refine.crf import CRFParams, dense_crf

# The official CRF feeds the bilateral kernel BGR minus this mean, wrapped to uint8 (CaR code:
# modeling/model/crf.py, inherited from CLIP-ES, github.com/linyq2117/CLIP-ES).
CRF_MEAN_BGR = (104.008, 116.669, 122.675)


class Finish(Protocol):
    """What is left of one image after the model; picklable, so a worker process can run it."""

    @property
    def heavy(self) -> bool:
        """Whether it is worth a worker process (it runs a CRF)."""
        ...

    def __call__(self) -> SegResult:
        """The image's SegResult."""
        ...


@dataclass
class Done:
    """A result the method finished itself."""

    result: SegResult
    heavy = False

    def __call__(self) -> SegResult:
        """The result, as it is."""
        return self.result


def normalised(channels: np.ndarray) -> np.ndarray:
    """Channels divided by their per-pixel sum: the CRF's argmax without the pairwise terms."""
    return channels / np.maximum(channels.sum(axis=0, keepdims=True), 1e-8)


@dataclass
class DenseFinish:
    """`fast`: optional CRF over the class probabilities, argmax, optional threshold."""

    image: np.ndarray  # H x W x 3 uint8
    probs: np.ndarray  # (K+1) x H x W float32, channel 0 = best background word
    crf: bool
    prob_threshold: float

    @property
    def heavy(self) -> bool:
        """A CRF is worth a worker."""
        return self.crf

    def __call__(self) -> SegResult:
        """Labels, scores and probabilities of the image."""
        probs = dense_crf(self.image, self.probs, CRFParams()) if self.crf else self.probs
        labels = probs.argmax(axis=0).astype(np.int32)
        if self.prob_threshold > 0:
            labels[probs[1:].max(axis=0) < self.prob_threshold] = 0
        scores = probs[1:].reshape(len(probs) - 1, -1).max(axis=1)
        return SegResult(labels, scores.astype(np.float32), probs.astype(np.float32))


@dataclass
class PassOutput:
    """A CaR pass's result for one image: label map, class probabilities and scores."""

    labels: np.ndarray  # H x W, 0 or class id
    probs: dict[int, np.ndarray]  # class id -> CRF marginal
    background: np.ndarray  # CRF background marginal
    scores: dict[int, float]


@dataclass
class CarPass:
    """One CaR pass over one image, as the recurrence left it."""

    proposals: np.ndarray  # (rows, H, W) of the last step
    class_ids: list[int]  # class id (1-based) of each surviving query, in proposal order
    scores: list[float]  # P_ii of each surviving query
    bg_factor: float


def car_crf_image(image: np.ndarray, mode: str) -> np.ndarray:
    """The image CaR's CRF sees: RGB, or (parity) the official wrapped mean-subtracted BGR."""
    if mode == "rgb":
        return image
    shifted = image[:, :, ::-1].astype(np.float32) - np.array(CRF_MEAN_BGR, np.float32)
    # astype(uint8) on negatives truncates toward zero and wraps modulo 256 on x86-64.
    return (np.trunc(shifted).astype(np.int64) % 256).astype(np.uint8)


def car_pass_output(
    image: np.ndarray, run: CarPass, crf: bool, parity: bool, crf_image: str = "rgb"
) -> PassOutput:
    """Dense CRF over [background, last proposals] (unless crf is off); labels and scores of
    the survivors."""
    proposals = run.proposals
    bg = np.power(1 - proposals.max(axis=0, keepdims=True), run.bg_factor)
    channels = np.concatenate([bg, proposals])
    if crf:
        marginals = dense_crf(car_crf_image(image, crf_image), channels, CRFParams())
    else:
        marginals = normalised(channels)
    winner = marginals.argmax(axis=0)
    pairs = len(run.class_ids)
    if parity:
        # F.one_hot without num_classes keeps channels up to the largest label only, and
        # zip() then drops the classes past it (CaR code: crf.py `PostProcess`, then
        # `_forward_car`).
        pairs = min(pairs, int(winner.max()))
    labels = np.zeros(winner.shape, dtype=np.int32)
    probs, scores = {}, {}
    for j in range(pairs):
        class_id = run.class_ids[j]
        labels[winner == j + 1] = class_id
        probs[class_id] = marginals[j + 1]
        scores[class_id] = float(run.scores[j])
    return PassOutput(labels, probs, marginals[0], scores)


def car_assemble(outputs: list[PassOutput], num_classes: int, size: tuple[int, int]) -> SegResult:
    """Merge passes: later passes (stuff) are painted first and the first (things) over them."""
    labels = np.zeros(size, dtype=np.int32)
    scores = np.zeros(num_classes, dtype=np.float32)
    probs = np.zeros((num_classes + 1, *size), dtype=np.float32)
    probs[0] = 1.0
    for out in reversed(outputs):
        painted = out.labels > 0
        labels[painted] = out.labels[painted]
        probs[0] = np.minimum(probs[0], out.background)
        for class_id, marginal in out.probs.items():
            probs[class_id] = marginal
            scores[class_id - 1] = out.scores[class_id]
    return SegResult(labels=labels, scores=scores, probs=probs)


@dataclass
class CarFinish:
    """`car`: each pass's CRF and label map, then the passes merged."""

    image: np.ndarray
    passes: list[CarPass]
    num_classes: int
    crf: bool
    parity: bool
    crf_image: str = "rgb"

    @property
    def heavy(self) -> bool:
        """A CRF is worth a worker."""
        return self.crf

    def __call__(self) -> SegResult:
        """The merged SegResult of every pass."""
        outputs = [
            car_pass_output(self.image, run, self.crf, self.parity, self.crf_image)
            for run in self.passes
        ]
        return car_assemble(outputs, self.num_classes, self.image.shape[:2])


def pnp_probs(
    channels: np.ndarray, image: np.ndarray, crf: CRFParams | None, add_background: bool
) -> np.ndarray:
    """PnP's last refinement step: the dense CRF, or (without one) a per-pixel normalisation in
    which a pixel where every channel is zero gets a uniform distribution, as softmax gives it;
    channel 0 is background (all zero when the channels have none)."""
    if crf is not None:
        probs = dense_crf(image, channels, crf)
    else:
        total = channels.sum(axis=0, keepdims=True)
        uniform = np.float32(1.0 / len(channels))
        probs = np.where(total > 0, channels / np.maximum(total, 1e-12), uniform)
    if not add_background:  # no background channel: channel 0 can never win
        probs = np.concatenate([np.zeros_like(probs[:1]), probs])
    return probs


@dataclass
class PnPFinish:
    """`pnp`: the CRF over the refined class maps, the label map, and the scores."""

    image: np.ndarray
    channels: np.ndarray  # (k [+1 background]) x H x W, before the CRF
    add_background: bool  # whether channels[0] is a background channel
    crf: CRFParams | None
    classes: list[int]  # vocabulary indices (0-based) of channels after the background
    num_classes: int
    presence: np.ndarray | None = None  # CLIP presence per class, when the filter ran

    @property
    def heavy(self) -> bool:
        """A CRF is worth a worker."""
        return self.crf is not None and bool(self.classes)

    def __call__(self) -> SegResult:
        """Labels, probabilities and scores of the image."""
        height, width = self.image.shape[:2]
        probs = np.zeros((self.num_classes + 1, height, width), dtype=np.float32)
        if not self.classes:
            probs[0] = 1.0
            labels = np.zeros((height, width), dtype=np.int32)
        else:
            local = pnp_probs(self.channels, self.image, self.crf, self.add_background)
            channel = np.array([0] + [c + 1 for c in self.classes])
            probs[channel] = local
            labels = channel[local.argmax(axis=0)].astype(np.int32)
        if self.presence is not None:
            chosen = np.isin(np.arange(self.num_classes), self.classes)
            scores = np.where(chosen, self.presence, 0.0)
        else:
            scores = probs[1:].reshape(self.num_classes, -1).max(axis=1)
        extras = {"prompt_classes": [c + 1 for c in self.classes]}
        return SegResult(labels, scores.astype(np.float32), probs, extras)
