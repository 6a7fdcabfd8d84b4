"""Pixels to instances: fit to the working size, segment, crop back, split into instances.

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
    from autolabel.refine.sam import SamRefiner

# Images longer than this ratio are padded before segmentation: methods scale the short side to
# a fixed size, so a 1000:1 strip would otherwise cost (and allocate) like 1000 square images.
MAX_ASPECT = 8
# CLIP's mean colour: padding that normalises to about zero, i.e. no signal for the model.
PAD_COLOUR = (123, 117, 104)


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
    by_rel = {im.entry.rel: im for im in images}
    # Resized once: the method and the SAM stage see the same working-size image.
    fitted = {rel: fit_max_side(im.rgb, max_side) for rel, im in by_rel.items()}
    for rel, outcome in segment_fitted(segmenter, fitted, vocab).items():
        if isinstance(outcome, ImageError):
            labelled[rel] = outcome
            continue
        try:
            if refiner is not None:
                outcome = refiner(fitted[rel], outcome)
            instances = Instances.from_label_map(
                outcome.labels,
                vocab.names,
                by_rel[rel].size,
                outcome.probs,
                min_area,
                outcome.scores,
                outcome.extras.get("objects", ()),
            )
            instances.priority = review_priority(outcome, instances)
            labelled[rel] = instances
        except Exception as exc:  # one image's post-processing must not end a long run
            reason = f"post-processing failed: {type(exc).__name__}: {exc}"
            labelled[rel] = ImageError(rel, reason, "post")
    return labelled


def segment_fitted(
    segmenter: Segmenter, fitted: dict[str, np.ndarray], vocab: Vocabulary
) -> dict[str, SegResult | ImageError]:
    """Segment images already at the working size (fit_max_side), keyed by entry.rel; if the
    batch fails, retry one by one so a bad image fails alone. Results are sized like the input."""
    padded = {rel: pad_to_aspect(rgb) for rel, rgb in fitted.items()}
    try:
        results = segmenter.segment_batch([p for p, _ in padded.values()], vocab)
        return {
            rel: _crop_result(res, box)
            for (rel, (_, box)), res in zip(padded.items(), results, strict=True)
        }
    except Exception as exc:  # a method's error on one image must not end the run
        if len(fitted) == 1:
            (rel,) = fitted
            reason = f"segmentation failed: {type(exc).__name__}: {exc}"
            return {rel: ImageError(rel, reason, "segment")}
    out: dict[str, SegResult | ImageError] = {}
    for rel, rgb in fitted.items():
        out.update(segment_fitted(segmenter, {rel: rgb}, vocab))
    return out


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
