"""Patch-token read-outs of an open_clip ViT: the standard last block and a NACLIP-style one.

Used to train the toy model's dense objective and to read its raw dense predictions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NACLIP_SIGMA = 5.0  # Gaussian neighbourhood in patches (NACLIP's default, ovss_landscape.md §3)


def last_block_input(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens (B, 1 + N, D) entering the last transformer block; images are normalised."""
    x = visual._embeds(images)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x


def project(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post + proj on patch tokens (CLS dropped): (B, N, E), not normalised."""
    return visual.ln_post(tokens[:, 1:]) @ visual.proj


def standard_patches(visual: torch.nn.Module, x_in: torch.Tensor) -> torch.Tensor:
    """Projected patch tokens after the unchanged last block."""
    return project(visual, visual.transformer.resblocks[-1](x_in))


def naclip_patches(visual: torch.nn.Module, x_in: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Projected patch tokens after a NACLIP last block: softmax(s*KK^T + Gaussian), no residual/FFN."""
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    heads = attn.num_heads
    b, n, d = x_in.shape
    y = block.ln_1(x_in)
    _, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = k.view(b, n, heads, d // heads).transpose(1, 2)
    v = v.view(b, n, heads, d // heads).transpose(1, 2)
    bias = gaussian_bias(grid, NACLIP_SIGMA, x_in.device).to(x_in.dtype)
    logits = (k @ k.transpose(-2, -1)) * (d // heads) ** -0.5 + bias
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
    return project(visual, attn.out_proj(out))


@functools.lru_cache(maxsize=8)
def _gaussian_bias_cpu(grid: tuple[int, int], sigma: float) -> torch.Tensor:
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    omega = torch.exp(-torch.cdist(pos, pos) ** 2 / (2 * sigma**2))
    # The CLS row and column get no spatial bias.
    return F.pad(omega, (1, 0, 1, 0))


def gaussian_bias(grid: tuple[int, int], sigma: float, device: torch.device) -> torch.Tensor:
    """(1 + N) x (1 + N) additive attention bias exp(-d^2 / 2 sigma^2) between patch positions."""
    return _gaussian_bias_cpu(tuple(grid), float(sigma)).to(device)
