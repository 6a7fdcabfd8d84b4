"""CaR's mask-proposal generator f: CLIP-ES Grad-CAM with class-aware attention affinity.

CaR paper (Sun et al., CVPR 2024, arXiv:2312.07661) §3.3, Eq. 7-8 and App. B; CaR code
(github.com/google-research/google-research clip_as_rnn/modeling/model/: clipcam.py `CLIPCAM`,
cam.py, clip_wrapper.py), which follows CLIP-ES (github.com/linyq2117/CLIP-ES).

An open_clip ViT runs at (near) full image resolution with its positional embedding
interpolated; blocks 1..L-1 form a text-independent trunk. For every foreground query the target
is its softmax probability over [foreground; background] texts, where the image vector is the
mean of the last block's patch tokens after ln_post and proj. The Grad-CAM layer is the last
block's first LayerNorm. Each CAM is refined with an affinity built from the attention maps of
the last 8 blocks (Sinkhorn-normalised, symmetrised, squared) restricted to the boxes around the
CAM above λ·max.

What is computed once here, and per step or per query in the CaR code (`CLIPCAM`): the trunk
and the affinity run once per image (not once per step); all queries' gradients come from one
batched vector-Jacobian product over a single forward of the last block; one matmul refines
every query.
The ViT surgery underneath (tokens at any patch grid, blocks that return their attention) lives
in autolabel.models.vit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from autolabel.models.precision import full_precision
from autolabel.models.vit import block_with_attention, embed_tokens, trunk_depth

AFFINITY_LAYERS = 8  # CLIP-ES averages the attention of the last 8 blocks
SINKHORN_ROUNDS = 3  # column- then row-normalisation, three times
# Bound on the per-chunk autograd workspace of the batched Grad-CAM (heads x n x n per query).
GRAD_CHUNK_BYTES = 512 * 2**20


@dataclass
class CamImage:
    """What f keeps about one image between recurrent steps (computed once per image)."""

    tokens: torch.Tensor  # (1, 1 + n, C) input of the Grad-CAM block
    attention: list[torch.Tensor]  # trunk attention maps (n+1 x n+1) among the last 8
    grid: tuple[int, int]  # patch grid (h, w)
    size: tuple[int, int]  # output (H, W): the image's own size
    affinity: torch.Tensor | None = None  # (n, n), set at the first Grad-CAM pass


def cam_pixels(
    image: np.ndarray,
    patch: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    max_side: int | None,
) -> torch.Tensor:
    """(1, 3, H', W') CAM input: PIL bicubic resize up to multiples of the patch size, normalised.

    max_side (optional) first bounds the longer side, because the affinity grows as n^2 and n^3.
    """
    h, w = image.shape[:2]
    scale = 1.0 if not max_side or max(h, w) <= max_side else max_side / max(h, w)
    size = [int(math.ceil(scale * h / patch) * patch), int(math.ceil(scale * w / patch) * patch)]
    resized = TF.resize(Image.fromarray(image), size, interpolation=InterpolationMode.BICUBIC)
    return TF.normalize(TF.to_tensor(resized), mean, std)[None]


@torch.no_grad()
def encode_cam_images(
    visual: torch.nn.Module, pixels: torch.Tensor, sizes: list[tuple[int, int]], parity: bool
) -> list[CamImage]:
    """Run the trunk once for a batch of same-size CAM inputs.

    In fp32 under any --precision (autolabel.models.precision): in bf16 the Grad-CAMs moved
    enough to change 0.6 % of the toy world's pixels (24 scenes of seed 4242: agreement with fp32
    99.40 %, mIoU -0.004; with the trunk in fp32: 99.99 %, mIoU equal). CaR's classifier g, the
    larger model with one pass per prompted image, runs in the chosen precision.
    """
    with full_precision(pixels.device):
        return _encode_cam_images(visual, pixels.float(), sizes, parity)


def _encode_cam_images(
    visual: torch.nn.Module, pixels: torch.Tensor, sizes: list[tuple[int, int]], parity: bool
) -> list[CamImage]:
    x = embed_tokens(visual, pixels)
    depth = trunk_depth(visual, x.shape[1], parity)
    # Affinity maps: the last AFFINITY_LAYERS of the trunk's maps plus the Grad-CAM block's.
    first_kept = depth + 1 - AFFINITY_LAYERS
    maps: list[torch.Tensor] = []
    for index in range(depth):
        block = visual.transformer.resblocks[index]
        x, weights = block_with_attention(block, x, average=index >= first_kept)
        if weights is not None:
            maps.append(weights)
    grid = (pixels.shape[-2] // visual.conv1.stride[0], pixels.shape[-1] // visual.conv1.stride[1])
    return [
        CamImage(x[i : i + 1], [m[i] for m in maps], grid, size) for i, size in enumerate(sizes)
    ]


def sinkhorn_affinity(maps: list[torch.Tensor]) -> torch.Tensor:
    """(n, n) transition matrix from per-block (1+n)^2 attention maps, in block order: mean of
    the last AFFINITY_LAYERS patch-to-patch maps, Sinkhorn, symmetrise, square. In fp32: the
    normalisations sum hundreds of small attention weights."""
    with full_precision(maps[0].device):
        attn = torch.stack([m[1:, 1:].float() for m in maps[-AFFINITY_LAYERS:]]).mean(dim=0)
        trans = attn
        for _ in range(SINKHORN_ROUNDS):
            trans = trans / trans.sum(dim=0, keepdim=True)
            trans = trans / trans.sum(dim=1, keepdim=True)
        trans = (trans + trans.T) / 2
        return trans @ trans


def minmax(cams: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation of (N, ...) maps with CLIP-ES's 1e-15 guard."""
    flat = cams.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-15 + flat.max(dim=1, keepdim=True).values)
    return flat.view_as(cams)


