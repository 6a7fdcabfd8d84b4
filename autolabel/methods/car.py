"""`car`: CLIP as RNN (Sun et al., CVPR 2024), training-free recurrent open-vocabulary segmentation.

Paper: Sun, Li, Torr, Gu, Li, "CLIP as RNN: Segment Countless Visual Concepts without Training
Endeavor", CVPR 2024, arXiv:2312.07661. Official code ("CaR code" in comments):
github.com/google-research/google-research, folder clip_as_rnn/ (paths as of commit 8d8a4f1b).

The loop is paper §3.2 / Algorithm 1 as the CaR code runs it (modeling/model/car.py:
`CaR._forward_car`, `_forward_stage`, `_filter_texts`). The hidden state is the set of live text
queries, h_0 = the vocabulary. Each step: f (gradcam.py) proposes one mask per live query, each
proposal is drawn onto the image as a visual prompt (prompts.py), g (a second CLIP) scores every
prompted image against the live queries with a 15-template score ensemble, and queries whose own
score P_ii is not above θ are dropped (the best one is kept if none passes). The loop stops when
a step drops nothing (at least two steps run). The last step's proposals go through a dense CRF;
the label map is the argmax over [background, surviving classes].

Vocabulary mapping: each class is ONE query, its name and synonyms joined by commas ("backpack,
bag"), which is how the official code writes synonyms; a recipe's `queries` can replace a class's
string (the VOC/COCO recipes use the CLIP-ES names, e.g. "person with clothes,people,human").
Separate synonym queries would compete in both softmaxes and split each other's score.

Two executions share the recurrence: the fast engine (default) and the reference engine, which
follows the official code's cost structure (trunk per step, one backward per query, the
affinity rebuilt per query, every prompted image encoded once per template, texts re-encoded
every step). Both give the same outputs; tests and benchmarks/car_cost.py compare them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from autolabel.methods import gradcam
from autolabel.methods.base import SegResult
from autolabel.methods.prompts import visual_prompt
from autolabel.methods.settings import CaRSettings
from autolabel.models import vit
from autolabel.models.clip import ClipModel, load_clip
from autolabel.models.precision import full_precision
from autolabel.refine.finish import CarFinish, CarPass
from autolabel.vocab import VocabClass, Vocabulary

# What `autolabel tune` searches: eta / theta / lambda over the ranges of the paper's Table 5
# and its per-dataset configs, and the prompt pairs its configs use (CaR code: configs/*.yaml).
SEARCH_SPACE: dict[str, list[Any]] = {
    "mask_threshold": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "confidence_threshold": [0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7],
    "clipes_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "visual_prompts": [["circle", "blur"], ["blur", "gray"], ["circle"], ["blur"]],
}


@dataclass
class Recurrence:
    """One image's hidden state: the live queries and what the last step produced."""

    live: list[int]  # query indices alive at the start of the current step
    step: int = 0
    previous_count: int = 0
    proposals: np.ndarray | None = None  # (rows, H, W) of the last step (or a fallback)
    proposal_rows: list[int] = field(default_factory=list)  # query of each proposal row
    scores: np.ndarray | None = None  # P_ii of the last step, per live query
    done: bool = False

    def advance(self, proposals: np.ndarray, diag: np.ndarray, theta: float, parity: bool):
        """Apply one step's outputs: prune by θ, keep proposals, decide whether to stop."""
        keep = [j for j, s in enumerate(diag) if s > theta] or [int(np.argmax(diag))]
        if float(proposals.max()) == 0.0 and self.proposals is not None:
            # The official code falls back to the previous step's proposals (all of them, so
            # rows no longer match the queries); outside parity we take the matching rows.
            if not parity:
                rows = [self.proposal_rows.index(q) for q in self.live]
                self.proposals = self.proposals[rows]
                self.proposal_rows = list(self.live)
        else:
            self.proposals, self.proposal_rows = proposals, list(self.live)
        self.scores = np.asarray(diag, dtype=np.float32)
        self.step += 1
        self.done = len(keep) == self.previous_count
        self.previous_count = len(keep)
        if not self.done:
            self.live = [self.live[j] for j in keep]
            self.scores = self.scores[keep]


