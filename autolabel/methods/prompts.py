"""CaR's visual prompts: mark a mask proposal on the image so that CLIP judges that region.

The official code (CaR, Sun et al., CVPR 2024, arXiv:2312.07661; github.com/google-research/
google-research clip_as_rnn/modeling/model/utils.py `apply_visual_prompts`, the same code as the
paper's Algorithm B in App. C) draws with OpenCV on the RGB array in a fixed order whatever
order the recipe lists them in: blur, gray, black, circle, rectangle, contour (the kinds a
recipe may list: autolabel.methods.settings.PromptKind). We draw with the same OpenCV calls so
prompted images are pixel-identical to the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

PROMPT_COLOR = (255, 0, 0)  # red in RGB
BLUR_KERNEL = (15, 15)  # sigma 0: OpenCV derives 2.6 from the kernel size


def mask_geometry(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(centre_y, centre_x, height, width): pixel centroid (truncated) and bounding-box size."""
    rows, cols = np.nonzero(mask)
    return (
        int(np.mean(rows)),
        int(np.mean(cols)),
        int(rows.max() - rows.min() + 1),
        int(cols.max() - cols.min() + 1),
    )


def render_prompts(
    image: np.ndarray, mask: np.ndarray, kinds: Sequence[str], thickness: int = 1
) -> np.ndarray:
    """Apply the visual prompts around a boolean mask on an H x W x 3 uint8 RGB image."""
    out = image.copy()
    inside = mask.astype(bool)[..., None]
    if "blur" in kinds:
        out = np.where(inside, out, cv2.GaussianBlur(out, BLUR_KERNEL, 0))
    if "gray" in kinds:
        # The official code converts its RGB array with BGR weights; kept for identical pixels.
        gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        out = np.where(inside, out, gray[..., None])
    if "black" in kinds:
        out = np.where(inside, out, 0).astype(np.uint8)
    out = np.ascontiguousarray(out)
    # An empty mask has no centre (the official code raises there); only its region prompts apply.
    if ("circle" in kinds or "rectangle" in kinds) and mask.any():
        cy, cx, height, width = mask_geometry(mask)
        if "circle" in kinds:
            axes = (width // 2, height // 2)
            cv2.ellipse(out, (cx, cy), axes, 0, 0, 360, PROMPT_COLOR, thickness)
        if "rectangle" in kinds:
            start = (cx - width // 2, cy - height // 2)
            end = (cx + width // 2, cy + height // 2)
            cv2.rectangle(out, start, end, PROMPT_COLOR, thickness)
    if "contour" in kinds:
        filled = binary_fill_holes(mask).astype(np.uint8)
        contours = cv2.findContours(filled, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        cv2.drawContours(out, contours, -1, PROMPT_COLOR, thickness)
    return out


def visual_prompt(
    image: np.ndarray, proposal: np.ndarray, threshold: float, kinds: Sequence[str]
) -> np.ndarray:
    """The image the classifier sees for one proposal (H x W map in [0, 1] at image size).

    As in the official code, a proposal whose values sum to at most 1 leaves the image
    unprompted, and the mask is the proposal above the threshold η.
    """
    if float(proposal.sum(dtype=np.float32)) <= 1:
        return image
    return render_prompts(image, proposal > threshold, kinds)
