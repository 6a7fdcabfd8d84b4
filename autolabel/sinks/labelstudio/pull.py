"""`autolabel pull labelstudio`: reviewed annotations back to COCO, and how much review changed.

For each reviewed task the final annotation (the newest one not cancelled) becomes COCO
annotations with RLE masks. It is compared with the prediction it started from, class by
class: the IoU of the predicted and the final masks, and whether it was accepted as is. That
is the number annotation teams ask for: how much work the pre-labels saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from autolabel.errors import UsageError
from autolabel.instances import Instance, class_ious
from autolabel.io.atomic import atomic_write_json
from autolabel.io.coco import write_coco
from autolabel.sinks.labelstudio.client import connect, get_project, list_tasks
from autolabel.sinks.labelstudio.push import META_KEY
from autolabel.sinks.labelstudio.regions import region_mask


@dataclass
class ImageReview:
    """How one image's final annotation compares with its prediction."""

    file: str
    task_id: int
    annotation_id: int
    model_version: str | None  # of the prediction compared against; None without one
    iou: dict[str, float]  # per class present in the prediction or the annotation
    accepted_as_is: bool
    regions_predicted: int
    regions_final: int


@dataclass
class PullSummary:
    """What a pull wrote and the review statistics."""

    project_id: int
    output: Path
    report: Path
    images: int = 0
    annotations: int = 0
    tasks_without_annotation: int = 0
    regions_skipped: int = 0  # regions of other types or with labels outside the categories
    reviews: list[ImageReview] = field(default_factory=list)

    @property
    def accepted_as_is(self) -> int:
        """Images whose final annotation equals the prediction, class by class."""
        return sum(r.accepted_as_is for r in self.reviews if r.model_version is not None)

    @property
    def compared(self) -> int:
        """Images that had a prediction to compare with."""
        return sum(r.model_version is not None for r in self.reviews)

    def mean_iou(self) -> dict[str, float]:
        """Per class, the mean IoU over the images where it was predicted or annotated."""
        values: dict[str, list[float]] = {}
        for review in self.reviews:
            if review.model_version is not None:
                for name, iou in review.iou.items():
                    values.setdefault(name, []).append(iou)
        return {name: round(float(np.mean(v)), 4) for name, v in values.items()}


