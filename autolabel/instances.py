"""Label maps become instances here, and only here; `Instances` is what every writer and sink takes.

One image's result travels as an `Instances` container (image size, class names, items) from the
pipeline to the COCO writer, the PNG writer, Label Studio and FiftyOne, as `supervision.Detections`
does in its library: converters live at the edges (to_coco, from_coco, label_map).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

if TYPE_CHECKING:
    from autolabel.refine.sam import SamObject


@dataclass
class Instance:
    """One object of one class, in the upright original image's pixel grid: a matched SAM mask
    (refine sam) or a connected region of the label map."""

    category_id: int  # 1..K, vocabulary order
    rle: dict  # compressed COCO RLE: {"size": [h, w], "counts": str}
    area: int
    bbox: list[float]  # [x, y, w, h]
    # Mean class probability inside the region, in [0, 1]; times SAM's predicted IoU for a SAM
    # object.
    score: float
    name: str = ""  # the class's display name, when the instance belongs to an Instances

    @cached_property
    def mask(self) -> np.ndarray:
        """The region as an H x W bool array (decoded once)."""
        return decode_rle(self.rle)

    def to_dict(self) -> dict:
        """Plain data (the COCO annotation fields, without ids)."""
        return {
            "category_id": self.category_id,
            "segmentation": self.rle,
            "area": self.area,
            "bbox": self.bbox,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: dict, name: str = "") -> Instance:
        """Inverse of to_dict; also accepts a COCO annotation."""
        return cls(
            int(data["category_id"]),
            data["segmentation"],
            int(data["area"]),
            [float(v) for v in data["bbox"]],
            float(data.get("score", 1.0)),
            name,
        )

    @classmethod
    def from_mask(cls, category_id: int, mask: np.ndarray, score: float = 1.0) -> Instance:
        """An instance from an H x W bool mask (RLE, area and bbox computed here)."""
        rle = encode_rle(mask)
        return cls(int(category_id), rle, int(mask.sum()), rle_bbox(rle), float(score))


@dataclass
class Instances:
    """One image's labelling: its size, the vocabulary's class names and the instances.

    Category id k names `names[k - 1]`; iterating yields the instances; `label_map` is the
    semantic map (0 = background) that the PNG writer stores and the CLI's run writes.
    """

    size: tuple[int, int]  # (height, width) of the upright image
    names: list[str]
    items: list[Instance] = field(default_factory=list)
    scores: np.ndarray | None = None  # (K,) image-level presence per class, when the method has it
    # How likely this labelling needs correction, in [0, 1] (autolabel.review), when computed.
    priority: float | None = None

    def __post_init__(self) -> None:
        for inst in self.items:
            if not 1 <= inst.category_id <= len(self.names):
                raise ValueError(f"category id {inst.category_id} outside 1..{len(self.names)}")
            inst.name = self.names[inst.category_id - 1]

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Instance:
        return self.items[index]

    @property
    def label_map(self) -> np.ndarray:
        """H x W class ids, 0 = background (uint8 up to 255 classes, else uint16)."""
        labels = semantic_from_instances(self.items, self.size)
        return labels.astype(np.uint8) if len(self.names) < 256 else labels

    def to_coco(self, image_id: int, first_id: int = 1) -> list[dict[str, Any]]:
        """COCO annotation dicts (ids from first_id), exactly as `autolabel run` writes them."""
        return [
            coco_annotation(inst.to_dict(), first_id + i, image_id)
            for i, inst in enumerate(self.items)
        ]

    @classmethod
    def from_label_map(
        cls,
        labels: np.ndarray,
        names: Sequence[str],
        size: tuple[int, int] | None = None,
        probs: np.ndarray | None = None,
        min_area: int = 0,
        scores: np.ndarray | None = None,
        objects: Sequence[SamObject] = (),
    ) -> Instances:
        """Split a label map (at any working size) into instances at `size`: one per SAM object,
        then connected components of what no object covers."""
        out_size = tuple(labels.shape) if size is None else size
        items = instances_from_labels(labels, probs, out_size, min_area, objects)
        return cls(out_size, list(names), items, scores)

    @classmethod
    def from_coco(
        cls, annotations: Sequence[dict], size: tuple[int, int], names: Sequence[str]
    ) -> Instances:
        """The instances of one image from its COCO annotations (RLE or polygons)."""
        items = []
        for ann in annotations:
            seg = ann["segmentation"]
            if not isinstance(seg, dict):  # polygons: rasterise once into RLE
                seg = _polygons_rle(seg, size)
            items.append(Instance.from_dict({**ann, "segmentation": seg}))
        return cls(tuple(size), list(names), items)

    def to_supervision(self) -> Any:
        """These instances as `supervision.Detections`, in supervision's conventions.

        xyxy: float32 [x_min, y_min, x_max, y_max] with the max on the far edge of the last
        pixel (COCO's x + w: supervision's "exclusive" convention, as its COCO loader makes).
        mask: N x H x W bool. class_id: 0-based index into `names` (category_id - 1), as
        supervision's datasets number classes. confidence: the scores (float32).
        data["class_name"]: each detection's class name.
        """
        import supervision as sv
        from supervision.config import CLASS_NAME_DATA_FIELD

        n = len(self.items)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (inst.bbox for inst in self.items)]
        masks = [inst.mask for inst in self.items]
        return sv.Detections(
            xyxy=np.array(boxes, dtype=np.float32).reshape(n, 4),
            mask=np.stack(masks) if masks else np.zeros((0, *self.size), dtype=bool),
            confidence=np.array([inst.score for inst in self.items], dtype=np.float32),
            class_id=np.array([inst.category_id - 1 for inst in self.items], dtype=int),
            data={CLASS_NAME_DATA_FIELD: np.array([inst.name for inst in self.items], dtype=str)},
        )

    @classmethod
    def from_supervision(
        cls, detections: Any, names: Sequence[str], size: tuple[int, int] | None = None
    ) -> Instances:
        """Instances from `supervision.Detections` with masks (the inverse of to_supervision).

        class_id is the 0-based index into `names`; without class_id, data["class_name"] is
        looked up in `names`; with both, they must agree. confidence becomes the score (1.0
        when absent). size (height, width) defaults to the masks' size. Boxes come from the
        masks (xyxy is not read); masks may be dense or a CompactMask. Empty masks are dropped;
        overlapping masks stay separate instances (label_map paints later ones on top).
        """
        from supervision.config import CLASS_NAME_DATA_FIELD

        names = list(names)
        n = len(detections)
        masks = detections.mask
        if masks is None:
            if n == 0 and size is not None:
                return cls(tuple(size), names, [])
            raise ValueError("from_supervision needs detections with masks (mask is None)")
        mask_size = tuple(int(v) for v in masks.shape[1:])
        if size is not None and tuple(size) != mask_size:
            raise ValueError(f"size {tuple(size)} is not the masks' size {mask_size}")
        class_names = detections.data.get(CLASS_NAME_DATA_FIELD)
        if detections.class_id is not None:
            ids = [int(k) for k in detections.class_id]
            bad = [k for k in ids if not 0 <= k < len(names)]
            if bad:
                raise ValueError(f"class_id {bad[0]} outside 0..{len(names) - 1} (0-based)")
            if class_names is not None:
                for k, name in zip(ids, class_names, strict=True):
                    if names[k] != str(name):
                        raise ValueError(
                            f"class_id {k} is {names[k]!r} in names but data['class_name'] "
                            f"says {str(name)!r}"
                        )
        elif class_names is not None:
            unknown = sorted({str(c) for c in class_names} - set(names))
            if unknown:
                raise ValueError(f"class names {unknown} are not in names {names}")
            ids = [names.index(str(c)) for c in class_names]
        else:
            raise ValueError("detections have neither class_id nor data['class_name']")
        scores = detections.confidence
        items = []
        for i, k in enumerate(ids):
            mask = np.asarray(masks[i], dtype=bool)
            if mask.any():
                score = 1.0 if scores is None else float(scores[i])
                items.append(Instance.from_mask(k + 1, mask, score))
        return cls(mask_size, names, items)


def coco_annotation(instance: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """A COCO annotation from an instance's to_dict(): the one place the fields are laid out."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": instance["category_id"],
        "segmentation": instance["segmentation"],
        "area": instance["area"],
        "bbox": instance["bbox"],
        "iscrowd": 0,
        "score": round(float(instance["score"]), 6),
    }


