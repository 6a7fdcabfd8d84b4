"""Pixels to instances: fit to the working size, run the method's model (run_model), its tail
(complete: the CRF and the label map, which the local engine may run in a worker process),
crop back, split into instances (to_instances).

With a SAM stage (--refine sam / crf+sam), each image's result goes through
autolabel.refine.sam before it becomes instances; the matched SAM masks become instances of their
own. Each image's review priority (autolabel.review) is computed here, once, and travels on
`Instances.priority`.

The one path from decoded images to `Instances`, shared by `Labeler.label`, runs, the Label
Studio backend and the FiftyOne plugin. A failing image comes back as an ImageError value, so one
bad image never ends a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autolabel.errors import ImageError
from autolabel.instances import Instances
from autolabel.io.images import LoadedImage
from autolabel.io.resize import fit_max_side
from autolabel.methods.base import Segmenter, SegResult
from autolabel.review import priority as review_priority
from autolabel.vocab import Vocabulary

if TYPE_CHECKING:
    from autolabel.refine.finish import Finish
    from autolabel.refine.sam import SamRefiner

# Images longer than this ratio are padded before segmentation: methods scale the short side to
# a fixed size, so a 1000:1 strip would otherwise cost (and allocate) like 1000 square images.
MAX_ASPECT = 8
# CLIP's mean colour: padding that normalises to about zero, i.e. no signal for the model.
PAD_COLOUR = (123, 117, 104)


@dataclass
class Staged:
    """One image after the model: its working-size pixels and the method's tail still to run."""

    image: LoadedImage
    fitted: np.ndarray  # the working-size image the method and SAM see
    finish: Finish
    box: tuple[int, int, int, int]  # where the image lies in what the method saw (padding)


def label_loaded(
    segmenter: Segmenter,
    images: list[LoadedImage],
    vocab: Vocabulary,
    max_side: int,
    min_area: int,
    refiner: SamRefiner | None = None,
) -> dict[str, Instances | ImageError]:
    """Segment decoded images, refine them with SAM if given, and split each label map into
    instances, keyed by entry.rel."""
    labelled: dict[str, Instances | ImageError] = {}
    for rel, staged in run_model(segmenter, images, vocab, max_side).items():
        if isinstance(staged, ImageError):
            labelled[rel] = staged
            continue
        result = complete(rel, staged.finish, staged.box)
        labelled[rel] = to_instances(staged, result, vocab, min_area, refiner)
    return labelled


def run_model(
    segmenter: Segmenter, images: list[LoadedImage], vocab: Vocabulary, max_side: int
) -> dict[str, Staged | ImageError]:
    """The method's model part for decoded images, keyed by entry.rel; if the batch fails, retry
    one by one so a bad image fails alone."""
    by_rel = {im.entry.rel: im for im in images}
    # Resized once: the method and the SAM stage see the same working-size image.
    fitted = {rel: fit_max_side(im.rgb, max_side) for rel, im in by_rel.items()}
    padded = {rel: pad_to_aspect(rgb) for rel, rgb in fitted.items()}
    try:
        finishes = segmenter.forward_batch([p for p, _ in padded.values()], vocab)
        return {
            rel: Staged(by_rel[rel], fitted[rel], finish, box)
            for (rel, (_, box)), finish in zip(padded.items(), finishes, strict=True)
        }
    except Exception as exc:  # a method's error on one image must not end the run
        if len(images) == 1:
            reason = f"segmentation failed: {type(exc).__name__}: {exc}"
            return {images[0].entry.rel: ImageError(images[0].entry.rel, reason, "segment")}
    out: dict[str, Staged | ImageError] = {}
    for image in images:
        out.update(run_model(segmenter, [image], vocab, max_side))
    return out


def complete(rel: str, finish: Finish, box: tuple[int, int, int, int]) -> SegResult | ImageError:
    """Run an image's method tail (in this process or a worker) and crop it to the image."""
    try:
        return _crop_result(finish(), box)
    except Exception as exc:  # one image's CRF must not end the run
        return ImageError(rel, f"segmentation failed: {type(exc).__name__}: {exc}", "segment")


def to_instances(
    staged: Staged,
    result: SegResult | ImageError,
    vocab: Vocabulary,
    min_area: int,
    refiner: SamRefiner | None = None,
) -> Instances | ImageError:
    """SAM (if given), then the image's instances and review priority."""
    if isinstance(result, ImageError):
        return result
    try:
        if refiner is not None:
            result = refiner(staged.fitted, result)
        instances = Instances.from_label_map(
            result.labels,
            vocab.names,
            staged.image.size,
            result.probs,
            min_area,
            result.scores,
            result.extras.get("objects", ()),
        )
        instances.priority = review_priority(result, instances)
        return instances
    except Exception as exc:  # one image's post-processing must not end a long run
        reason = f"post-processing failed: {type(exc).__name__}: {exc}"
        return ImageError(staged.image.entry.rel, reason, "post")


def is_extreme_aspect(size: tuple[int, int]) -> bool:
    """Whether an image of this (height, width) is padded to MAX_ASPECT before segmentation."""
    return max(size) > MAX_ASPECT * min(size)


def pad_to_aspect(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Centre an extreme strip on a MAX_ASPECT canvas; returns it and the strip's box."""
    h, w = rgb.shape[:2]
    height, width = max(h, math.ceil(w / MAX_ASPECT)), max(w, math.ceil(h / MAX_ASPECT))
    if (height, width) == (h, w):
        return rgb, (0, 0, h, w)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = PAD_COLOUR
    y0, x0 = (height - h) // 2, (width - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = rgb
    return canvas, (y0, x0, y0 + h, x0 + w)


def _crop_result(result: SegResult, box: tuple[int, int, int, int]) -> SegResult:
    y0, x0, y1, x1 = box
    if (y0, x0) == (0, 0) and result.labels.shape == (y1, x1):
        return result
    probs = None if result.probs is None else result.probs[:, y0:y1, x0:x1]
    return SegResult(result.labels[y0:y1, x0:x1], result.scores, probs, result.extras)
