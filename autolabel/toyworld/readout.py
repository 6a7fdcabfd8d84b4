"""The toy model's raw read-outs and the probe that scores them on unseen scenes.

"Raw dense read-out": patch tokens -> ln_post -> proj -> cosine with class / background text,
argmax, no attention change (or NACLIP's, for comparison) and no CRF.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.evaluate import SegmentationScores
from autolabel.models.clip import ClipModel
from autolabel.models.vit import last_block_input, naclip_patches, standard_patches
from autolabel.models.zeroshot import READOUT_TEMPLATES
from autolabel.toyworld.scenes import BACKGROUND_WORDS, CLASSES, make_scene
from autolabel.vocab import Vocabulary


def toy_vocabulary() -> Vocabulary:
    """The toy world's classes in class-id order with the toy background words."""
    return Vocabulary.from_names(list(CLASSES), BACKGROUND_WORDS)


@torch.no_grad()
def dense_logits(
    clip: ClipModel, images: list[np.ndarray], vocab: Vocabulary, path: str = "standard"
) -> torch.Tensor:
    """(B, K + 1, H, W) logits at image size; channel 0 = best background word, each class = its
    best synonym. Images must share one size; they are resized to the model's input size."""
    table, owners = vocab.prompt_table()
    text = clip.encode_templates(table, list(READOUT_TEMPLATES))
    owner = [o - 1 for o in owners if o]  # 0-based class of each class prompt (they come first)
    h, w = images[0].shape[:2]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(clip.device) / 255.0
    size = clip.image_size
    x = clip.normalize(F.interpolate(x, (size, size), mode="bicubic", align_corners=False))
    visual = clip.model.visual
    grid = (size // clip.patch_size, size // clip.patch_size)
    x_in = last_block_input(visual, x)
    if path == "naclip":
        tokens = naclip_patches(visual, x_in, grid)
    else:
        tokens = standard_patches(visual, x_in)
    sims = clip.model.logit_scale.exp() * F.normalize(tokens.float(), dim=-1) @ text.T
    k = len(vocab.classes)
    per_class = torch.full((*sims.shape[:2], k), -torch.inf, device=sims.device)
    index = torch.tensor(owner, device=sims.device).expand(*sims.shape[:2], -1)
    per_class = per_class.scatter_reduce(-1, index, sims[..., : len(owner)], "amax")
    bg = sims[..., len(owner) :].amax(dim=-1, keepdim=True)
    logits = torch.cat([bg, per_class], dim=-1).transpose(1, 2).reshape(len(images), k + 1, *grid)
    return F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def presence_scores(clip: ClipModel, images: list[np.ndarray], vocab: Vocabulary) -> np.ndarray:
    """(B, K) image-level cosine between the image embedding and each class's text."""
    text = clip.encode_templates(vocab.names, list(READOUT_TEMPLATES))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(clip.device) / 255.0
    size = clip.image_size
    x = clip.normalize(F.interpolate(x, (size, size), mode="bicubic", align_corners=False))
    emb = F.normalize(clip.model.encode_image(x).float(), dim=-1)
    return (emb @ text.T).cpu().numpy()


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    scores, truth = scores.ravel(), truth.ravel().astype(bool)
    pos, neg = truth.sum(), (~truth).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def probe(clip: ClipModel, seed: int, count: int, batch: int = 32) -> dict[str, float]:
    """Score the raw read-outs on `count` scenes of `seed`: mIoU with all classes and with the true
    classes given (standard and NACLIP last block) and presence AUROC."""
    vocab = toy_vocabulary()
    k = len(vocab)
    tallies = {
        f"{path}_{mode}": SegmentationScores(k + 1, None)
        for path in ("standard", "naclip")
        for mode in ("all", "given")
    }
    presence, truth = [], []
    for start in range(0, count, batch):
        scenes = [make_scene(seed, i) for i in range(start, min(count, start + batch))]
        images = [s.image for s in scenes]
        allowed = torch.zeros(len(scenes), k + 1, 1, 1, dtype=torch.bool)
        allowed[:, 0] = True
        for i, s in enumerate(scenes):
            allowed[i, s.present] = True
        for path in ("standard", "naclip"):
            logits = dense_logits(clip, images, vocab, path).cpu()
            given = logits.masked_fill(~allowed, -torch.inf)
            for mode, values in (("all", logits), ("given", given)):
                labels = values.argmax(dim=1).numpy()
                for s, lab in zip(scenes, labels, strict=True):
                    tallies[f"{path}_{mode}"].add(lab, s.labels)
        presence.append(presence_scores(clip, images, vocab))
        row = np.zeros((len(scenes), k), bool)
        for i, s in enumerate(scenes):
            row[i, [c - 1 for c in s.present]] = True
        truth.append(row)
    out = {f"miou_{name}": t.summary()["miou"] for name, t in tallies.items()}
    out["presence_auroc"] = auroc(np.concatenate(presence), np.concatenate(truth))
    return out