def encode_rle(mask: np.ndarray) -> dict:
    """Boolean H x W mask to compressed COCO RLE with a str `counts` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Compressed (or uncompressed) COCO RLE to an H x W bool mask."""
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def instances_from_labels(
    labels: np.ndarray,
    probs: np.ndarray | None,
    out_size: tuple[int, int],
    min_area: int = 0,
    objects: Sequence[SamObject] = (),
) -> list[Instance]:
    """Split a label map into instances at the output size: each SAM object (its pixels of its
    class), then per-class connected components of the pixels no object covers.

    labels: h x w ints (0 = background, k = class k), at the segmenter's working size.
    probs: (K+1) x h x w class probabilities at the same size, or None (scores are then 1).
    objects: matched SAM masks at the same size (autolabel.refine.sam); an object's score is the
    mean class probability inside it times SAM's predicted IoU.
    out_size: (H, W) of the upright original image; regions are upsampled to it by nearest
    neighbour, so their union is exactly the resized label map written as the semantic PNG.
    min_area is counted in output pixels.
    """
    h, w = labels.shape
    big_h, big_w = out_size
    # Output pixel -> source pixel (nearest, pixel centres), as resize_labels does.
    src_rows = np.minimum(((np.arange(big_h) + 0.5) * h / big_h).astype(int), h - 1)
    src_cols = np.minimum(((np.arange(big_w) + 0.5) * w / big_w).astype(int), w - 1)
    instances: list[Instance] = []
    if objects:
        labels = labels.copy()
    for obj in objects:
        region = obj.mask & (labels == obj.class_id)
        full = region[src_rows[:, None], src_cols[None, :]]
        area = int(full.sum())
        labels[region] = 0  # what an object holds is not split into components again
        if area == 0 or area < min_area:
            continue
        prob = 1.0 if probs is None else float(probs[obj.class_id][region].mean())
        score = min(max(prob, 0.0), 1.0) * min(max(obj.predicted_iou, 0.0), 1.0)
        instances.append(Instance.from_mask(obj.class_id, full, score))
    # 8-connectivity: thin diagonal parts of one object stay one instance.
    structure = np.ones((3, 3), dtype=bool)
    for cls in np.unique(labels):
        if cls == 0:
            continue
        components, _ = ndimage.label(labels == cls, structure=structure)
        # Work inside each component's bounding box: cost follows the component, not the image.
        for index, box in enumerate(ndimage.find_objects(components), 1):
            region = components[box] == index
            r0, r1 = np.searchsorted(src_rows, [box[0].start, box[0].stop])
            c0, c1 = np.searchsorted(src_cols, [box[1].start, box[1].stop])
            rows = src_rows[r0:r1, None] - box[0].start
            crop = region[rows, src_cols[None, c0:c1] - box[1].start]
            area = int(crop.sum())
            if area == 0 or area < min_area:
                continue
            full = np.zeros(out_size, dtype=bool)
            full[r0:r1, c0:c1] = crop
            score = 1.0 if probs is None else float(probs[cls][box][region].mean())
            rle = encode_rle(full)
            instances.append(
                Instance(int(cls), rle, area, rle_bbox(rle), min(max(score, 0.0), 1.0))
            )
    return instances


def rle_bbox(rle: dict) -> list[float]:
    """[x, y, w, h] of a compressed RLE with a str `counts`."""
    raw = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(raw)]


def _polygons_rle(polygons: list, size: tuple[int, int]) -> dict:
    merged = mask_utils.merge(mask_utils.frPyObjects(polygons, *size))
    return {"size": list(size), "counts": merged["counts"].decode("ascii")}


def semantic_from_instances(instances: list[Instance], size: tuple[int, int]) -> np.ndarray:
    """Paint instances into an H x W uint16 label map (later instances win on overlap)."""
    labels = np.zeros(size, dtype=np.uint16)
    for inst in instances:
        labels[inst.mask] = inst.category_id
    return labels


def class_ious(reference: np.ndarray, other: np.ndarray) -> dict[int, float]:
    """IoU per class id present in either label map (0 = background is skipped)."""
    ious: dict[int, float] = {}
    for cls in np.union1d(np.unique(reference), np.unique(other)):
        if cls == 0:
            continue
        a, b = reference == cls, other == cls
        ious[int(cls)] = float((a & b).sum() / (a | b).sum())
    return ious
