"""Train the toy CLIP from scratch on toy scenes (deterministic for a seed and thread count).

Losses, all at the model's own logit scale:
- image-caption InfoNCE on the mean-pooled patch tokens (the image embedding, pool_type "avg",
  which is also what CLIP-ES Grad-CAM differentiates) and on the class token entering the last
  block (the read-out CaR's paper classifier uses); captions naming the same classes are
  positives of each other;
- a dense loss: each patch token, read through the unchanged last block (Grad-CAM methods) and
  through a NACLIP-style last block (the `fast` method), classified against the 16 class texts
  and the background words, with the patch's class fractions as soft targets;
- a text-text InfoNCE between two templates of each class / background word: without it the
  text tower settled on colour alone and nothing rewarded the image tower for seeing shape.
Some images are shown with one object kept and the rest greyed or blurred (CaR's visual prompts)
and captioned with that object alone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.io.atomic import atomic_open, atomic_write_json
from autolabel.models.clip import OPENAI_MEAN, OPENAI_STD, TOY_DIR
from autolabel.models.vit import (
    encode_text,
    last_block_input,
    naclip_patches,
    project_cls,
    standard_patches,
)
from autolabel.toyworld import TOY_NAME
from autolabel.toyworld.scenes import BACKGROUND_WORDS, CLASSES, make_scene
from autolabel.vocab import DEFAULT_BACKGROUND

# The architecture is data: the bundled open_clip config (autolabel/assets/toy/toy.json). The
# text tower is narrow because its token embedding has a row for each of the standard
# tokenizer's 49408 tokens and dominates the file size.
TOY_CONFIG: dict = json.loads((TOY_DIR / f"{TOY_NAME}.json").read_text(encoding="utf-8"))
# Prompt templates seen in training, so that the ones methods use (raw names, CaR's origami and
# scene templates, ImageNet-style photo templates) all land near the class concept.
TEMPLATES: tuple[str, ...] = (
    "{}", "a {}.", "a photo of a {}.", "a clean origami {}.", "This is a photo of a {}",
    "There is a {} in the scene", "There is the {} in the scene", "a photo of a {} in the scene",
    "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
    "a photo of the {}.", "a picture of a {}.", "an image of a {}.", "a rendering of a {}.",
    "a drawing of a {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a blurry photo of a {}.",
    "a good photo of a {}.", "a bad photo of a {}.", "art of a {}.", "a sketch of a {}.",
    "a toy {}.", "itap of a {}.", "a low resolution photo of a {}.", "a plastic {}.",
)  # fmt: skip
TRAIN_BACKGROUND: tuple[str, ...] = BACKGROUND_WORDS + DEFAULT_BACKGROUND


@dataclass
class TrainSettings:
    """Everything that determines the trained weights."""

    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    pool: int = 6000  # distinct scenes generated up front; batches reuse them with flips/rotations
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    dense_weight: float = 1.0
    naclip_weight: float = 1.0
    prompt_prob: float = 0.2  # share of images shown with one object kept and the rest blurred/grey
    threads: int = 1  # on a busy 2-core machine two threads were 10x slower (they wait)
    save_every: int = 100
    bf16: bool = False  # bfloat16 autocast (measured: no faster on CPU for a model this small)
    background_words: int = 10  # background words drawn per step for the dense loss
    device: str = "cpu"
    workers: int = 1  # processes generating the scene pool (does not change the result)


def caption(template: str, names: list[str]) -> str:
    """Fill a template like "a photo of a {}." with "red circle and a blue star"."""
    body = names[0]
    if len(names) > 1:
        body += "".join(f", a {n}" for n in names[1:-1]) + f" and a {names[-1]}"
    return template.format(body)


def build_model(seed: int) -> torch.nn.Module:
    """A freshly initialised open_clip CLIP with the toy config."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**TOY_CONFIG)


