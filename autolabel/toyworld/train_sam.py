"""Train the toy SAM from scratch on toy scenes (deterministic for a seed and thread count).

A transformers `SamModel` with a small config (toy_sam_config) learns, as SAM was trained, to
answer a prompt with the mask of the object under it:
- point prompts (one positive point inside an object, or on the background, whose "object" is
  then the whole background region), with SAM's three candidate masks and the loss of the best
  one only (SAM's ambiguity-aware loss);
- box prompts (the object's box, jittered), with a single mask;
- losses: focal (x20) + dice on the masks, as in SAM, and the squared error of the predicted IoU
  against the IoU the predicted mask really has (what the automatic generator filters on).
The targets are each object's visible pixels (Scene.masks), so two touching objects of one class
are two targets.

Two stages. A coarse model (8 px patches: 16 x 16 embedding, 64 x 64 masks) learns prompts and
objects cheaply; its masks were 0.92 IoU against box prompts where their 64 x 64 resolution
allows 0.99, the errors on the edges (sub-patch detail). It is then sharpened: its weights move
to 4 px patches (32 x 32 embedding, 128 x 128 masks, windowed attention as SAM's ViTs) as if it
saw the scene at twice the size (`sharpen`), and training goes on at that resolution, which from
scratch would take far longer than the coarse stage (the loss stalls for hundreds of steps while
the model learns to follow a prompt).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.io.atomic import atomic_write_json
from autolabel.toyworld import DEFAULT_SIZE
from autolabel.toyworld.scenes import make_scene

PATCH = 4  # the shipped model: 32 x 32 image embedding, 128 x 128 masks for a 128 px scene
COARSE_PATCH = 8  # the first stage: 16 x 16 embedding, 64 x 64 masks
MINUTES = ("cpu_minutes", "wall_minutes")  # each stage's time, in training.json
BACKGROUND_PROMPT = 0.15  # share of point prompts put on the background


def toy_sam_config(patch: int = PATCH) -> object:
    """The toy SAM's architecture: SAM's, narrowed (64 channels, 4 ViT blocks, 128 px input)."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    width = 64
    vision = SamVisionConfig(
        hidden_size=96,
        output_channels=width,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=DEFAULT_SIZE,
        patch_size=patch,
        # 256 tokens are cheap for global attention everywhere; at 1024, SAM's layout: windows
        # (8 x 8 tokens) with every other block global.
        window_size=0 if patch >= COARSE_PATCH else 8,
        global_attn_indexes=[] if patch >= COARSE_PATCH else [1, 3],
        mlp_dim=384,
        initializer_range=0.02,  # SamVisionConfig's default (1e-10) leaves the encoder silent
        num_pos_feats=width // 2,
        scale=1.0,  # SAM's random Fourier features (PositionEmbeddingRandom); wider ones alias
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=width, image_size=DEFAULT_SIZE, patch_size=patch, mask_input_channels=8
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=width, mlp_dim=256, num_attention_heads=4, iou_head_hidden_dim=64
    )
    return SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )


