"""`pnp`: PnP-OVSS (Luo et al., CVPR 2024) on a BLIP or BridgeTower image-text-matching model.

One prompt holds the class names. Each class's map is the chosen cross-attention head's weights
from its tokens to the image patches, times the positive gradient of the ITM "match" logit
(GradCAM). Salience DropOut reruns this with the most salient patches blanked out and sums the
maps. Then: relative threshold, upsampling, Gaussian blur, dense CRF, argmax with a background
channel. Defaults follow the authors' updated ("bug-corrected") code.

Paper: Luo, Khandelwal, Sigal, Li, "Emergent Open-Vocabulary Semantic Segmentation from
Off-the-shelf Vision-Language Models", CVPR 2024, arXiv:2311.17095. Official code (BLIP only):
github.com/letitiabanana/PnP-OVSS. "Updated code" = its commit e439962
(PnP_OVSS_0514_updated_segmentation*.py, Run_seg*.sh); "CVPR-era code" = commit 687a4e5
(*_halving.sh, New_eval_cam_*.py); "Files to replace for BLIP/" holds the authors' patched LAVIS
files. The comments cite the code; the paper's method section was not checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from autolabel.errors import ModelLoadError, UsageError
from autolabel.methods.base import SegResult
from autolabel.methods.settings import PnPSettings
from autolabel.models.blip import ItmModel, load_itm
from autolabel.models.clip import ClipModel, load_clip
from autolabel.models.zeroshot import clip_presence
from autolabel.refine.finish import PnPFinish, pnp_probs
from autolabel.vocab import Vocabulary

# What `autolabel tune` searches besides layer and head (which span the model): tau is the grid
# of the authors' search code (`Search()` in pnp_get_attention_textloc_weaklysupervised_search.py);
# blur (not searched there) brackets its 0.05.
SEARCH_THRESHOLDS = [0.05, 0.15, 0.25, 0.35, 0.45]
SEARCH_BLURS = [0.03, 0.04, 0.05, 0.065, 0.08]


# ----------------------------------------------------------------------------- prompt


@dataclass
class Prompt:
    """One text prompt and, per class in it, the character spans of that class's words."""

    text: str
    classes: list[int]  # vocabulary indices (0-based), prompt order
    spans: list[list[tuple[int, int]]]


def build_prompt(vocab: Vocabulary, classes: list[int], prefix: str, join_words: bool) -> Prompt:
    """Prefix + every prompt word (name and synonyms) of each class, separated by spaces.

    The updated code's prompt ("A picture of " + the class names, in
    PnP_OVSS_0514_updated_segmentation.py), with synonyms added.
    """
    text = prefix
    spans: list[list[tuple[int, int]]] = []
    for index in classes:
        own = []
        for word in vocab.classes[index].prompts:
            if join_words:
                word = word.replace(" ", "").replace("-", "")
            if text and not text.endswith(" "):
                text += " "
            own.append((len(text), len(text) + len(word)))
            text += word
        spans.append(own)
    return Prompt(text, list(classes), spans)


