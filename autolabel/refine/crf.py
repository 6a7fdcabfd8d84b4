"""Dense CRF refinement (Krähenbühl & Koltun) shared by every method: a pure function."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Pairwise kernel settings; the defaults are CLIP-ES's (eval_cam_with_crf.py,
    github.com/linyq2117/CLIP-ES), which CaR's modeling/model/crf.py inherits."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine (C x H x W) class probabilities on an H x W x 3 uint8 image; returns the marginals.

    `probs` need not sum to one per pixel: unary_from_softmax takes -log of each channel, which is
    what the official CaR/CLIP-ES code feeds it.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    channels, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image is {image.shape[:2]} but probabilities are {(height, width)}")
    crf = dcrf.DenseCRF2D(width, height, channels)
    unary = unary_from_softmax(np.clip(probs, 1e-8, None).astype(np.float32))
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image.astype(np.uint8)),
        compat=params.bilateral_compat,
    )
    marginals = np.array(crf.inference(params.iterations), dtype=np.float32)
    return marginals.reshape(channels, height, width)