def toy_sam_processor(patch: int = PATCH) -> object:
    """SAM's processor at the toy size: 128 px longest side, padded to 128 x 128."""
    from transformers import SamImageProcessor, SamProcessor

    size = DEFAULT_SIZE
    images = SamImageProcessor(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        # Mask prompts at 4x the embedding's side, as SAM's 256 px for its 64 x 64 embedding.
        mask_size={"longest_edge": 4 * size // patch},
        mask_pad_size={"height": 4 * size // patch, "width": 4 * size // patch},
    )
    return SamProcessor(images)


@dataclass
class SamTrainSettings:
    """Everything that determines the trained weights."""

    seed: int = 0
    steps: int = 2400  # coarse stage
    batch_size: int = 8  # scenes per step
    prompts: int = 12  # point prompts and box prompts per scene
    lr: float = 2e-3
    warmup: int = 100
    fine_steps: int = 500  # sharpened stage (4x the tokens: about 3x the cost of a coarse step)
    fine_prompts: int = 8
    fine_lr: float = 5e-4
    fine_warmup: int = 50
    weight_decay: float = 0.01
    threads: int = 1
    log_every: int = 100


def _sample_prompts(
    rng: np.random.Generator, masks: list[np.ndarray], background: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point prompts with their targets, then box prompts with theirs (x, y pixel coordinates)."""
    size = background.shape[0]
    points, point_targets, boxes, box_targets = [], [], [], []
    for _ in range(count):
        on_background = rng.uniform() < BACKGROUND_PROMPT or not masks
        target = background if on_background else masks[int(rng.integers(len(masks)))]
        ys, xs = np.nonzero(target)
        pick = int(rng.integers(len(xs)))
        points.append([xs[pick] + 0.5, ys[pick] + 0.5])
        point_targets.append(target)
        if masks:
            obj = masks[int(rng.integers(len(masks)))]
            ys, xs = np.nonzero(obj)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
            jitter = rng.normal(0.0, 0.05, 4) * max(box[2] - box[0], box[3] - box[1])
            boxes.append(np.clip(box + jitter, 0, size))
            box_targets.append(obj)
    if not boxes:  # a scene without objects: the whole image as its box
        boxes, box_targets = [[0, 0, size, size]] * count, [background] * count
    while len(boxes) < count:  # keep every scene's box count equal
        boxes.append(boxes[-1])
        box_targets.append(box_targets[-1])
    return (
        np.array(points, np.float32),
        np.stack(point_targets),
        np.array(boxes, np.float32),
        np.stack(box_targets),
    )


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Focal (x20) + dice per mask; logits and target ... x H x W."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * ce * (1 - p_t) ** 2).flatten(-2).mean(-1)
    inter = (prob * target).flatten(-2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(-2).sum(-1) + target.flatten(-2).sum(-1) + 1)
    return 20 * focal + dice


def _true_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = logits.detach() > 0
    tgt = target > 0.5
    inter = (pred & tgt).flatten(-2).sum(-1).float()
    union = (pred | tgt).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def sharpen(coarse: object) -> object:
    """The coarse model's weights in the fine architecture (PATCH), as if it saw every scene at
    twice the size: each 4 px patch embeds like the 8 px patch of the scene upsampled 2x, and the
    absolute and relative position tables are stretched by the same factor."""
    from transformers import SamModel

    factor = COARSE_PATCH // PATCH
    model = SamModel(toy_sam_config(PATCH))
    state = coarse.state_dict()
    key = "vision_encoder.patch_embed.projection.weight"
    out_ch, in_ch, k, _ = state[key].shape
    state[key] = state[key].reshape(out_ch, in_ch, k // factor, factor, k // factor, factor)
    state[key] = state[key].sum((3, 5))
    key = "vision_encoder.pos_embed"
    grid = F.interpolate(state[key].permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear")
    state[key] = grid.permute(0, 2, 3, 1)
    for key, target in model.state_dict().items():
        if ".rel_pos_" not in key:
            continue
        table = state[key]  # (2n - 1) x head_dim, distances -(n-1)..n-1
        size = factor * (len(table) - 1) + 1
        table = F.interpolate(table.T[None], size, mode="linear", align_corners=True)
        if len(target) > size:  # the distances the coarse grid never had: the farthest it had
            table = F.pad(table, ((len(target) - size) // 2,) * 2, mode="replicate")
        start = (table.shape[-1] - len(target)) // 2
        state[key] = table[0, :, start : start + len(target)].T.contiguous()
    model.load_state_dict(state)
    return model


def _fit(
    model: object,
    settings: SamTrainSettings,
    stage: tuple[int, int, float, int, int],
    rng: np.random.Generator,
    log: Callable[[str], None],
    out: Path,
) -> dict[str, float]:
    """Train a model in place for one stage (steps, prompts, lr, warmup, first scene index) and
    save it to out/ (model and processor); returns its final losses and time."""
    steps, prompts, lr, warmup, first_scene = stage
    start, cpu_start = time.time(), time.process_time()
    processor = toy_sam_processor(model.config.vision_config.patch_size)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.weight_decay)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    running: dict[str, float] = {}
    for step in range(steps):
        scenes = [
            make_scene(settings.seed, first_scene + step * settings.batch_size + i)
            for i in range(settings.batch_size)
        ]
        pixels = processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
        sampled = [_sample_prompts(rng, s.masks, s.labels == 0, prompts) for s in scenes]
        points, point_targets, boxes, box_targets = (
            torch.from_numpy(np.stack([s[i] for s in sampled])).float() for i in range(4)
        )
        # Not get_image_embeddings: transformers runs it under no_grad, which froze the encoder.
        embeddings = model.vision_encoder(pixels)[0]
        by_point = model(
            image_embeddings=embeddings, input_points=points[:, :, None], multimask_output=True
        )
        by_box = model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)
        size = scenes[0].labels.shape
        point_logits = F.interpolate(
            by_point.pred_masks.flatten(0, 1), size, mode="bilinear", align_corners=False
        ).unflatten(0, points.shape[:2])
        box_logits = F.interpolate(
            by_box.pred_masks.flatten(0, 1), size, mode="bilinear", align_corners=False
        ).unflatten(0, boxes.shape[:2])
        point_loss = _mask_losses(point_logits, point_targets[:, :, None].expand_as(point_logits))
        best = point_loss.argmin(-1, keepdim=True)
        box_loss = _mask_losses(box_logits, box_targets[:, :, None])
        point_iou = _true_iou(point_logits, point_targets[:, :, None].expand_as(point_logits))
        box_iou = _true_iou(box_logits, box_targets[:, :, None])
        iou_loss = F.mse_loss(by_point.iou_scores, point_iou) + F.mse_loss(
            by_box.iou_scores, box_iou
        )
        losses = {
            "point": point_loss.gather(-1, best).mean(),
            "box": box_loss.mean(),
            "iou": iou_loss,
        }
        loss = sum(losses.values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        for key, value in {**losses, "loss": loss}.items():
            value = float(value.detach())
            running[key] = 0.9 * running.get(key, value) + 0.1 * value
        if (step + 1) % settings.log_every == 0 or step + 1 == steps:
            figures = " ".join(f"{k} {v:.4f}" for k, v in running.items())
            log(f"step {step + 1}/{steps} {figures} ({time.time() - start:.0f} s)")
    model.eval()
    final = {
        **running,
        "cpu_minutes": (time.process_time() - cpu_start) / 60,
        "wall_minutes": (time.time() - start) / 60,
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return final


def check_coarse(folder: Path) -> dict[str, Any]:
    """The training record of a coarse-stage toy SAM as train-sam saves it (UsageError if the
    folder holds none)."""
    from autolabel.errors import UsageError

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        patch = config["vision_config"]["patch_size"]
        record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        for section, keys in (("settings", ("steps", "batch_size")), ("final", MINUTES)):
            if not all(isinstance(record[section][k], int | float) for k in keys):
                raise ValueError(f"training.json: {section} without numbers for {keys}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"--coarse {folder}: not a coarse toy SAM saved by train-sam ({exc}); "
            "it is the coarse/ folder of a train-sam output"
        ) from None
    if patch != COARSE_PATCH:
        raise UsageError(
            f"--coarse {folder}: its patches are {patch} px, the coarse stage's are "
            f"{COARSE_PATCH} px (the coarse/ folder of a train-sam output, not the model itself)"
        )
    return record


def train_sam(
    settings: SamTrainSettings,
    out: Path,
    log: Callable[[str], None] = print,
    coarse: Path | None = None,
) -> dict[str, Any]:
    """Train and write the toy SAM (save_pretrained model and processor) to out/: the coarse
    stage (kept in out/coarse/), or the one saved before in `coarse`, then the sharpened one."""
    from transformers import SamModel

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    if coarse is None:
        coarse = out / "coarse"
        log("coarse stage: 8 px patches")
        model = SamModel(toy_sam_config(COARSE_PATCH))
        stage = (settings.steps, settings.prompts, settings.lr, settings.warmup, 0)
        losses = _fit(model, settings, stage, np.random.default_rng(settings.seed), log, coarse)
        first_record = {"settings": asdict(settings), "final": losses}
        atomic_write_json(coarse / "training.json", first_record)
    else:
        first_record = check_coarse(coarse)
        model = SamModel.from_pretrained(coarse)
    log("sharpened stage: 4 px patches")
    model = sharpen(model)
    trained = first_record["settings"]
    first = trained["steps"] * trained["batch_size"]  # scenes the coarse stage never saw
    stage = (
        settings.fine_steps,
        settings.fine_prompts,
        settings.fine_lr,
        settings.fine_warmup,
        first,
    )
    # Its own prompt stream: the same whether the coarse stage ran here or before.
    rng = np.random.default_rng([settings.seed, 1])
    fine = _fit(model, settings, stage, rng, log, out)
    total = {k: first_record["final"][k] + fine[k] for k in MINUTES}
    final = {"coarse": first_record["final"], "fine": fine, **total}
    atomic_write_json(out / "training.json", {"settings": asdict(settings), "final": final})
    return final