def _last_block(
    visual: torch.nn.Module, image: CamImage, text: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the Grad-CAM block with its ln_1 output as a leaf.

    Returns (ln_1 output, image vector, attention of this block, probabilities over `text`).
    In fp32 under any --precision (autolabel.models.precision): Grad-CAM's forward and backward
    through a softmax over 100 x cosine, where bf16 rounds a logit of 25 to steps of 0.125; it is
    one block.
    """
    with full_precision(image.tokens.device):
        tokens, text = image.tokens.float(), text.float()
        block = visual.transformer.resblocks[-1]
        normed = block.ln_1(tokens).detach().requires_grad_(True)
        x, weights = block_with_attention(block, tokens, normed)
        pooled = visual.ln_post(x)[:, 1:].mean(dim=1) @ visual.proj
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
        probs = (logit_scale * pooled @ text.T).softmax(dim=-1)[0]
    return normed, pooled, weights[0], probs


def _cams_from_grads(normed: torch.Tensor, grads: torch.Tensor, grid: tuple[int, int]):
    """Grad-CAM: channel weights = mean gradient over patches; ReLU(weighted activations)."""
    with full_precision(normed.device):  # the rest of Grad-CAM, as _last_block
        weights = grads[:, 1:].float().mean(dim=1)  # (N, C); the class token is not in the map
        cams = (normed.detach()[0, 1:].float() @ weights.T).T.clamp_min(0)
        return minmax(cams.reshape(len(cams), *grid))


def _batched_cams(
    normed: torch.Tensor, probs: torch.Tensor, rows: list[int], grid: tuple[int, int], heads: int
) -> tuple[torch.Tensor, int]:
    """Grad-CAMs of probs[rows] by batched vector-Jacobian products; returns (cams, backwards)."""
    tokens = normed.shape[1]
    chunk = max(1, GRAD_CHUNK_BYTES // (heads * tokens * tokens * 4))
    eye = torch.eye(len(probs), dtype=probs.dtype, device=probs.device)
    cams, passes = [], 0
    for start in range(0, len(rows), chunk):
        cotangents = eye[rows[start : start + chunk]]
        (grads,) = torch.autograd.grad(
            probs, normed, cotangents, retain_graph=True, is_grads_batched=True
        )
        cams.append(_cams_from_grads(normed, grads[:, 0], grid))
        passes += 1
    return torch.cat(cams), passes


def grad_cams(
    visual: torch.nn.Module,
    image: CamImage,
    foreground: torch.Tensor,
    background: torch.Tensor,
    logit_scale: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """CLIP-ES Grad-CAMs (N, h, w) in [0, 1] of all foreground texts at once; and #backwards.

    A CAM that is all zero is recomputed with the softmax over the foreground texts only, as in
    CLIP-ES. Sets image.affinity from this block's attention on the first call.
    """
    text = torch.cat([foreground, background])
    heads = visual.transformer.resblocks[-1].attn.num_heads
    with torch.enable_grad():
        normed, pooled, weights, probs = _last_block(visual, image, text, logit_scale)
        if image.affinity is None:
            image.affinity = sinkhorn_affinity([*image.attention, weights.detach()])
            image.attention = []  # (1+n)^2 each; the affinity is all later steps need
        rows = list(range(len(foreground)))
        cams, passes = _batched_cams(normed, probs, rows, image.grid, heads)
        empty = [i for i in rows if float(cams[i].max()) == 0.0]
        if empty and len(background):
            fg_probs = (logit_scale * pooled @ foreground.T).softmax(dim=-1)[0]
            redo, more = _batched_cams(normed, fg_probs, empty, image.grid, heads)
            cams[empty] = redo
            passes += more
    return cams.detach(), passes


def grad_cam_single(
    visual: torch.nn.Module,
    image: CamImage,
    foreground: torch.Tensor,
    background: torch.Tensor,
    logit_scale: torch.Tensor,
    index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: one query's Grad-CAM (h, w) from its own forward and backward pass.

    Also returns the block's attention map (the official code takes it from query 0's pass).
    """
    with torch.enable_grad():
        normed, _, weights, probs = _last_block(
            visual, image, torch.cat([foreground, background]), logit_scale
        )
        (grad,) = torch.autograd.grad(probs[index], normed)
        cam = _cams_from_grads(normed, grad, image.grid)[0]
        if float(cam.max()) == 0.0 and len(background):
            normed, _, _, probs = _last_block(visual, image, foreground, logit_scale)
            (grad,) = torch.autograd.grad(probs[index], normed)
            cam = _cams_from_grads(normed, grad, image.grid)[0]
    return cam.detach(), weights.detach()


def box_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """CLIP-ES box mask B_c on the patch grid: union of the boxes around the CAM above λ·max.

    Same steps as the official scoremap2bbox: uint8 scores, threshold lowered by 0.1 until
    something passes, every contour's bounding box; the exclusive box end is clamped to the last
    row/column index, so a box touching the bottom or right edge leaves that edge out.
    """
    height, width = cam.shape
    scores = (cam * 255).astype(np.uint8)
    level = threshold
    while True:
        _, binary = cv2.threshold(scores, int(level * scores.max()), 255, cv2.THRESH_BINARY)
        if binary.max() > 0 or level <= 0:
            break
        level -= 0.1
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    box = np.zeros((height, width), dtype=np.float32)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        box[y : min(y + h, height - 1), x : min(x + w, width - 1)] = 1.0
    return box


@torch.no_grad()
def refine(affinity: torch.Tensor, cams: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Class-aware affinity refinement of all CAMs at once: minmax(T @ (B_c ⊙ cam_c))."""
    n = affinity.shape[0]
    with full_precision(cams.device):  # a sum over all n patches, as in sinkhorn_affinity
        masked = (cams.float() * boxes).reshape(len(cams), n)
        return minmax((affinity.float() @ masked.T).T.reshape(cams.shape))


@torch.no_grad()
def refine_single(maps: list[torch.Tensor], cam: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Reference path: the official per-query refinement, rebuilding T and masking its columns."""
    trans = sinkhorn_affinity(maps) * box.reshape(1, -1)
    return minmax((trans @ cam.reshape(-1, 1)).reshape(1, *cam.shape))[0]


def upsample(cams: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) grid maps to (N, H, W) float32 with OpenCV's bilinear resize, as CLIP-ES does."""
    height, width = size
    grid = cams.float().cpu().numpy()
    out = np.empty((len(grid), height, width), dtype=np.float32)
    for i, cam in enumerate(grid):
        out[i] = cv2.resize(cam, (width, height))
    return out
