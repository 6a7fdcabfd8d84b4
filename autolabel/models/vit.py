"""ViT surgery on open_clip models: every method's and the toy trainer's block-by-block forward.

- token embedding, with the positional embedding resized to any patch grid (CaR's Grad-CAM
  runs at full image resolution);
- self-attention written out (with head-averaged weights for CLIP-ES's affinity), and two block
  forwards: one returning the attention weights (CaR), one through scaled_dot_product_attention
  (the fast method and toy training);
- the NACLIP last block (no residual, no FFN, Gaussian locality) and the projections into
  CLIP's joint space; the toy trainer's text encoder.

Sources: NACLIP (Hajimiri et al., WACV 2025, arXiv:2404.08181), github.com/sinahmr/NACLIP
clip/model.py; CaR (Sun et al., CVPR 2024, arXiv:2312.07661), official code
github.com/google-research/google-research clip_as_rnn/modeling/model/ ("CaR code" below).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from autolabel.errors import ModelLoadError

NACLIP_SIGMA = 5.0  # Gaussian neighbourhood in patches (NACLIP's default, clip/model.py)
# The official CaR ViT wrapper tells text from image tokens by the sequence length: a token
# sequence of this length runs all blocks in the trunk (CaR code: `CustomTransformer`,
# `x.shape[0] == 77`); reproduced under parity.
TEXT_CONTEXT = 77


def check_plain_vit(visual: torch.nn.Module, role: str) -> None:
    """Raise ModelLoadError unless `visual` is an open_clip ViT that can run block by block."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj")
    ok = blocks is not None and all(getattr(visual, n, None) is not None for n in needed)
    ok = ok and getattr(visual, "attn_pool", None) is None
    ok = ok and all(
        isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) and b.attn.batch_first
        for b in blocks
    )
    if not ok:
        raise ModelLoadError(
            f"{role} needs a plain open_clip ViT CLIP (conv patch embedding, standard "
            "attention blocks, class token, projection); this model is not one"
        )


def grid_size(visual: torch.nn.Module) -> tuple[int, int]:
    """The positional-embedding grid the model was trained at."""
    return tuple(int(g) for g in visual.grid_size)


def position_embedding(visual: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + h*w, C) positional embedding bilinearly resized to `grid`, rounded through fp16.

    The official CaR code resizes with F.upsample (align_corners False) and stores the result as
    fp16 even on CPU (CaR code: `upsample_position_embedding` casts with `.half()`); the rounding
    is kept so outputs match.
    """
    pos = visual.positional_embedding
    cls, patches = pos[:1], pos[1:]
    channels = pos.shape[1]
    trained = grid_size(visual)
    patches = patches.T.reshape(1, channels, *trained)
    patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    patches = patches.reshape(channels, -1).T
    return torch.cat([cls, patches]).half().to(pos.dtype)


def embed_tokens(
    visual: torch.nn.Module, pixels: torch.Tensor, resize_positions: bool = True
) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) -> tokens (B, 1 + n, C) entering the first block.

    resize_positions: the positional embedding of position_embedding() (resized to the input's
    grid, through fp16 even at the trained size), as CaR's official code does; False: the
    model's own, as open_clip's forward (the input must then be at the trained size).
    open_clip's private VisionTransformer._embeds, written with its public attributes.
    """
    x = visual.conv1(pixels)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    pos = position_embedding(visual, grid) if resize_positions else visual.positional_embedding
    x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def attention(
    attn: torch.nn.MultiheadAttention, y: torch.Tensor, average: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention output and head-averaged weights (B, T, T), or None without `average`.

    The arithmetic of nn.MultiheadAttention's need_weights=True path, which the official CaR
    code runs (packed in-projection, q scaled before q·kᵀ, explicit softmax), written out so that
    torch's FLOP counter sees every product (the fused CPU kernel hides them).
    """
    b, t, c = y.shape
    heads = attn.num_heads
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
    weights = (q * math.sqrt(1.0 / (c // heads)) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = F.linear((weights @ v).transpose(1, 2).reshape(b, t, c), attn.out_proj.weight,
                   attn.out_proj.bias)  # fmt: skip
    return out, weights.mean(dim=1) if average else None


def block_with_attention(
    block: torch.nn.Module,
    x: torch.Tensor,
    normed: torch.Tensor | None = None,
    average: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One residual block through attention(); its output and head-averaged attention (B, T, T).

    `normed` is ln_1(x) when the caller needs that tensor (the Grad-CAM layer).
    """
    y = block.ln_1(x) if normed is None else normed
    out, weights = attention(block.attn, y, average)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def trunk_depth(visual: torch.nn.Module, tokens: int, parity: bool) -> int:
    """How many blocks run before the last one: L-1, or L for the official length-77 quirk."""
    layers = len(visual.transformer.resblocks)
    return layers if parity and tokens == TEXT_CONTEXT else layers - 1


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
    x = embed_tokens(visual, images, resize_positions=False)
    for block in visual.transformer.resblocks[:-1]:
        x = block_forward(block, x)
    return x


def encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text(tokens), run only up to the longest prompt's end token when exact.

    With a causal mask and end-token pooling nothing after a prompt's end can change its
    embedding, so short prompts skip the padding of the 77-token context (several times less
    text-encoder work for typical class prompts).
    """
    import open_clip

    plain = type(model) is open_clip.model.CLIP and model.text_projection is not None
    if not (plain and model.text_pool_type == "argmax" and model.attn_mask is not None):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text (causal mask, argmax/EOT pooling) through block_forward, for training.

    Inference encodes text with encode_tokens above (open_clip's own blocks,
    the context cut at the longest prompt); this path trains several times faster on CPU
    (see block_forward) and its numbers may differ from open_clip's in the last bits.
    """
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

    Attention softmax(s*KK^T + Gaussian locality), no residual, no FFN (NACLIP's clip/model.py,
    arch 'reduced', attn 'naclip').
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