class FastEngine:
    """f and g with exact savings over the CaR code's cost structure (text caches, trunk once per
    image, one batched backward per step, one refinement matmul, each prompted image encoded
    once)."""

    def __init__(self, f: ClipModel, g: ClipModel, settings: CaRSettings) -> None:
        self.f, self.g, self.settings = f, g, settings
        self.stats: Counter = Counter()
        self._embeddings: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def prepare(self, images: list[np.ndarray]) -> list[gradcam.CamImage]:
        """Run f's trunk once per image, batching images whose CAM inputs have the same size."""
        self._embeddings.clear()
        pixels = [self._cam_pixels(im) for im in images]
        states: list[gradcam.CamImage | None] = [None] * len(images)
        buckets: dict[tuple[int, ...], list[int]] = {}
        for i, px in enumerate(pixels):
            buckets.setdefault(tuple(px.shape), []).append(i)
        for members in buckets.values():
            batch = torch.cat([pixels[i] for i in members]).to(self.f.device)
            sizes = [images[i].shape[:2] for i in members]
            encoded = gradcam.encode_cam_images(
                self.f.model.visual, batch, sizes, self.settings.parity
            )
            for i, state in zip(members, encoded, strict=True):
                states[i] = state
        return states

    def _cam_pixels(self, image: np.ndarray) -> torch.Tensor:
        clip = self.f
        side = self.settings.cam_max_side
        return gradcam.cam_pixels(image, clip.patch_size, clip.mean, clip.std, side)

    @torch.no_grad()
    def propose(
        self, state: gradcam.CamImage, cam_texts: list[str], bg_texts: list[str]
    ) -> np.ndarray:
        """Refined CAMs (n, H, W) in [0, 1] for the live queries."""
        visual = self.f.model.visual
        fg = self.f.encode_text(cam_texts)
        bg = self.f.encode_text(bg_texts) if bg_texts else fg[:0]
        scale = self.f.model.logit_scale.exp()
        cams, backwards = gradcam.grad_cams(visual, state, fg, bg, scale)
        self.stats["backwards"] += backwards
        if self.settings.refine_cams:
            boxes = _boxes(cams, self.settings.clipes_threshold)
            cams = gradcam.refine(state.affinity, cams, boxes.to(cams.device))
        return gradcam.upsample(cams, state.size)

    @torch.no_grad()
    def classify(
        self, prompted: list[list[np.ndarray]], texts: list[list[str]]
    ) -> list[np.ndarray]:
        """P (n, n) per image: each distinct prompted image is encoded once, texts are cached."""
        keys = [[_key(im) for im in images] for images in prompted]
        todo: dict[bytes, np.ndarray] = {}
        for images, image_keys, queries in zip(prompted, keys, texts, strict=True):
            if len(queries) > 1:  # one live query: P = [[1]] exactly, no encoding needed
                for im, key in zip(images, image_keys, strict=True):
                    if key not in self._embeddings:
                        todo[key] = im
        if todo:
            feats = _classifier_features(self.g, list(todo.values()), self.settings)
            self._embeddings.update(zip(todo, feats, strict=True))
        scale = self.g.model.logit_scale.exp()
        out = []
        for image_keys, queries in zip(keys, texts, strict=True):
            if len(queries) == 1:
                out.append(np.ones((1, 1), dtype=np.float32))
                continue
            emb = torch.stack([self._embeddings[k] for k in image_keys])
            prompts = [t.format(q) for t in self.settings.templates for q in queries]
            text = self.g.encode_text(prompts).view(len(self.settings.templates), len(queries), -1)
            out.append(_ensemble(_logits(scale, emb, text.transpose(1, 2))))
        return out


