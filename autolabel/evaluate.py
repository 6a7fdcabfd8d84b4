"""Compare a run's semantic masks with ground-truth label PNGs: IoU, mIoU, pixel accuracy and
image-level presence precision / recall / F1."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autolabel.errors import UsageError
from autolabel.io.png import read_label_png
from autolabel.io.resize import resize_labels

if TYPE_CHECKING:
    from autolabel.instances import Instances
    from autolabel.io.run_folder import RunImage


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
        return confusion_iou(self.confusion)

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


def confusion_iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU of (..., C, C) [truth, prediction] confusion matrices; NaN for a class
    absent from both sides."""
    inter = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    union = confusion.sum(-1) + confusion.sum(-2) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def confusion_miou(confusion: np.ndarray) -> np.ndarray:
    """mIoU over the classes present on either side of (..., C, C) confusion matrices (0 when
    no class is), as SegmentationScores reports it."""
    iou = confusion_iou(confusion)
    present = np.isfinite(iou).sum(-1)
    return np.where(present > 0, np.nansum(iou, -1) / np.maximum(present, 1), 0.0)


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


@dataclass
class InstanceReport:
    """COCO mask AP of a run against reviewed or ground-truth instances, and what was paired."""

    metrics: dict[str, Any]  # ap, ap50, ap75, images, classes: [{id, name, ap, gt}]
    missing_gt: list[str]  # run images without ground truth
    missing_pred: list[str]  # ground-truth images the run did not label
    unmatched_classes: list[str]  # ground-truth categories that are not in the run's vocabulary

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return {
            **self.metrics,
            "missing_gt": self.missing_gt,
            "missing_pred": self.missing_pred,
            "unmatched_classes": self.unmatched_classes,
        }


def evaluate_instances(
    run_dir: Path,
    gt_coco: Path,
    instances_of: Callable[[RunImage], Instances] = operator.attrgetter("instances"),
) -> InstanceReport:
    """COCO mask AP, AP50, AP75 and per-class AP of a run against any COCO file.

    The ground truth keeps its own image and category ids: images are matched to the run's by
    file name (the relative path, else a unique base name) and categories by name, so what
    `autolabel pull` writes, or any other COCO export, can score a run. `instances_of` may score
    other instances of each run image than the run's own (the toy benchmark's baselines).
    """
    from autolabel.io.coco import read_coco
    from autolabel.io.run_folder import read_run

    run = read_run(run_dir)
    gt = read_coco(gt_coco, where=f"--gt-coco {gt_coco}")
    names = run.vocabulary.names
    gt_class = match_categories(gt.categories, names)
    unmatched = sorted(str(c["name"]) for c in gt.categories if gt_class[c["id"]] is None)
    pairs = _pair_images(run.images, gt.images)
    if not pairs:
        raise UsageError(f"--gt-coco {gt_coco}: no image has the file name of an image of the run")
    gt_images, gt_anns, predictions = [], [], []
    for image_id, (image, gt_image) in enumerate(pairs, 1):
        height, width = image.size
        if (gt_image.get("height", height), gt_image.get("width", width)) != (height, width):
            raise UsageError(
                f"--gt-coco {gt_coco}: {gt_image['file_name']} is "
                f"{gt_image.get('width')}x{gt_image.get('height')}, the run's is {width}x{height}"
            )
        gt_images.append(
            {"id": image_id, "file_name": image.file_name, "height": height, "width": width}
        )
        for ann in gt.annotations[gt_image["id"]]:
            category = gt_class[ann["category_id"]]
            if category is not None:
                ann_id = len(gt_anns) + 1
                gt_anns.append(_gt_annotation(ann, category, image_id, ann_id, (height, width)))
        predictions += instances_of(image).to_coco(image_id, first_id=len(predictions) + 1)
    metrics = _coco_ap(
        gt_images, gt_anns, predictions, names, sorted(set(gt_class.values()) - {None})
    )
    paired_run = {image.file_name for image, _ in pairs}
    paired_gt = {gt_image["file_name"] for _, gt_image in pairs}
    return InstanceReport(
        metrics=metrics,
        missing_gt=sorted(i.file_name for i in run.images if i.file_name not in paired_run),
        missing_pred=sorted(
            str(i["file_name"]) for i in gt.images if i["file_name"] not in paired_gt
        ),
        unmatched_classes=unmatched,
    )


