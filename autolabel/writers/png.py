"""Semantic label PNGs and preview overlays, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from autolabel.instances import Instance
from autolabel.writers.atomic import atomic_write_bytes


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Save a label map as 8-bit PNG (16-bit when there are more than 255 classes)."""
    top = int(labels.max()) if labels.size else 0
    array = labels.astype(np.uint8 if top < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def read_label_png(path: Path) -> np.ndarray:
    """Load a label PNG as an integer array (palette indices are taken as labels)."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (the PASCAL VOC bit-interleaving scheme), index 0 black."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch a pixel outside it."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def write_preview(
    path: Path, rgb: np.ndarray, instances: list[Instance], names: list[str], max_side: int = 1024
) -> None:
    """Overlay instance masks, outlines and class names on the image; save as JPEG."""
    from PIL import ImageDraw

    from autolabel.resize import fit_max_side

    colours = palette(len(names) + 1)
    out = rgb.astype(np.float32).copy()
    edges = np.zeros(rgb.shape[:2], dtype=bool)
    for inst in instances:
        mask = inst.mask()
        out[mask] = 0.45 * out[mask] + 0.55 * colours[inst.category_id]
        edges |= mask_outline(mask)
    out[edges] = 255.0
    image = Image.fromarray(fit_max_side(out.astype(np.uint8), max_side))
    scale = image.width / rgb.shape[1]
    draw = ImageDraw.Draw(image)
    # Only instances big enough to read get a caption; tiny specks would bury the image in text.
    min_captioned = 0.002 * rgb.shape[0] * rgb.shape[1]
    for inst in sorted(instances, key=lambda i: -i.area):
        if inst.area < min_captioned:
            continue
        x, y = inst.bbox[0] * scale, inst.bbox[1] * scale
        label = f"{names[inst.category_id - 1]} {inst.score:.2f}"
        colour = tuple(int(v) for v in colours[inst.category_id])
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.rectangle([x, y, x + 6 * len(label) + 4, y + 11], fill=colour)
        draw.text((x + 2, y), label, fill=ink)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    atomic_write_bytes(path, buffer.getvalue())
