"""Instances to Label Studio brush regions and predictions, and LS regions back to masks."""

from __future__ import annotations

from collections.abc import Sequence

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

    The names must be the project's labels (see match_vocabulary). The task score is the mean
    region score (0 without regions), so LS can sort tasks by it.
    """
    names = instances.names
    result = [
        brush_region(inst.mask, names[inst.category_id - 1], target, inst.score, f"al{i}")
        for i, inst in enumerate(instances)
    ]
    score = float(np.mean([inst.score for inst in instances])) if len(instances) else 0.0
    return {"model_version": model_version, "score": round(score, 6), "result": result}


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