def encode_prompts(
    itm: ItmModel, prompts: list[Prompt], enc_token: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (R, T), attention mask (R, T) and class weights (R, Kmax, T).

    weights[r, k] averages the tokens of prompt r's class k: the mean over word pieces of the
    updated code (`Mean_over_filtered_label_tokens`), found from character offsets so that
    WordPiece and BPE tokenizers both work.
    """
    enc = itm.tokenizer(
        [p.text for p in prompts], padding=True, return_offsets_mapping=True, return_tensors="pt"
    )
    offsets = enc["offset_mapping"]
    kmax = max(len(p.classes) for p in prompts)
    weights = torch.zeros(len(prompts), kmax, offsets.shape[1])
    for r, prompt in enumerate(prompts):
        starts, ends = offsets[r, :, 0], offsets[r, :, 1]
        real = ends > starts  # special and padding tokens have empty offsets
        for k, spans in enumerate(prompt.spans):
            hit = torch.zeros_like(real)
            for s, e in spans:
                hit |= real & (starts < e) & (ends > s)
            if not hit.any():
                raise UsageError(f"class {prompt.text[spans[0][0] : spans[0][1]]!r} has no tokens")
            weights[r, k, hit] = 1.0 / float(hit.sum())
    ids = enc["input_ids"].clone()
    if enc_token and itm.enc_token_id is not None:
        ids[:, 0] = itm.enc_token_id
    dev = itm.device
    return ids.to(dev), enc["attention_mask"].to(dev), weights.to(dev)


def split_to_fit(
    itm: ItmModel, vocab: Vocabulary, classes: list[int], prefix: str, join_words: bool
) -> list[Prompt]:
    """One prompt for the classes, or halves of the list until each fits the text encoder."""
    prompt = build_prompt(vocab, classes, prefix, join_words)
    if len(itm.tokenizer(prompt.text)["input_ids"]) <= itm.max_text_tokens:
        return [prompt]
    if len(classes) == 1:
        raise UsageError(
            f"class {vocab.classes[classes[0]].name!r}: its name and synonyms are longer than "
            f"the {itm.max_text_tokens} tokens the text encoder takes"
        )
    half = len(classes) // 2
    return split_to_fit(itm, vocab, classes[:half], prefix, join_words) + split_to_fit(
        itm, vocab, classes[half:], prefix, join_words
    )


# ---------------------------------------------------------------- GradCAM and DropOut


def gradcam(
    itm: ItmModel,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layer: int,
    head: int | None,
) -> torch.Tensor:
    """Cross-attention x positive gradient of the match logit, per text token: (R, T, N) >= 0.

    The image CLS column is dropped and padding rows are zeroed, as in the authors' patched
    LAVIS (Files to replace for BLIP/blip_image_text_matching.py).
    """
    logits, attention = itm.match_logits_and_attention(pixels, input_ids, attention_mask, layer)
    (grad,) = torch.autograd.grad(logits.sum(), attention)
    cam = attention[..., 1:] * grad[..., 1:].clamp(min=0)
    cam = cam[:, head] if head is not None else cam.mean(dim=1)
    return (cam.clamp(min=0) * attention_mask[:, :, None]).detach()


def drop_schedule(schedule: str, passes: int, patches: int, total: int) -> list[int]:
    """How many patches are dropped after each pass but the last: fixed = the updated code's
    `save_len`, halving = the CVPR-era code's N/2^(t+1)."""
    if schedule == "halving":
        return [total // 2 ** (t + 1) for t in range(passes - 1)]
    return [patches] * (passes - 1)


def drop_patches(
    pixels: torch.Tensor, dropped: torch.Tensor, patch: int, fill: torch.Tensor
) -> torch.Tensor:
    """Replace each dropped patch (R, N bool, row-major grid) by the fill colour (3,)."""
    rows, _, size, _ = pixels.shape
    grid = size // patch
    mask = dropped.view(rows, 1, grid, grid).float()
    mask = F.interpolate(mask, scale_factor=patch, mode="nearest")
    return pixels * (1 - mask) + fill.view(1, 3, 1, 1) * mask


@dataclass
class DropoutRun:
    """Aggregated class maps and, for inspection, each pass's maps and dropped patches."""

    maps: torch.Tensor  # (R, Kmax, N) summed over passes
    pass_maps: list[torch.Tensor]  # per pass (R, Kmax, N), after zeroing dropped patches
    pass_salience: list[torch.Tensor]  # per pass (R, N) class-agnostic salience
    dropped: list[torch.Tensor]  # per pass (R, N) bool: patches blanked in that pass's input


def salience_dropout(
    itm: ItmModel,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    weights: torch.Tensor,
    cfg: PnPSettings,
) -> DropoutRun:
    """GradCAM passes, each with the most salient patches so far blanked out; maps summed.

    Salience DropOut as both official code versions run it (drops accumulate; pass 0 is
    weighted by `first_pass_weight`, 2 in both).
    """
    rows, _, size, _ = pixels.shape
    patch = itm.patch_size
    total_patches = (size // patch) ** 2
    schedule = drop_schedule(
        cfg.dropout_schedule, cfg.dropout_passes, cfg.dropout_patches, total_patches
    )
    mean = torch.tensor(itm.mean, device=pixels.device)
    std = torch.tensor(itm.std, device=pixels.device)
    fill = torch.zeros(3, device=pixels.device) if cfg.drop_fill == "mean" else -mean / std
    class_tokens = (weights > 0).any(dim=1).float()  # (R, T)
    dropped = torch.zeros(rows, total_patches, dtype=torch.bool, device=pixels.device)
    total = torch.zeros(rows, weights.shape[1], total_patches, device=pixels.device)
    run = DropoutRun(total, [], [], [])
    for t in range(cfg.dropout_passes):
        run.dropped.append(dropped.clone())
        x = drop_patches(pixels, dropped, patch, fill)
        cam = gradcam(itm, x, input_ids, attention_mask, cfg.layer, cfg.head)
        maps = weights @ cam  # (R, K, N): mean over each class's tokens
        if cfg.normalize_passes:
            maps = _minmax(maps)
        maps = maps.masked_fill(dropped[:, None, :], 0.0)
        total += (cfg.first_pass_weight if t == 0 else 1.0) * maps
        salience = (cam * class_tokens[:, :, None]).sum(dim=1).masked_fill(dropped, -torch.inf)
        run.pass_maps.append(maps)
        run.pass_salience.append(salience)
        if t < len(schedule):
            count = min(schedule[t], total_patches - int(dropped[0].sum()))
            if count > 0:
                dropped = dropped.scatter(1, salience.topk(count, dim=1).indices, True)
    return run


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] along the last axis; constant rows become 0. Scale-free on purpose:
    GradCAM values of small or random models can be ~1e-14."""
    lo = x.amin(dim=-1, keepdim=True)
    span = x.amax(dim=-1, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), 0.0)


# ----------------------------------------------------------------------- refinement


def refine(maps: torch.Tensor, image: np.ndarray, cfg: PnPSettings) -> np.ndarray:
    """Class maps (k, P, P) -> probabilities (k+1, H, W), channel 0 background (updated code:
    threshold, upsampling, background, `blurring`, softmax, dense CRF)."""
    channels, add_background = unaries(maps, image, cfg)
    return pnp_probs(channels, image, cfg.crf, add_background)


def unaries(maps: torch.Tensor, image: np.ndarray, cfg: PnPSettings) -> tuple[np.ndarray, bool]:
    """refine() up to the CRF: the CRF's input channels, and whether channel 0 is background."""
    height, width = image.shape[:2]
    # Relative threshold: min-max to [0, 1], keep pixels >= tau with their raw values (updated
    # code, Run_seg*.sh --threshold).
    kept = torch.where(_minmax(maps.flatten(1)).view_as(maps) >= cfg.threshold, maps, 0.0)
    up = F.interpolate(
        kept[None].float().cpu(), size=(height, width), mode="bilinear", align_corners=True
    )[0]
    add_background = (
        cfg.background_below_classes is None or len(maps) < cfg.background_below_classes
    )
    if add_background:
        # Background is where every class map, upsampled to the image, is exactly zero (updated
        # code); deciding it on the patch grid instead covered up to 59 % of a photo's pixels
        # where the official code marks almost none.
        background = (up == 0).all(dim=0, keepdim=True).float()
        up = torch.cat([background, up])
    channels = up.numpy().astype(np.float32)
    if cfg.blur_sigma > 0:
        sigma = cfg.blur_sigma * max(height, width)
        channels = np.stack([gaussian_filter(c, sigma) for c in channels])
    channels = _minmax(torch.from_numpy(channels).flatten(1)).view(channels.shape).numpy()
    if cfg.softmax:
        channels = torch.from_numpy(channels).softmax(dim=0).numpy()
    return channels, add_background


# ---------------------------------------------------------------------- the method


class PnPSegmenter:
    """The `pnp` method: PnP-OVSS on a BLIP or BridgeTower ITM model."""

    name = "pnp"

    def __init__(self, cfg: PnPSettings, device: str) -> None:
        self.cfg = cfg
        self.itm = load_itm(cfg.model, device)
        itm = self.itm
        if cfg.resolution % itm.patch_size:
            raise UsageError(
                f"method pnp: settings.resolution {cfg.resolution} is not a multiple of the "
                f"model's patch size {itm.patch_size} (e.g. {itm.patch_size * 21})"
            )
        # The last layer only feeds the ITM head through token 0, so class tokens get no
        # gradient there (checked on small random-weight BLIP and BridgeTower models).
        if not 0 <= cfg.layer < itm.num_layers - 1:
            raise UsageError(
                f"method pnp: settings.layer {cfg.layer} is out of range; {itm.name} has "
                f"{itm.num_layers} cross-attention layers and layers 0..{itm.num_layers - 2} "
                "give class-token gradients"
            )
        if cfg.head is not None and not 0 <= cfg.head < itm.num_heads:
            raise UsageError(
                f"method pnp: settings.head {cfg.head} is out of range; {itm.name} has "
                f"{itm.num_heads} heads (0..{itm.num_heads - 1})"
            )
        self.clip: ClipModel | None = None
        if cfg.class_filter == "clip":
            try:
                self.clip = load_clip(
                    cfg.clip_model, cfg.clip_pretrained, cfg.clip_checkpoint, device
                )
            except ModelLoadError as exc:
                raise ModelLoadError(
                    f"method pnp, CLIP presence filter (settings.clip_model): {exc}\n"
                    "For pnp, give the CLIP weights as settings.clip_checkpoint in a recipe, or "
                    "set class_filter: all to put every class in the prompt without CLIP."
                ) from exc

    def describe(self) -> dict[str, Any]:
        """Settings and model provenance for run.json."""
        info: dict[str, Any] = {
            "method": self.name,
            "settings": self.cfg.to_json(),
            "backbone": {"name": self.itm.name, "kind": self.itm.kind},
        }
        if self.clip is not None:
            info["presence_filter"] = {"name": self.clip.name, "weights": self.clip.source}
        return info

    def segment_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[SegResult]:
        """Segment each image; all prompts of the batch share the forward/backward passes."""
        return [finish() for finish in self.forward_batch(images, vocab)]

    def forward_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[PnPFinish]:
        """The model's part for each image: the refined class maps, before the CRF."""
        cfg = self.cfg
        presence = clip_presence(self.clip, images, vocab) if self.clip is not None else None
        everything = list(range(len(vocab)))
        chosen = [
            everything
            if presence is None
            else np.flatnonzero(presence[i] >= cfg.presence_threshold).tolist()
            for i in range(len(images))
        ]
        prompts: list[Prompt] = []
        owners: list[int] = []
        for index, classes in enumerate(chosen):
            if classes:
                found = split_to_fit(self.itm, vocab, classes, cfg.prompt_prefix, cfg.join_words)
                prompts += found
                owners += [index] * len(found)
        maps: list[torch.Tensor] = []
        if prompts:
            ids, mask, weights = encode_prompts(self.itm, prompts, cfg.enc_token)
            pixels = self._pixels(images)[owners]
            maps = list(salience_dropout(self.itm, pixels, ids, mask, weights, cfg).maps)
        grid = cfg.resolution // self.itm.patch_size
        results = []
        for index, image in enumerate(images):
            mine = [r for r, owner in enumerate(owners) if owner == index]
            classes = [c for r in mine for c in prompts[r].classes]
            class_maps = [maps[r][: len(prompts[r].classes)] for r in mine]
            stacked = (
                torch.cat(class_maps).view(-1, grid, grid)
                if class_maps
                else torch.zeros(0, grid, grid)
            )
            scores = None if presence is None else presence[index]
            results.append(self._finish(stacked, classes, image, len(vocab), scores))
        return results

    def _pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """Squash-resize to resolution x resolution, bicubic, then normalise (updated code:
        Dataset.py `PascalVOC.__getitem__`)."""
        size = self.cfg.resolution
        arrays = [
            np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.itm.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.itm.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.itm.device)

    def _finish(
        self,
        maps: torch.Tensor,
        classes: list[int],
        image: np.ndarray,
        num_classes: int,
        presence: np.ndarray | None,
    ) -> PnPFinish:
        channels, add_background = (
            unaries(maps, image, self.cfg) if classes else (np.zeros((0, 0, 0), np.float32), True)
        )
        return PnPFinish(
            image, channels, add_background, self.cfg.crf, classes, num_classes, presence
        )


def build(settings: dict[str, Any] | PnPSettings, device: str) -> PnPSegmenter:
    """Factory used by the method registry (recipe settings are validated first)."""
    return PnPSegmenter(PnPSettings.coerce(settings), device)


def search_space(settings: PnPSettings, device: str) -> dict[str, list[Any]]:
    """The values `autolabel tune` tries for each searched setting (loads the ITM model)."""
    itm = load_itm(settings.model, device)
    return {
        # The last layer gives class tokens no gradient (see PnPSegmenter.__init__).
        "layer": list(range(itm.num_layers - 1)),
        "head": list(range(itm.num_heads)),
        "threshold": list(SEARCH_THRESHOLDS),
        "blur_sigma": list(SEARCH_BLURS),
    }
