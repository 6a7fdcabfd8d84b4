"""Instances to Label Studio brush regions and predictions, and LS regions back to masks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image, ImageDraw

from autolabel.errors import UsageError
from autolabel.instances import Instances
from autolabel.sinks.labelstudio.config import LabelTarget

# LS paints brush strokes into the alpha channel; anti-aliased edges count when at least half on.
ALPHA_ON = 128


def brush_region(
    mask: np.ndarray, label: str, target: LabelTarget, score: float, region_id: str
) -> dict:
    """One brush region: LS's bit-packed RLE of the 0/255 mask (row-major H x W), label set."""
    height, width = mask.shape
    return {
        "id": region_id,
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(score), 6),
        "readonly": False,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label],
        },
    }


def make_prediction(instances: Instances, target: LabelTarget, model_version: str) -> dict:
    """A prediction with one brush region per instance, labelled with the container's names.

    The names must be the project's labels (see match_vocabulary). The prediction's score, which
    the Data Manager shows and sorts as "Prediction score", is 1 - the review priority
    (autolabel.review) when the instances carry one: ascending order is review order, and an ML
    backend, which cannot write task data, exposes the priority this way too. Without a
    priority it is the mean region score.
    """
    names = instances.names
    masks = [(names[inst.category_id - 1], inst.mask, inst.score) for inst in instances]
    prediction = masks_prediction(masks, target, model_version)
    if instances.priority is not None:
        prediction["score"] = round(1.0 - instances.priority, 6)
    return prediction


def masks_prediction(
    masks: Sequence[tuple[str, np.ndarray, float]], target: LabelTarget, model_version: str
) -> dict:
    """A prediction with one brush region per (label, H x W bool mask, score); the task score
    is the mean region score (0 without regions)."""
    result = [
        brush_region(mask, label, target, score, f"al{i}")
        for i, (label, mask, score) in enumerate(masks)
    ]
    score = float(np.mean([s for _, _, s in masks])) if masks else 0.0
    return {"model_version": model_version, "score": round(score, 6), "result": result}


@dataclass(frozen=True)
class Interaction:
    """One region of an interactive request's context (what the annotator drew or typed).

    kind: "point" (KeyPointLabels), "box" (RectangleLabels) or "text" (TextArea).
    label: the label chosen on the point or box, as sent ("" when none or for text).
    positive: False for a negative click (alt-click in LS), which removes what it hits.
    text: the typed text (TextArea submissions joined by commas).
    value: the region's value, coordinates in percent of the image.
    from_name: the control it was made with.
    """

    kind: str
    label: str = ""
    positive: bool = True
    text: str = ""
    value: dict = field(default_factory=dict, compare=False)
    from_name: str = field(default="", compare=False)


CONTEXT_KINDS = {"keypointlabels": "point", "rectanglelabels": "box", "textarea": "text"}


def parse_context(context: object) -> list[Interaction]:
    """The interactions in an interactive request's `context` ({"result": [regions]}).

    None or a context without regions gives []; region types other than keypoints, rectangles
    and text are ignored; a malformed region is a UsageError.
    """
    if context is None:
        return []
    if not isinstance(context, dict):
        raise UsageError("the interactive context must be an object with a 'result' list")
    regions = context.get("result")
    if regions is None:
        return []
    if not isinstance(regions, list):
        raise UsageError("the interactive context's 'result' must be a list of regions")
    found = []
    for index, region in enumerate(regions):
        where = f"context region {index}"
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise UsageError(f"{where}: not a region with a 'value'")
        kind_name = str(region.get("type", "")).lower()
        kind = CONTEXT_KINDS.get(kind_name)
        if kind is None:
            continue
        value = region["value"]
        source = str(region.get("from_name") or "")
        if kind == "text":
            texts = value.get("text") or []
            texts = [texts] if isinstance(texts, str) else texts
            if not all(isinstance(t, str) for t in texts):
                raise UsageError(f"{where}: 'text' must be a list of strings")
            text = ", ".join(t for t in texts if t.strip())
            if text:
                found.append(Interaction("text", text=text, value=value, from_name=source))
            continue
        keys = ("x", "y") if kind == "point" else ("x", "y", "width", "height")
        for key in keys:
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise UsageError(f"{where}: {kind_name} value needs a number {key!r}")
            if not math.isfinite(number):
                raise UsageError(f"{where}: {key!r} is not finite")
        labels = value.get(kind_name) or []
        label = labels[0] if isinstance(labels, list) and labels else ""
        positive = region.get("is_positive", True) not in (False, 0, "false", "0")
        found.append(Interaction(kind, str(label), positive, value=value, from_name=source))
    return found


def point_pixel(value: dict, height: int, width: int) -> tuple[int, int]:
    """(row, column) of an LS keypoint (x, y in percent of the image), clamped to the image."""
    col = int(math.floor(float(value["x"]) * width / 100.0))
    row = int(math.floor(float(value["y"]) * height / 100.0))
    return min(max(row, 0), height - 1), min(max(col, 0), width - 1)


def rectangle_mask(value: dict, height: int, width: int) -> np.ndarray:
    """Rasterise an LS rectangle (x, y, width, height in percent; `rotation` in degrees
    clockwise about its top-left corner) to an H x W bool mask of the pixels it covers."""
    x0, y0 = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
    w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
    angle = math.radians(float(value.get("rotation") or 0.0))
    if angle == 0.0:
        mask = np.zeros((height, width), dtype=bool)
        # A pixel belongs to the box when its centre lies inside.
        rows = slice(max(0, math.ceil(y0 - 0.5)), max(0, math.ceil(y0 + h - 0.5)))
        cols = slice(max(0, math.ceil(x0 - 0.5)), max(0, math.ceil(x0 + w - 0.5)))
        mask[rows, cols] = True
        return mask
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    points = [(x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos) for dx, dy in corners]
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def check_prediction(interface: LabelInterface, prediction: dict, where: str) -> None:
    """Refuse a prediction the project's config would not accept (LS would show nothing)."""
    errors = interface.validate_prediction(prediction, return_errors=True)
    if errors:
        raise UsageError(
            f"{where}: prediction rejected by the labeling config: {'; '.join(errors)}"
        )


def region_mask(region: dict) -> tuple[str, np.ndarray] | None:
    """(label, H x W bool mask) of a brush or polygon region; None for other region types."""
    kind = str(region.get("type", "")).lower()
    value = region.get("value") or {}
    labels = value.get(kind) or []
    if kind not in ("brushlabels", "polygonlabels") or not labels:
        return None
    height, width = int(region["original_height"]), int(region["original_width"])
    if kind == "brushlabels":
        flat = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
        if flat.size != height * width * 4:
            raise ValueError(
                f"brush region {region.get('id')}: RLE holds {flat.size} values, "
                f"expected {height}x{width}x4"
            )
        mask = flat.reshape(height, width, 4)[:, :, 3] >= ALPHA_ON
    else:
        mask = polygon_mask(value.get("points") or [], height, width)
    return labels[0], mask


def polygon_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise LS polygon points (percent of width and height) to an H x W bool mask."""
    canvas = Image.new("L", (width, height), 0)
    if len(points) >= 3:
        xy = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in points]
        ImageDraw.Draw(canvas).polygon(xy, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