class ReferenceEngine:
    """The official code's execution, kept to show that FastEngine changes cost, not outputs."""

    def __init__(self, f: ClipModel, g: ClipModel, settings: CaRSettings) -> None:
        self.f, self.g, self.settings = f, g, settings
        self.stats: Counter = Counter()

    @torch.no_grad()
    def prepare(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Keep each image's CAM input; the trunk runs again at every step."""
        side = self.settings.cam_max_side
        f = self.f
        return [
            (gradcam.cam_pixels(im, f.patch_size, f.mean, f.std, side), im.shape[:2])
            for im in images
        ]

    @torch.no_grad()
    def propose(self, state, cam_texts: list[str], bg_texts: list[str]) -> np.ndarray:
        """Per query: its own Grad-CAM pass and backward, its own affinity and refinement."""
        pixels, size = state
        visual = self.f.model.visual
        image = gradcam.encode_cam_images(
            visual, pixels.to(self.f.device), [size], self.settings.parity
        )[0]
        fg = _encode_uncached(self.f, cam_texts)
        bg = _encode_uncached(self.f, bg_texts) if bg_texts else fg[:0]
        scale = self.f.model.logit_scale.exp()
        cams, maps = [], None
        for index in range(len(cam_texts)):
            cam, weights = gradcam.grad_cam_single(visual, image, fg, bg, scale, index)
            self.stats["backwards"] += 1
            maps = maps or [*image.attention, weights]
            if self.settings.refine_cams:
                box = gradcam.box_mask(cam.cpu().numpy(), self.settings.clipes_threshold)
                cam = gradcam.refine_single(maps, cam, torch.from_numpy(box).to(cam.device))
            cams.append(cam)
        return gradcam.upsample(torch.stack(cams), size)

    @torch.no_grad()
    def classify(
        self, prompted: list[list[np.ndarray]], texts: list[list[str]]
    ) -> list[np.ndarray]:
        """Per image and template: encode all prompted images and the templated texts."""
        scale = self.g.model.logit_scale.exp()
        out = []
        for images, queries in zip(prompted, texts, strict=True):
            pixels = _classifier_pixels(self.g, images)
            per_template = []
            for template in self.settings.templates:
                emb = _classifier_embedding(self.g, pixels, self.settings)
                text = _encode_uncached(self.g, [template.format(q) for q in queries])
                per_template.append(_logits(scale, emb, text.T))
            out.append(_ensemble(torch.stack(per_template)))
        return out


def _logits(scale: torch.Tensor, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """scale x cosine of image and (transposed) text vectors, in fp32 under any --precision:
    _ensemble's double softmax reads them, and bf16 rounds a logit of 25 to steps of 0.125."""
    with full_precision(images.device):
        return scale * images.float() @ texts.float()


def _ensemble(logits: torch.Tensor) -> np.ndarray:
    """(templates, images, texts) logits -> P = softmax(Σ_templates softmax(logits))."""
    summed = logits.float().softmax(dim=-1).sum(dim=0)
    return summed.softmax(dim=-1).cpu().numpy()


def _boxes(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    grid = cams.cpu().numpy()
    return torch.from_numpy(np.stack([gradcam.box_mask(c, threshold) for c in grid]))


def _key(image: np.ndarray) -> bytes:
    return hashlib.sha1(image.tobytes()).digest() + repr(image.shape).encode()


def _encode_uncached(clip: ClipModel, prompts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings without the cache (the reference path's per-step cost)."""
    tokens = clip.tokenizer(prompts).to(clip.device)
    with full_precision(clip.device):  # as ClipModel.encode_text
        feats = clip.model.encode_text(tokens).float()
    return feats / feats.norm(dim=-1, keepdim=True)


def _classifier_pixels(clip: ClipModel, images: list[np.ndarray]) -> torch.Tensor:
    """CLIP's own preprocessing: bicubic short side to the input size, centre crop, normalise."""
    size = clip.image_size
    out = []
    for im in images:
        pil = TF.resize(Image.fromarray(im), size, interpolation=InterpolationMode.BICUBIC)
        out.append(TF.normalize(TF.to_tensor(TF.center_crop(pil, size)), clip.mean, clip.std))
    return torch.stack(out).to(clip.device)


@torch.no_grad()
def _classifier_embedding(
    clip: ClipModel, pixels: torch.Tensor, settings: CaRSettings
) -> torch.Tensor:
    """g's image vector: the model's own pooling + proj after the second-to-last block.

    The official classifier skips the last block (CaR code: clip_wrapper.py,
    `forward_last_layer` with `repeat_last=False`); θ is calibrated to that. Its
    pooling is OpenAI CLIP's class token; a model trained with average pooling (open_clip
    pool_type "avg", e.g. the toy model) is pooled its own way.
    """
    visual = clip.model.visual
    x = vit.embed_tokens(visual, pixels)
    depth = vit.trunk_depth(visual, x.shape[1], settings.parity)
    if not settings.classifier_skip_last:
        depth = len(visual.transformer.resblocks)
    for block in visual.transformer.resblocks[:depth]:
        x, _ = vit.block_with_attention(block, x, average=False)
    x = visual.ln_post(x)
    pooled = x[:, 1:].mean(dim=1) if getattr(visual, "pool_type", "tok") == "avg" else x[:, 0]
    feats = pooled @ visual.proj
    return feats / feats.norm(dim=-1, keepdim=True)


def _classifier_features(
    clip: ClipModel, images: list[np.ndarray], settings: CaRSettings, batch: int = 16
) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch):
        pixels = _classifier_pixels(clip, images[start : start + batch])
        out.append(_classifier_embedding(clip, pixels, settings))
    return torch.cat(out)


@dataclass
class Pass:
    """One run of the recurrence over some classes (Context-style datasets run two)."""

    classes: list[int]  # vocabulary indices
    background: list[str]  # words for f's background queries
    prompts: list[str]
    bg_factor: float


class CaRSegmenter:
    """The `car` method."""

    name = "car"

    def __init__(self, settings: CaRSettings, device: str) -> None:
        self.settings = settings
        s = settings
        self.f = load_clip(s.model, s.pretrained, s.checkpoint, device)
        self.g = load_clip(
            s.classifier_model, s.classifier_pretrained, s.classifier_checkpoint, device
        )
        vit.check_plain_vit(self.f.model.visual, "CaR's proposal model (--model)")
        vit.check_plain_vit(self.g.model.visual, "CaR's classifier (--classifier-model)")
        engine = FastEngine if s.engine == "fast" else ReferenceEngine
        self.engine = engine(self.f, self.g, s)

    def describe(self) -> dict[str, Any]:
        """Settings and both backbones' provenance for run.json."""
        return {
            "method": self.name,
            "settings": self.settings.to_json(),
            "backbone": {"name": self.f.name, "weights": self.f.source},
            "classifier": {"name": self.g.name, "weights": self.g.source},
        }

    def query(self, cls: VocabClass) -> str:
        """The text query standing for a class: the recipe's string or name + synonyms."""
        custom = {k.lower(): v for k, v in self.settings.queries.items()}
        return custom.get(cls.name.lower(), ",".join(cls.prompts))

    def passes(self, vocab: Vocabulary) -> list[Pass]:
        """Things with the vocabulary's background words; then stuff, if the recipe names any."""
        s = self.settings
        stuff_names = {n.lower() for n in s.stuff_classes}
        stuff = [i for i, c in enumerate(vocab.classes) if c.name.lower() in stuff_names]
        things = [i for i in range(len(vocab)) if i not in stuff]
        out = []
        if things:
            out.append(Pass(things, list(vocab.background), s.visual_prompts, s.bg_factor))
        if stuff:
            thing_queries = [self.query(vocab.classes[i]) for i in things]
            out.append(Pass(stuff, thing_queries, s.stuff_visual_prompts, s.stuff_bg_factor))
        return out

    def segment_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[SegResult]:
        """Segment each image; all images advance through the recurrence in lockstep."""
        return [finish() for finish in self.forward_batch(images, vocab)]

    @torch.no_grad()
    def forward_batch(self, images: list[np.ndarray], vocab: Vocabulary) -> list[CarFinish]:
        """The recurrence for each image; the CRF and the label map are left to the finish."""
        states = self.engine.prepare(images)
        outputs = [self._run_pass(images, states, vocab, p) for p in self.passes(vocab)]
        s = self.settings
        return [
            CarFinish(image, [o[i] for o in outputs], len(vocab), s.crf, s.parity, s.crf_image)
            for i, image in enumerate(images)
        ]

    def _cam_text(self, query: str, step: int) -> str:
        mode = self.settings.cam_text
        if mode == "raw" or (mode == "official" and step == 0):
            return query
        return self.settings.cam_template.format(query)

    def _run_pass(
        self, images: list[np.ndarray], states: list, vocab: Vocabulary, run: Pass
    ) -> list[CarPass]:
        s = self.settings
        queries = [self.query(vocab.classes[i]) for i in run.classes]
        bg_texts = [s.cam_template.format(w) for w in run.background]
        recs = [Recurrence(list(range(len(queries)))) for _ in images]
        while not all(r.done for r in recs):
            active = [i for i, r in enumerate(recs) if not r.done]
            prompted, texts, proposals = [], [], []
            for i in active:
                live = [queries[q] for q in recs[i].live]
                cams = self.engine.propose(
                    states[i], [self._cam_text(q, recs[i].step) for q in live], bg_texts
                )
                proposals.append(cams)
                prompted.append(
                    [visual_prompt(images[i], c, s.mask_threshold, run.prompts) for c in cams]
                )
                texts.append(live)
            scores = self.engine.classify(prompted, texts)
            for i, cams, p in zip(active, proposals, scores, strict=True):
                recs[i].advance(cams, np.diag(p), s.confidence_threshold, s.parity)
        return [pass_of(rec, run) for rec in recs]


def pass_of(rec: Recurrence, run: Pass) -> CarPass:
    """A finished recurrence as its finish takes it: the last proposals and the survivors."""
    class_ids = [run.classes[q] + 1 for q in rec.live]
    return CarPass(rec.proposals, class_ids, [float(x) for x in rec.scores], run.bg_factor)


def build(settings: dict[str, Any] | CaRSettings, device: str) -> CaRSegmenter:
    """Factory for the method registry (recipe settings are validated first)."""
    return CaRSegmenter(CaRSettings.coerce(settings), device)


def search_space(settings: CaRSettings, device: str) -> dict[str, list[Any]]:
    """The values `autolabel tune` tries for each searched setting."""
    return {k: list(v) for k, v in SEARCH_SPACE.items()}
