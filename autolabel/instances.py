"""Label maps become instances here, and only here: components, RLE, bbox, area, score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage


@dataclass
class Instance:
    """One connected region of one class, in the upright original image's pixel grid."""

    category_id: int  # 1..K, vocabulary order
    rle: dict  # compressed COCO RLE: {"size": [h, w], "counts": str}
    area: int
    bbox: list[float]  # [x, y, w, h]
    score: float  # mean class probability inside the region, in [0, 1]

    def mask(self) -> np.ndarray:
        """Decode to an H x W bool array."""
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
    def from_dict(cls, data: dict) -> Instance:
        """Inverse of to_dict; also accepts a COCO annotation."""
        return cls(
            int(data["category_id"]),
            data["segmentation"],
            int(data["area"]),
            [float(v) for v in data["bbox"]],
            float(data.get("score", 1.0)),
        )


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
) -> list[Instance]:
    """Split a label map into per-class connected components at the output size.

    labels: h x w ints (0 = background, k = class k), at the segmenter's working size.
    probs: (K+1) x h x w class probabilities at the same size, or None (scores are then 1).
    out_size: (H, W) of the upright original image; components are upsampled to it by nearest
    neighbour, so their union is exactly the resized label map written as the semantic PNG.
    min_area is counted in output pixels.
    """
    h, w = labels.shape
    big_h, big_w = out_size
    # Output pixel -> source pixel (nearest, pixel centres), as resize_labels does.
    src_rows = np.minimum(((np.arange(big_h) + 0.5) * h / big_h).astype(int), h - 1)
    src_cols = np.minimum(((np.arange(big_w) + 0.5) * w / big_w).astype(int), w - 1)
    instances: list[Instance] = []
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
            bbox = [float(v) for v in mask_utils.toBbox(_bytes_rle(rle))]
            instances.append(Instance(int(cls), rle, area, bbox, min(max(score, 0.0), 1.0)))
    return instances


def _bytes_rle(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def semantic_from_instances(instances: list[Instance], size: tuple[int, int]) -> np.ndarray:
    """Paint instances into an H x W uint16 label map (later instances win on overlap)."""
    labels = np.zeros(size, dtype=np.uint16)
    for inst in instances:
        labels[inst.mask()] = inst.category_id
    return labels
