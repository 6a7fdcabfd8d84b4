"""CaR + SAM (paper §3.4): SAM's automatic masks replace a class's mask when they match it, and
each matched SAM mask becomes one object of that class.

The official code's stage (CaR code: utils/inference_pipeline.py `get_sam_masks`,
modeling/post_process/post_process.py `match_masks`, utils/metrics.py `IoM`), for each non-empty
class mask M:
- IoM of every SAM mask S: max(|S∩M|/|S|, |S∩M|/|M|), where |S∩M|/|S| counts only when
  |S∩M|/|M| >= min_pred_threshold (a small SAM mask inside M is not enough on its own);
- keep the SAM masks with IoM > iom_thres, or the single best one when none passes;
- U = their union; U replaces M when IoU(U, M) > matching_thresh, else M stays.
The automatic masks come from SAM's point grid with the official generator's filters
(`automatic_masks`). Where two classes' final masks overlap this code departs from the official
paint order (see `refine_with_sam`). Pure numpy apart from the SAM calls; the matching is
testable on hand-made masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autolabel.methods.base import SegResult
from autolabel.models.sam import LoadedSam, load_sam
from autolabel.refine.settings import SamSettings


@dataclass
class SamObject:
    """One matched SAM mask: its class, its pixels (at the label map's size) and SAM's IoU."""

    class_id: int
    mask: np.ndarray  # H x W bool
    predicted_iou: float


@dataclass
class SamRefiner:
    """The SAM stage of a run: a loaded SAM and the settings of its generator and matching."""

    sam: LoadedSam
    settings: SamSettings

    @classmethod
    def load(cls, settings: SamSettings, device: str) -> SamRefiner:
        """Load settings.model (once per process) on a device."""
        return cls(load_sam(settings.model, device), settings)

    def __call__(self, image: np.ndarray, result: SegResult) -> SegResult:
        """Refine one image's result (image and result at the same size)."""
        masks, predicted_iou = automatic_masks(self.sam, image, self.settings)
        return refine_with_sam(result, masks, predicted_iou, self.settings)


def point_grid(points_per_side: int, size: tuple[int, int]) -> np.ndarray:
    """SAM's grid: n x n cell centres, as N x 2 (x, y) pixel coordinates of an (H, W) image."""
    offset = 1 / (2 * points_per_side)
    axis = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(axis * size[1], axis * size[0])
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def automatic_masks(
    sam: LoadedSam, image: np.ndarray, params: SamSettings
) -> tuple[np.ndarray, np.ndarray]:
    """SAM's automatic masks of an image (one crop layer, as CaR's configs): (N x H x W bool,
    N predicted IoUs). The image is embedded once; the grid's points are decoded in batches."""
    height, width = image.shape[:2]
    points = point_grid(params.points_per_side, (height, width))
    inputs = sam.prepare(image, points)
    process = sam.processor.image_processor
    rles, scores, boxes = [], [], []
    for start in range(0, len(points), params.points_per_batch):
        logits, iou = sam.decode(inputs, start, start + params.points_per_batch)
        kept, kept_iou, kept_boxes = process.filter_masks(
            logits,
            iou,
            (height, width),
            [0, 0, width, height],
            params.pred_iou_thresh,
            params.stability_score_thresh,
        )
        rles += kept
        scores.append(kept_iou)
        boxes.append(kept_boxes)
    if not rles:
        return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
    masks, iou, _, _ = process.post_process_for_mask_generation(
        rles, torch.cat(scores), torch.cat(boxes), params.box_nms_thresh
    )
    return np.stack([np.asarray(m, dtype=bool) for m in masks]), iou.numpy().astype(np.float32)


def iom(sam_masks: np.ndarray, class_mask: np.ndarray, min_pred_threshold: float) -> np.ndarray:
    """IoM of each SAM mask (N x H x W) with a class mask (H x W), as the official `IoM`."""
    inter = (sam_masks & class_mask).reshape(len(sam_masks), -1).sum(1).astype(np.float64)
    of_sam = inter / np.maximum(sam_masks.reshape(len(sam_masks), -1).sum(1), 1)
    of_class = inter / max(int(class_mask.sum()), 1)
    of_sam[of_class < min_pred_threshold] = 0.0
    return np.maximum(of_sam, of_class)


def match(
    sam_masks: np.ndarray, class_mask: np.ndarray, params: SamSettings
) -> tuple[np.ndarray, bool]:
    """(indices of the SAM masks matched to a class mask, whether their union replaces it)."""
    if len(sam_masks) == 0 or not class_mask.any():
        return np.zeros(0, int), False
    scores = iom(sam_masks, class_mask, params.min_pred_threshold)
    chosen = np.flatnonzero(scores > params.iom_thres)
    if len(chosen) == 0:
        chosen = np.array([int(scores.argmax())])
    union = sam_masks[chosen].any(axis=0)
    overlap = (union & class_mask).sum() / (union | class_mask).sum()
    return chosen, bool(overlap > params.matching_thresh)


def objects_of(masks: np.ndarray, predicted_iou: np.ndarray, class_id: int) -> list[SamObject]:
    """One object per matched SAM mask, most confident first (SAM's predicted IoU, the order of
    its NMS): each mask takes the pixels no earlier mask took, and a mask left with less than
    half its pixels (a group of objects already taken, or a part of one) adds no object."""
    order = np.argsort(-predicted_iou, kind="stable")
    taken = np.zeros(masks.shape[1:], bool)
    out = []
    for i in order:
        own = masks[i] & ~taken
        if own.any() and own.sum() * 2 >= masks[i].sum():
            out.append(SamObject(class_id, own, float(predicted_iou[i])))
            taken |= own
    return out


def refine_with_sam(
    result: SegResult, sam_masks: np.ndarray, predicted_iou: np.ndarray, params: SamSettings
) -> SegResult:
    """Replace the class masks that SAM's masks match; the matched masks travel as objects.

    Each class ends with one mask: SAM's union where it replaces the class mask, else its own.
    A pixel one mask claims takes its class and a pixel none claims is background (so pixels a
    replaced class lost go to background). A pixel several claim keeps the class the method gave
    it when that class is among them, else goes to the highest-scored claimant (the official
    paint order, presence score ascending): SAM draws the shapes, and where two classes' masks
    disagree the method's per-pixel label names the class. The official code paints every mask
    in score order, so a matched SAM mask that spills onto a touching object of another class
    takes it over whenever its class scores higher (on 40 toy design scenes this rule gave crf+sam
    mIoU +0.004 (fast) / +0.000 (car) against the CRF alone, the official order -0.004 / +0.002,
    unions painted over every other class -0.006 / -0.007).
    """
    classes = [int(k) for k in np.unique(result.labels) if k > 0]
    classes.sort(key=lambda k: float(result.scores[k - 1]))
    own = {k: result.labels == k for k in classes}
    final: dict[int, np.ndarray] = {}
    replaced: dict[int, np.ndarray] = {}
    for k in classes:
        chosen, replace = match(sam_masks, own[k], params)
        final[k] = sam_masks[chosen].any(axis=0) if replace else own[k]
        if replace:
            replaced[k] = chosen
    labels = np.zeros_like(result.labels)
    for k in classes:
        labels[final[k]] = k
    for k in classes:
        labels[final[k] & own[k]] = k
    objects: list[SamObject] = []
    for k, chosen in replaced.items():
        owned = sam_masks[chosen] & (labels == k)
        objects += objects_of(owned, predicted_iou[chosen], k)
    return SegResult(labels, result.scores, result.probs, {**result.extras, "objects": objects})