def _pair_images(run_images: list, gt_images: list[dict[str, Any]]) -> list[tuple[Any, dict]]:
    """(run image, ground-truth image) pairs, as pair_file_names matches them."""
    pairs = pair_file_names([image.file_name for image in run_images], gt_images)
    return [(run_images[index], gt_image) for index, gt_image in pairs]


def pair_file_names(
    file_names: list[str], gt_images: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    """(index into file_names, ground-truth COCO image) pairs: the same relative path, else a
    base name unique to one image on each side. Shared by `eval --gt-coco` and `tune --gt-coco`."""
    by_path = {str(g["file_name"]): g for g in gt_images}
    by_base: dict[str, list[dict]] = {}
    for g in gt_images:
        by_base.setdefault(Path(str(g["file_name"])).name, []).append(g)
    bases: dict[str, int] = {}
    for name in file_names:
        base = Path(name).name
        bases[base] = bases.get(base, 0) + 1
    pairs = []
    for index, name in enumerate(file_names):
        match = by_path.get(name)
        base = Path(name).name
        if match is None and bases[base] == 1 and len(by_base.get(base, [])) == 1:
            match = by_base[base][0]
        if match is not None:
            pairs.append((index, match))
    return pairs


def match_categories(categories: list[dict[str, Any]], names: list[str]) -> dict[Any, int | None]:
    """Ground-truth category id -> 1-based vocabulary class with the same name, or None."""
    class_ids = {name: i + 1 for i, name in enumerate(names)}
    return {c["id"]: class_ids.get(str(c["name"])) for c in categories}


def _gt_annotation(
    ann: dict[str, Any], category: int, image_id: int, ann_id: int, size: tuple[int, int]
) -> dict[str, Any]:
    """A ground-truth annotation in the run's ids, its mask as RLE (polygons rasterised)."""
    from pycocotools import mask as mask_utils

    rle = annotation_rle(ann, size)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": int(ann.get("iscrowd", 0)),
    }


def annotation_rle(ann: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """A COCO annotation's mask as pycocotools RLE (bytes counts): polygons rasterised,
    uncompressed RLE compressed; UsageError for an annotation without a segmentation."""
    from pycocotools import mask as mask_utils

    height, width = size
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    if isinstance(seg, dict):
        return {"size": seg["size"], "counts": str(seg["counts"]).encode("ascii")}
    raise UsageError(f"ground-truth annotation {ann.get('id')!r} has no segmentation")


def _coco_ap(
    images: list[dict],
    gt_anns: list[dict],
    predictions: list[dict],
    names: list[str],
    class_ids: list[int],
) -> dict[str, Any]:
    """pycocotools' segm evaluation over the paired images and the classes both sides name."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt = gt.loadRes(predictions) if predictions else COCO()
        if not predictions:
            dt.dataset = {"images": images, "annotations": [], "categories": categories}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.params.catIds = class_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [IoU thresholds, recall points, classes, area ranges, max detections]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = []
    gt_counts = {c: 0 for c in class_ids}
    for ann in gt_anns:
        gt_counts[ann["category_id"]] += 1
    for k, class_id in enumerate(class_ids):
        values = precision[:, :, k]
        values = values[values > -1]
        ap = _num(values.mean()) if values.size else None
        per_class.append(
            {"id": class_id, "name": names[class_id - 1], "gt": gt_counts[class_id], "ap": ap}
        )
    stats = evaluator.stats
    return {
        "images": len(images),
        "ap": _num(stats[0]) if stats[0] >= 0 else None,
        "ap50": _num(stats[1]) if stats[1] >= 0 else None,
        "ap75": _num(stats[2]) if stats[2] >= 0 else None,
        "classes": per_class,
    }