def train(
    settings: TrainSettings, out: Path, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Train and write out/toy.json and out/toy.pt; returns the last logged losses."""
    import open_clip

    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    size = TOY_CONFIG["vision_cfg"]["image_size"]
    patch = TOY_CONFIG["vision_cfg"]["patch_size"]
    grid = (size // patch, size // patch)
    device = torch.device(settings.device)
    model = build_model(settings.seed).to(device)
    # Random token vectors are fine as token identities; freezing the 49408-row table keeps
    # each step cheap (its gradient and optimiser state would dwarf the rest of the model).
    model.token_embedding.requires_grad_(False)
    model.train()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=TOY_CONFIG["text_cfg"]["context_length"]
    )
    log(f"generating {settings.pool} scenes (seed {settings.seed})")
    t0 = time.time()
    pool = _scene_pool(settings.seed, settings.pool, size, patch, settings.workers)
    images, labels, targets, names = pool
    log(f"  done in {time.time() - t0:.0f}s")
    opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr, fused=True)
    rng = np.random.default_rng([settings.seed, 1])
    mean = torch.tensor(OPENAI_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=device).view(1, 3, 1, 1)
    t0, cpu0 = time.time(), time.process_time()
    last: dict[str, float] = {}
    for step in range(1, settings.steps + 1):
        lr = _lr(step, settings)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, settings.pool, settings.batch_size)
        batch = _batch(
            rng, images[idx], labels[idx], targets[idx], [names[i] for i in idx], settings
        )
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["images"] = (batch["images"] - mean) / std
        pair = rng.choice(len(TEMPLATES), 2, replace=False)
        templates = (TEMPLATES[pair[0]], TEMPLATES[pair[1]])
        chosen = rng.choice(len(TRAIN_BACKGROUND), settings.background_words, replace=False)
        background = [TRAIN_BACKGROUND[j] for j in sorted(chosen)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            losses = _losses(model, tokenizer, batch, templates, background, grid, settings)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == settings.steps:
            last = {k: v.item() for k, v in losses.items()}
            wall, cpu = (time.time() - t0) / step, (time.process_time() - cpu0) / step
            log(
                f"step {step}/{settings.steps} "
                + " ".join(f"{k} {v:.3f}" for k, v in last.items())
                + f" lr {lr:.2e} {wall:.2f}s/step (cpu {cpu:.2f}s)"
                + f" eta {wall * (settings.steps - step) / 60:.1f}min"
            )
        if step % settings.save_every == 0 or step == settings.steps:
            save(model, out)
    cpu_min = (time.process_time() - cpu0) / 60
    last["cpu_minutes"] = cpu_min
    last["wall_minutes"] = (time.time() - t0) / 60
    # Provenance beside the weights (toy.json itself must stay a plain open_clip config).
    atomic_write_json(out / "training.json", {"settings": asdict(settings), "final": last})
    log(
        f"trained {settings.steps} steps in {(time.time() - t0) / 60:.1f} min wall, "
        f"{cpu_min:.1f} CPU-min; wrote {out}"
    )
    return last


def _losses(
    model: torch.nn.Module,
    tokenizer: Callable,
    batch: dict,
    templates: tuple[str, str],
    background: list[str],
    grid: tuple[int, int],
    settings: TrainSettings,
) -> dict[str, torch.Tensor]:
    """Contrastive losses (image-caption twice, class-class text), dense losses on patches."""
    captions = batch["captions"]
    words = [*CLASSES, *background]
    prompts = [t.format(w) for t in templates for w in words]
    device = batch["images"].device
    text = F.normalize(encode_text(model, tokenizer(prompts + captions).to(device)).float(), dim=-1)
    class_text, other_text = text[: len(words)], text[len(words) : len(prompts)]
    caption_text = text[len(prompts) :]
    scale = model.logit_scale.exp()
    n_bg = len(background)
    x_in = last_block_input(model.visual, batch["images"])
    std_tokens = standard_patches(model.visual, x_in).float()
    pooled = F.normalize(std_tokens.mean(dim=1), dim=-1)
    target, weight = batch["targets"], batch["dense_mask"]
    # CaR's classifier reads the class token entering the last block (official code:
    # google-research clip_as_rnn clip_wrapper.py, `forward_last_layer`, `repeat_last=False`),
    # so that read-out is trained to be an image embedding as well.
    penultimate = F.normalize((project_cls(model.visual, x_in)).float(), dim=-1)
    out = {
        "clip": _contrastive(pooled, caption_text, batch["keys"], scale),
        "clip_cls": _contrastive(penultimate, caption_text, batch["keys"], scale),
        "dense": _dense_loss(std_tokens, class_text, n_bg, target, weight, scale),
        "naclip": torch.zeros((), device=device),
        # Each class / background word under one template must pick itself out under another.
        # Without this the text tower can settle on colour alone ("red circle" = "red square"),
        # and then no loss rewards the image tower for seeing shape.
        "text": _contrastive(class_text, other_text, [frozenset([w]) for w in words], scale),
    }
    if settings.naclip_weight > 0:
        nac_tokens = naclip_patches(model.visual, x_in, grid).float()
        out["naclip"] = _dense_loss(nac_tokens, class_text, n_bg, target, weight, scale)
    out["loss"] = (
        out["clip"]
        + out["clip_cls"]
        + out["text"]
        + settings.dense_weight * out["dense"]
        + settings.naclip_weight * out["naclip"]
    )
    out["scale"] = scale.detach()
    return out


def save(model: torch.nn.Module, out: Path) -> None:
    """Write toy.json (the open_clip config) and toy.pt (an fp16 state dict) atomically."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    with atomic_open(out / "toy.pt", "wb") as handle:
        torch.save(state, handle)
    atomic_write_json(out / "toy.json", TOY_CONFIG)


def _scene_pool(
    seed: int, count: int, size: int, patch: int, workers: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty((count, size, size), np.uint8)
    targets = np.empty((count, len(CLASSES) + 1, size // patch, size // patch), np.float32)
    names: list[list[str]] = []
    jobs = [(seed, i, size) for i in range(count)]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            scenes = pool.starmap(make_scene, jobs, chunksize=64)
    else:
        scenes = [make_scene(*job) for job in jobs]
    for i, scene in enumerate(scenes):
        images[i] = scene.image
        labels[i] = scene.labels
        targets[i] = _patch_targets(scene.labels, patch)
        names.append([o.name for o in scene.objects])
    return images, labels, targets, names


def _batch(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    names: list[list[str]],
    settings: TrainSettings,
) -> dict:
    """Dihedral augmentation, optional visual prompts, captions and soft patch targets."""
    imgs, tgts, captions, keys = [], [], [], []
    dense_mask = torch.ones(len(images))
    for i in range(len(images)):
        img = torch.from_numpy(images[i]).permute(2, 0, 1)
        lab = torch.from_numpy(labels[i])
        tgt = torch.from_numpy(targets[i])  # (K + 1, gh, gw)
        if rng.random() < 0.5:
            img, lab, tgt = img.flip(-1), lab.flip(-1), tgt.flip(-1)
        k = int(rng.integers(4))
        img, lab, tgt = (t.rot90(k, (-2, -1)) for t in (img, lab, tgt))
        img = img.float() / 255.0
        present = list(names[i])
        if present and rng.random() < settings.prompt_prob:
            keep = present[int(rng.integers(len(present)))]
            img = _visual_prompt(rng, img, lab == CLASSES.index(keep) + 1)
            present = [keep]
            dense_mask[i] = 0.0
        order = rng.permutation(len(present))
        captions.append(
            caption(TEMPLATES[rng.integers(len(TEMPLATES))], [present[j] for j in order])
        )
        keys.append(frozenset(present))
        imgs.append(img)
        tgts.append(tgt.flatten(1).T)
    return {
        "images": torch.stack(imgs),
        "targets": torch.stack(tgts),  # (B, N, K + 1) class fractions per patch
        "dense_mask": dense_mask,
        "captions": captions,
        "keys": keys,
    }


def _patch_targets(labels: np.ndarray, patch: int) -> np.ndarray:
    """(K + 1, gh, gw) fraction of each patch's pixels in each class."""
    h, w = labels.shape
    onehot = np.eye(len(CLASSES) + 1, dtype=np.float32)[labels]
    pooled = onehot.reshape(h // patch, patch, w // patch, patch, -1).mean(axis=(1, 3))
    return np.ascontiguousarray(pooled.transpose(2, 0, 1))


def _visual_prompt(rng: np.random.Generator, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep one object sharp; blur and/or grey everything else (CaR-style visual prompts)."""
    region = F.max_pool2d(mask[None, None].float(), 7, stride=1, padding=3)[0] > 0
    out = img.clone()
    kind = int(rng.integers(3))
    if kind in (0, 2):
        out = _blur(out, sigma=float(rng.uniform(2.0, 4.0)))
    if kind in (1, 2):
        gray = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).expand(3, -1, -1)
        out = gray.clone()
    return torch.where(region, img, out)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(img[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def _contrastive(
    image: torch.Tensor, text: torch.Tensor, keys: list[frozenset], scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where captions naming the same set of classes all count as positives."""
    same = torch.tensor(
        [[a == b for b in keys] for a in keys], dtype=torch.float32, device=image.device
    )
    targets = same / same.sum(dim=1, keepdim=True)
    logits = scale * image @ text.T
    return 0.5 * (
        -(targets * logits.log_softmax(dim=1)).sum(1).mean()
        - (targets * logits.T.log_softmax(dim=1)).sum(1).mean()
    )


def _dense_loss(
    tokens: torch.Tensor,
    class_text: torch.Tensor,
    n_bg: int,
    targets: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Soft cross-entropy of patch-vs-text logits against per-patch class fractions.

    The background logit is the log-sum-exp over all background words, so any of them may win.
    """
    logits = scale * F.normalize(tokens, dim=-1) @ class_text.T
    k = class_text.shape[0] - n_bg
    bg = logits[..., k:].logsumexp(dim=-1, keepdim=True)
    logits = torch.cat([bg, logits[..., :k]], dim=-1)
    per_patch = -(targets * logits.log_softmax(dim=-1)).sum(-1).mean(-1)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)


def _lr(step: int, s: TrainSettings) -> float:
    if step <= s.warmup:
        return s.lr * step / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