def pull_project(
    url: str,
    api_key: str,
    project_id: int,
    output: Path,
    report: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> PullSummary:
    """Export a project's reviewed annotations to COCO at `output` and a review report."""
    report = report or output.with_name(output.stem + ".review.json")
    if output.resolve() == report.resolve():
        raise UsageError(f"--report {report}: must differ from the output file")
    client = connect(url, api_key)
    project = get_project(client, project_id)
    names = list(project.target.labels)
    category = {name: i + 1 for i, name in enumerate(names)}
    summary = PullSummary(project.id, output, report)
    records: list[dict[str, Any]] = []
    for count, task in enumerate(list_tasks(client, project.id, fields="all"), 1):
        record = review_task(task, category, summary)
        if record is not None:
            records.append(record)
        if progress is not None:
            progress(count)
    info = {"description": f"reviewed in Label Studio project {project.id}", "url": url}
    summary.images, summary.annotations = write_coco(output, names, lambda: iter(records), info)
    atomic_write_json(report, _report(summary, project.title))
    return summary


def review_task(
    task: dict, category: dict[str, int], summary: PullSummary
) -> dict[str, Any] | None:
    """The COCO record of a task's final annotation, and its review; None if not reviewed."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        summary.tasks_without_annotation += 1
        return None
    final = max(done, key=lambda a: (str(a.get("updated_at") or ""), int(a.get("id") or 0)))
    final_masks, skipped = _masks(final.get("result") or [], category)
    summary.regions_skipped += skipped
    meta = (task.get("data") or {}).get(META_KEY) or {}
    file_name = meta.get("file") or _file_from_data(task.get("data") or {})
    size = _size(meta, final.get("result") or [], task.get("predictions") or [])
    if size is None:
        summary.regions_skipped += len(final_masks)
        return None
    height, width = size
    instances = []
    for category_id, mask in final_masks:
        if mask.shape != (height, width) or not mask.any():
            summary.regions_skipped += 1
            continue
        instances.append(_annotation(category_id, mask))
    prediction = _compared_prediction(final, task.get("predictions") or [])
    names = {v: k for k, v in category.items()}
    if prediction is None:
        review = ImageReview(
            file_name, int(task["id"]), int(final["id"]), None, {}, False, 0, len(instances)
        )
    else:
        predicted, _ = _masks(prediction.get("result") or [], category)
        iou = _iou_per_class(predicted, final_masks, (height, width))
        review = ImageReview(
            file_name,
            int(task["id"]),
            int(final["id"]),
            str(prediction.get("model_version") or ""),
            {names[c]: round(v, 4) for c, v in sorted(iou.items())},
            all(v == 1.0 for v in iou.values()),
            len(predicted),
            len(instances),
        )
    summary.reviews.append(review)
    return {"file": file_name, "width": width, "height": height, "instances": instances}


def _masks(
    result: list[dict], category: dict[str, int]
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """(category id, mask) of every brush or polygon region whose label is a category, and
    how many regions were left out (other types, other labels, or unreadable)."""
    masks = []
    for region in result:
        try:
            decoded = region_mask(region)
        except (KeyError, TypeError, ValueError):
            continue
        if decoded is not None and decoded[0] in category:
            masks.append((category[decoded[0]], decoded[1]))
    return masks, len(result) - len(masks)


def _annotation(category_id: int, mask: np.ndarray) -> dict[str, Any]:
    """A COCO annotation (RLE, area, bbox) of a reviewed region; reviewed means score 1."""
    return Instance.from_mask(category_id, mask, 1.0).to_dict()


def _compared_prediction(annotation: dict, predictions: list[dict]) -> dict | None:
    """The prediction the annotation started from, else the newest prediction of the task."""
    parent = annotation.get("parent_prediction")
    for prediction in predictions:
        if parent is not None and prediction.get("id") == parent:
            return prediction
    if not predictions:
        return None
    return max(predictions, key=lambda p: (str(p.get("created_at") or ""), int(p.get("id") or 0)))


def _iou_per_class(
    predicted: list[tuple[int, np.ndarray]],
    final: list[tuple[int, np.ndarray]],
    size: tuple[int, int],
) -> dict[int, float]:
    """IoU of the union masks of each class with regions on either side.

    Regions of one class may overlap regions of another, so each class is compared on its own
    (as a 0/1 map); a class whose regions are empty on both sides is not reported.
    """
    ious = {}
    for cls in sorted({c for c, _ in predicted} | {c for c, _ in final}):
        iou = class_ious(_union(predicted, cls, size), _union(final, cls, size)).get(1)
        if iou is not None:
            ious[cls] = iou
    return ious


def _union(masks: list[tuple[int, np.ndarray]], cls: int, size: tuple[int, int]) -> np.ndarray:
    """The class's regions painted into one 0/1 map of the image's size."""
    out = np.zeros(size, dtype=np.uint8)
    for category_id, mask in masks:
        if category_id == cls and mask.shape == size:
            out[mask] = 1
    return out


def _size(meta: dict, result: list[dict], predictions: list[dict]) -> tuple[int, int] | None:
    """(height, width) of the task's image: from push's metadata, else from any region."""
    if meta.get("width") and meta.get("height"):
        return int(meta["height"]), int(meta["width"])
    regions = list(result) + [r for p in predictions for r in p.get("result") or []]
    for region in regions:
        if region.get("original_width") and region.get("original_height"):
            return int(region["original_height"]), int(region["original_width"])
    return None


def _file_from_data(data: dict) -> str:
    """A file name for a task autolabel did not create: the ?d= path or the URL's path."""
    for value in data.values():
        if isinstance(value, str) and value:
            parsed = urlparse(value)
            local = parse_qs(parsed.query).get("d")
            return local[-1] if local else unquote(parsed.path).lstrip("/") or value
    return ""


def _report(summary: PullSummary, title: str) -> dict[str, Any]:
    return {
        "project": {"id": summary.project_id, "title": title},
        "coco": str(summary.output),
        "summary": {
            "images_reviewed": len(summary.reviews),
            "images_with_prediction": summary.compared,
            "accepted_as_is": summary.accepted_as_is,
            "mean_iou_per_class": summary.mean_iou(),
            "tasks_without_annotation": summary.tasks_without_annotation,
            "regions_skipped": summary.regions_skipped,
        },
        "images": [asdict(review) for review in summary.reviews],
    }


def report_text(summary: PullSummary) -> str:
    """A short human-readable account of the pull, for the CLI."""
    lines = [
        f"{summary.images} reviewed images, {summary.annotations} annotations -> {summary.output}",
        f"accepted as is: {summary.accepted_as_is} of {summary.compared} pre-annotated images",
    ]
    for name, iou in summary.mean_iou().items():
        lines.append(f"  {name}: mean IoU prediction vs final {iou:.3f}")
    if summary.tasks_without_annotation:
        lines.append(f"{summary.tasks_without_annotation} tasks have no annotation yet (skipped)")
    if summary.regions_skipped:
        lines.append(f"{summary.regions_skipped} regions skipped (other types or labels)")
    lines.append(f"review report -> {summary.report}")
    return "\n".join(lines)
