"""Semantic label PNGs and preview overlays, written atomically; the one home of class colours."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autolabel.instances import Instance
from autolabel.io.atomic import atomic_write_bytes
from autolabel.io.resize import fit_max_side, resize_labels

# Distinct and readable over photos; beyond these, hues are spread evenly around the circle.
_CLASS_COLOURS = tuple(tuple(bytes.fromhex(h)) for h in (
    "e6194b", "3cb44b", "4363d8", "f58231", "911eb4", "42d4f4", "f032e6", "bfef45",
    "fabed4", "469990", "dcbeff", "9a6324", "fffac8", "800000", "aaffc3", "808000",
))  # fmt: skip

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, ends exclusive

_OUTLINE_PX = 2
_LABEL_PAD = 2


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class id (0 = background, black) in PNGs, previews and Label Studio."""
    if class_id == 0:
        return (0, 0, 0)
    if class_id <= len(_CLASS_COLOURS):
        return _CLASS_COLOURS[class_id - 1]
    r, g, b = colorsys.hsv_to_rgb(((class_id - 1) * 0.618034) % 1.0, 0.75, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def palette(n: int) -> np.ndarray:
    """The colours of class ids 0..n-1 as an n x 3 uint8 array."""
    return np.array([class_colour(i) for i in range(n)], dtype=np.uint8).reshape(n, 3)


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Save a label map whose pixel values are class ids: a palette PNG, 16-bit beyond id 255."""
    atomic_write_bytes(path, label_png_bytes(labels))


def label_png_bytes(labels: np.ndarray) -> bytes:
    """The PNG file of a label map, as write_label_png saves it."""
    top = int(labels.max()) if labels.size else 0
    if labels.size and (labels.min() < 0 or top > 65535):
        raise ValueError(f"class ids must lie in 0..65535, got {labels.min()}..{top}")
    if top < 256:
        # The pixel value stays the class id; the palette only makes the classes visible.
        image = Image.fromarray(labels.astype(np.uint8))
        image.putpalette(palette(256).tobytes())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_label_png(path: Path) -> np.ndarray:
    """Load a label PNG as class ids: palette indices or grey values, as uint8 or uint16."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1") and not im.mode.startswith("I"):
            raise ValueError(f"{path}: a {im.mode} PNG holds colours, not class ids")
        array = np.asarray(im)
    if array.dtype.itemsize == 1:
        return array.astype(np.uint8)
    # 16-bit PNGs open as I;16 or, in older Pillow, as 32-bit I; both hold 0..65535.
    return array.astype(np.uint16)


def place_labels(
    anchors: Sequence[Box], sizes: Sequence[tuple[int, int]], bounds: tuple[int, int]
) -> list[Box]:
    """Greedy label boxes: each near its anchor box, inside bounds (w, h), clear of earlier ones.

    A label goes above its anchor, else below it, else at the first free spot further down the
    same columns (wrapping to the top); it overlaps others only when those columns are full.
    """
    width, height = bounds
    placed: list[Box] = []
    for (ax0, ay0, _, ay1), (w, h) in zip(anchors, sizes, strict=True):
        w, h = min(w, width), min(h, height)
        x = min(max(ax0, 0), width - w)
        above = min(max(ay0 - h, 0), height - h)
        below = min(max(ay1, 0), height - h)
        ys = np.array([above, below, *range(above + 1, height - h + 1), *range(above)])
        taken = np.array(placed, dtype=int).reshape(-1, 4)
        clash = (
            (x < taken[:, 2])
            & (taken[:, 0] < x + w)
            & (ys[:, None] < taken[:, 3])
            & (taken[:, 1] < ys[:, None] + h)
        )
        free = ~clash.any(axis=1)
        y = int(ys[free.argmax()]) if free.any() else above
        placed.append((x, y, x + w, y + h))
    return placed


def write_preview(
    path: Path,
    rgb: np.ndarray,
    instances: Iterable[Instance],
    names: list[str],
    max_side: int = 1024,
) -> None:
    """Outline each instance in its class colour and caption it with its class; save as JPEG."""
    atomic_write_bytes(path, preview_bytes(rgb, instances, names, max_side))


def preview_bytes(
    rgb: np.ndarray, instances: Iterable[Instance], names: list[str], max_side: int = 1024
) -> bytes:
    """The preview JPEG that write_preview saves."""
    canvas = fit_max_side(rgb, max_side).copy()
    scale = canvas.shape[1] / rgb.shape[1]
    # Only instances big enough to read get a caption; tiny specks would bury the image in text.
    min_captioned = 0.002 * rgb.shape[0] * rgb.shape[1]
    captioned: list[tuple[int, Instance]] = []
    for inst in instances:
        mask = _mask(inst)
        small = resize_labels(mask, canvas.shape[:2]).astype(np.uint8)
        contours, _ = cv2.findContours(small, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        # Outlines rather than a tinted fill: the object keeps its own colours.
        cv2.drawContours(canvas, contours, -1, class_colour(inst.category_id), _OUTLINE_PX)
        area = int(mask.sum())
        if area >= min_captioned:
            captioned.append((area, inst))
    captioned.sort(key=lambda pair: -pair[0])
    image = Image.fromarray(canvas)
    _draw_captions(image, [inst for _, inst in captioned], names, scale)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _draw_captions(
    image: Image.Image, instances: list[Instance], names: list[str], scale: float
) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    texts = [f"{names[inst.category_id - 1]} {inst.score:.2f}" for inst in instances]
    extents = [draw.textbbox((0, 0), text, font=font) for text in texts]
    sizes = [(r - left + 2 * _LABEL_PAD, b - t + 2 * _LABEL_PAD) for left, t, r, b in extents]
    anchors = []
    for inst in instances:
        x, y, w, h = (v * scale for v in inst.bbox)
        anchors.append((int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))))
    boxes = place_labels(anchors, sizes, image.size)
    for inst, text, extent, box in zip(instances, texts, extents, boxes, strict=True):
        colour = class_colour(inst.category_id)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
        origin = (box[0] + _LABEL_PAD - extent[0], box[1] + _LABEL_PAD - extent[1])
        draw.text(origin, text, fill=ink, font=font)


def _mask(inst: Any) -> np.ndarray:
    """The instance's H x W bool mask, whether `mask` is a method or a property."""
    mask = inst.mask
    return mask() if callable(mask) else mask
