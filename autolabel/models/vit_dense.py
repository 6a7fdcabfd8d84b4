"""Patch-token read-outs of an open_clip ViT: the standard last block and a NACLIP-style one.

Used by the fast method, to train the toy model's dense objective and to read its raw dense
predictions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NACLIP_SIGMA = 5.0  # Gaussian neighbourhood in patches (NACLIP's default, ovss_landscape.md §3)


def block_forward(block: torch.nn.Module, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock (no layer scale), computed without nn.MultiheadAttention.

    Same result; nn.MultiheadAttention's batch-first path copies and re-zeroes its q/k/v slices
    in every backward pass, which made CPU training several times slower.
    """
    attn = block.attn
    b, n, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    x = x + attn.out_proj(out.transpose(1, 2).reshape(b, n, d))
    return x + block.mlp(block.ln_2(x))


def last_block_input(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens (B, 1 + N, D) entering the last transformer block; images are normalised."""
    x = visual._embeds(images)
    for block in visual.transformer.resblocks[:-1]:
        x = block_forward(block, x)
    return x


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text (causal mask, argmax/EOT pooling) through block_forward."""
    x = model.token_embedding(tokens) + model.positional_embedding
    for block in model.transformer.resblocks:
        x = block_forward(block, x, causal=True)
    x = model.ln_final(x)
    return (
        x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ model.text_projection
    )


def project(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post + proj on patch tokens (CLS dropped): (B, N, E), not normalised."""
    return visual.ln_post(tokens[:, 1:]) @ visual.proj


def project_cls(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post + proj on the class token: (B, E), not normalised."""
    return visual.ln_post(tokens[:, 0]) @ visual.proj


def standard_patches(visual: torch.nn.Module, x_in: torch.Tensor) -> torch.Tensor:
    """Projected patch tokens after the unchanged last block."""
    return project(visual, block_forward(visual.transformer.resblocks[-1], x_in))


def naclip_patches(
    visual: torch.nn.Module, x_in: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Projected patch tokens after a NACLIP last block.

    Attention softmax(s*KK^T + Gaussian locality), no residual, no FFN (ovss_landscape.md §3).
    """
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
    omega = torch.exp(-(torch.cdist(pos, pos) ** 2) / (2 * sigma**2))
    # The CLS row and column get no spatial bias.
    return F.pad(omega, (1, 0, 1, 0))


def gaussian_bias(grid: tuple[int, int], sigma: float, device: torch.device) -> torch.Tensor:
    """(1 + N) x (1 + N) additive attention bias exp(-d^2 / 2 sigma^2) between patch positions."""
    return _gaussian_bias_cpu(tuple(grid), float(sigma)).to(device)
