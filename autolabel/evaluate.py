"""Compare a run's semantic masks with ground-truth label PNGs: IoU, mIoU, pixel accuracy and
image-level presence precision / recall / F1."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.errors import UsageError
from autolabel.io.png import read_label_png
from autolabel.io.resize import resize_labels


@dataclass
class SegmentationScores:
    """Accumulates a confusion matrix and per-image presence counts over many images.

    Class 0 is background; 1..K are the vocabulary classes. mIoU averages the IoU of every class
    (background included, as in VOC) that occurs in the ground truth or the predictions.
    """

    num_classes: int  # K + 1, background included
    ignore_index: int | None = 255
    confusion: np.ndarray = field(init=False)  # [gt, pred] pixel counts
    presence: np.ndarray = field(init=False)  # per class: true pos, false pos, false neg images
    images: int = 0

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.presence = np.zeros((self.num_classes, 3), np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: pred and gt are same-shape integer label maps."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        valid = np.ones(gt.shape, bool) if self.ignore_index is None else gt != self.ignore_index
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        k = self.num_classes
        if g.size and (g.max() >= k or g.min() < 0):
            raise ValueError(
                f"ground truth holds class id {int(g.max())}, beyond the {k - 1} classes"
            )
        if p.size and (p.max() >= k or p.min() < 0):
            raise ValueError(
                f"prediction holds class id {int(p.max())}, beyond the {k - 1} classes"
            )
        self.confusion += np.bincount(g * k + p, minlength=k * k).reshape(k, k)
        # Presence uses valid pixels only: a class the run paints where the ground truth says
        # "unlabelled" is evidence neither for nor against it.
        truth = np.bincount(g, minlength=k)[1:] > 0
        said = np.bincount(p, minlength=k)[1:] > 0
        self.presence[1:, 0] += truth & said
        self.presence[1:, 1] += ~truth & said
        self.presence[1:, 2] += truth & ~said
        self.images += 1

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and predictions."""
        inter = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def summary(self, names: list[str] | None = None) -> dict[str, Any]:
        """All metrics as plain data (names: the K class names, background excluded)."""
        names = names or [str(i) for i in range(1, self.num_classes)]
        iou = self.iou()
        total = self.confusion.sum()
        tp, fp, fn = self.presence[1:].sum(0)
        per_class = []
        for cid, name in enumerate(["background", *names]):
            row: dict[str, Any] = {
                "id": cid,
                "name": name,
                "iou": _num(iou[cid]),
                "gt_pixels": int(self.confusion[cid].sum()),
                "pred_pixels": int(self.confusion[:, cid].sum()),
            }
            if cid > 0:
                ctp, cfp, cfn = (int(v) for v in self.presence[cid])
                row.update(_prf(ctp, cfp, cfn), tp=ctp, fp=cfp, fn=cfn)
            per_class.append(row)
        return {
            "images": self.images,
            "miou": _num(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "pixel_accuracy": _num(np.trace(self.confusion) / total) if total else None,
            "presence": {
                **_prf(int(tp), int(fp), int(fn)),
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
            },
            "classes": per_class,
        }


@dataclass
class EvalReport:
    """The metrics plus which files were paired and which were not."""

    metrics: dict[str, Any]
    missing_gt: list[str]  # run masks without a ground-truth file
    missing_pred: list[str]  # ground-truth files the run has no mask for (failed or skipped)
    resized: list[str]  # run masks whose size differed from the ground truth

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return {
            **self.metrics,
            "missing_gt": self.missing_gt,
            "missing_pred": self.missing_pred,
            "resized": self.resized,
        }


def evaluate_run(run_dir: Path, gt_dir: Path, ignore_index: int | None = 255) -> EvalReport:
    """Pair OUT/masks/<rel>.png with GT_DIR/<rel>.png and score every pair."""
    masks_dir = run_dir / "masks"
    if not masks_dir.is_dir():
        raise UsageError(f"{run_dir}: no masks/ folder; is this the output folder of a run?")
    if not gt_dir.is_dir():
        raise UsageError(f"--gt-masks {gt_dir}: no such folder")
    names = _class_names(run_dir)
    preds = {p.relative_to(masks_dir).as_posix(): p for p in sorted(masks_dir.rglob("*.png"))}
    gts = {p.relative_to(gt_dir).as_posix(): p for p in sorted(gt_dir.rglob("*.png"))}
    paired = sorted(set(preds) & set(gts))
    if not paired:
        raise UsageError(
            f"no mask in {masks_dir} has a ground-truth PNG of the same relative name in {gt_dir}"
        )
    scores = SegmentationScores(len(names) + 1, ignore_index)
    resized = []
    for rel in paired:
        pred = read_label_png(preds[rel])
        gt = _read_gt(gts[rel])
        if pred.shape != gt.shape:
            pred = resize_labels(pred, gt.shape)
            resized.append(rel)
        try:
            scores.add(pred, gt)
        except ValueError as exc:
            raise UsageError(f"{gts[rel]}: {exc}; check --ignore-index and the class ids") from exc
    return EvalReport(
        metrics=scores.summary(names),
        missing_gt=sorted(set(preds) - set(gts)),
        missing_pred=sorted(set(gts) - set(preds)),
        resized=resized,
    )


def _class_names(run_dir: Path) -> list[str]:
    """Class names from the run's run.json (the vocabulary in category-id order)."""
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [c["name"] for c in data["vocabulary"]["classes"]]
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: missing; is {run_dir} the output folder of a run?") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: cannot read the vocabulary from it ({exc})") from exc


def _read_gt(path: Path) -> np.ndarray:
    """A ground-truth PNG as a class-id array; colour PNGs are refused with the reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except OSError as exc:
        raise UsageError(f"{path}: not a readable PNG ({exc})") from exc
    if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise UsageError(
            f"{path}: a {mode} image; ground truth must be single-channel PNGs whose pixel values "
            "are class ids (palette PNGs are read by index)"
        )
    return read_label_png(path)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1}


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
