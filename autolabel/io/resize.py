"""Resizing helpers shared by the runner, the methods and the writers."""

from __future__ import annotations

import numpy as np
from PIL import Image


def fit_max_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale so that the longer side is at most max_side (never upscale)."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb
    scale = max_side / float(max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer or bool map to (H, W)."""
    if labels.shape[:2] == tuple(size):
        return labels
    h, w = size
    # Pixel-centre sampling, identical to PIL NEAREST but dtype-agnostic.
    rows = np.minimum((np.arange(h) + 0.5) * labels.shape[0] / h, labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * labels.shape[1] / w, labels.shape[1] - 1).astype(int)
    return labels[rows[:, None], cols[None, :]]
