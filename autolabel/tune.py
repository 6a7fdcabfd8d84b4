"""Label-free hyperparameter search with PnP-OVSS's CLIP reward.

PnP-OVSS: Luo et al., CVPR 2024, arXiv:2311.17095. The reward follows the authors' search code,
`Search()` in pnp_get_attention_textloc_weaklysupervised_search.py of
github.com/letitiabanana/PnP-OVSS (commit 687a4e5; also at e439962).

For a candidate setting, each image is segmented; for each class the image is tagged with, the
class's region is kept and the rest blanked, and CLIP is asked whether that masked image looks
more like the class than a blank image does. The reward is the fraction of tagged classes for
which it does. Random search (grid points drawn without replacement) keeps the best setting.
Every evaluated candidate is appended to a JSONL log, so an interrupted search resumes.

With reviewed masks (`--gt-coco`), the reward is instead the mean IoU against them
(`miou_reward`), on the images that have them; the search and log are the same, and the recipe
holds the best setting only if a paired bootstrap over those images says it beats the default
(`bootstrap_confidence`), since a gain on a few images may be noise.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.config import Recipe, TuneConfig, save_recipe
from autolabel.errors import ModelLoadError, UsageError
from autolabel.evaluate import (
    SegmentationScores,
    annotation_rle,
    confusion_miou,
    match_categories,
    pair_file_names,
)
from autolabel.io.coco import CocoFile, read_coco
from autolabel.io.resize import resize_labels
from autolabel.methods.base import (
    Segmenter,
    SegResult,
    build_segmenter,
    check_tunable,
    search_space,
    validate_settings,
)
from autolabel.models.clip import ClipModel
from autolabel.models.zeroshot import class_text, clip_inputs, clip_presence, clip_probabilities
from autolabel.vocab import Vocabulary

Space = dict[str, list[Any]]
LOG_SUFFIX = ".tune.jsonl"


# ------------------------------------------------------------------------- the search


@dataclass
class Trial:
    """One evaluated candidate."""

    params: dict[str, Any]
    reward: float
    seconds: float = 0.0
    default: bool = False


@dataclass
class SearchResult:
    """All trials of a search, the default's and the best one."""

    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        """The highest reward; on ties the earliest (so the default wins ties)."""
        return max(self.trials, key=lambda t: t.reward)

    @property
    def default(self) -> Trial | None:
        """The trial of the starting settings."""
        return next((t for t in self.trials if t.default), None)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def candidates(space: Space, seed: int) -> Iterator[dict[str, Any]]:
    """Every grid point once, in a seeded random order."""
    names = list(space)
    sizes = [len(space[n]) for n in names]
    total = math.prod(sizes)
    for index in random.Random(seed).sample(range(total), total):
        params = {}
        for name, size in zip(names, sizes, strict=True):
            index, pick = divmod(index, size)
            params[name] = space[name][pick]
        yield params


def random_search(
    space: Space,
    evaluate: Callable[[dict[str, Any]], float],
    budget: int,
    seed: int,
    log_path: Path,
    fingerprint: str,
    default: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Evaluate the default, then random grid points, until `budget` trials are logged.

    Trials already in the log (same fingerprint) are reused, not re-evaluated. `progress` is
    called with (done, budget) after each trial.
    """
    if budget < 1:
        raise UsageError("autolabel tune: --budget must be at least 1")
    result = SearchResult(_read_log(log_path, fingerprint))
    seen = {_key(t.params) for t in result.trials}
    if not log_path.exists():
        _append(log_path, {"fingerprint": fingerprint})
    queue: list[tuple[dict[str, Any], bool]] = []
    if default is not None:
        queue.append((json.loads(json.dumps(default)), True))  # tuples -> lists, as in the log
    stream = ((p, False) for p in candidates(space, seed))
    if progress:
        progress(min(len(result.trials), budget), budget)

    def next_candidate() -> tuple[dict[str, Any], bool] | None:
        if queue:
            return queue.pop(0)
        return next(stream, None)

    while len(result.trials) < budget:
        item = next_candidate()
        if item is None:
            break  # the whole grid has been evaluated
        params, is_default = item
        if _key(params) in seen:
            continue
        start = time.perf_counter()
        reward = float(evaluate(params))
        trial = Trial(params, reward, round(time.perf_counter() - start, 3), is_default)
        _append(log_path, {"trial": trial.__dict__})
        result.trials.append(trial)
        seen.add(_key(params))
        if progress:
            progress(len(result.trials), budget)
    return result


def _read_log(path: Path, fingerprint: str) -> list[Trial]:
    if not path.exists():
        return []
    trials = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the tune log ({exc.strerror or exc})") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                # A line cut short by an interrupted write: drop it so appends stay valid JSONL.
                from autolabel.io.atomic import atomic_write_text

                atomic_write_text(path, "".join(f"{kept}\n" for kept in lines[:-1]))
                continue
            raise UsageError(
                f"{path}, line {lineno}: not JSON; pass --restart to start the search over"
            ) from exc
        if "fingerprint" in record and record["fingerprint"] != fingerprint:
            raise UsageError(
                f"{path} is the log of a search with other images, vocabulary, tags or base "
                "settings; pass --restart to discard it, or write the recipe elsewhere"
            )
        if "trial" in record:
            trials.append(Trial(**record["trial"]))
    return trials


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()


def fingerprint(data: dict[str, Any]) -> str:
    """Stable hash of what a search depends on; a log with another one is refused."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------- the reward


class ClipReward:
    """PnP-OVSS's weak reward: does CLIP prefer the class on its masked region over a blank?

    Deviations from the authors' search code (`Search()`), kept because they make the reward
    usable on any vocabulary: the softmax runs over the tagged classes *and* the background words
    (with tagged classes only, an image with one tag can never score), and the mask is the
    method's own final region (label == class) rather than a re-thresholded blurred map.
    """

    def __init__(self, clip: ClipModel, vocab: Vocabulary) -> None:
        self.clip = clip
        text, owners = class_text(clip, vocab)
        owner = torch.tensor(owners, device=text.device)
        per_class = torch.stack([text[owner == k + 1].mean(dim=0) for k in range(len(vocab))])
        self.classes = per_class / per_class.norm(dim=-1, keepdim=True)
        self.background = text[owner == 0]

    @torch.no_grad()
    def hits(self, image: np.ndarray, result: SegResult, tags: list[int]) -> int:
        """How many tagged classes (0-based) pass the masked-vs-blank test on this image."""
        if not tags:
            return 0
        clip = self.clip
        size = clip.image_size
        normalized = clip.normalize(clip_inputs(clip, [image]))  # (1, 3, S, S)
        masks = np.stack([resize_labels(result.labels == k + 1, (size, size)) for k in tags])
        keep = torch.from_numpy(masks).to(normalized.device, normalized.dtype)[:, None]
        # Zero in normalised space is the dataset-mean colour: the blank of the paper's code.
        batch = torch.cat([normalized * keep, torch.zeros_like(normalized)])
        text = torch.cat([self.classes[tags], self.background])
        probs = clip_probabilities(clip, batch, text)
        positions = torch.arange(len(tags), device=probs.device)
        masked, blank = probs[positions, positions], probs[-1, positions]
        return int((masked > blank).sum())


@dataclass
class RewardSet:
    """What a search scores each candidate on: the images, their tags (0-based) and the reward."""

    reward: ClipReward
    images: list[np.ndarray]
    tags: list[list[int]]
    vocab: Vocabulary
    batch_size: int = 1

    def score(self, segmenter: Segmenter) -> float:
        """Segment the images and return the fraction of tagged classes that pass the test."""
        total = sum(len(t) for t in self.tags)
        if total == 0:
            raise UsageError("autolabel tune: no image has a tag from the vocabulary")
        hits = 0
        step = self.batch_size
        for start in range(0, len(self.images), step):
            chunk = self.images[start : start + step]
            for image, result, own in zip(
                chunk,
                segmenter.segment_batch(chunk, self.vocab),
                self.tags[start : start + step],
                strict=True,
            ):
                hits += self.reward.hits(image, result, own)
        return hits / total


IGNORE = -1  # ground-truth pixels of categories outside the vocabulary: not scored


def miou_reward(predictions: list[np.ndarray], truths: list[np.ndarray], num_classes: int) -> float:
    """Mean IoU of label maps against ground-truth label maps, the reward with reviewed masks.

    One confusion matrix is summed over all the images (pixels where the truth is IGNORE are
    left out); for each class c, background (0) included, that occurs in the truth or the
    predictions, IoU_c = |pred = c and truth = c| / |pred = c or truth = c|; the reward is the
    mean of these IoUs, as `autolabel eval --gt-masks` computes mIoU. It is 1.0 exactly when
    every scored pixel is right, and a class painted where the truth has none counts as 0.
    `num_classes` is K + 1 (background included); predictions are resized (nearest) to the
    truth's size when they differ.
    """
    return float(confusion_miou(_confusions(predictions, truths, num_classes).sum(0)))


def _confusions(predictions: list[np.ndarray], truths: list[np.ndarray], num_classes: int):
    """(images, K+1, K+1) per-image confusion matrices [truth, prediction]."""
    out = []
    for pred, truth in zip(predictions, truths, strict=True):
        scores = SegmentationScores(num_classes, ignore_index=IGNORE)
        scores.add(resize_labels(pred, truth.shape), truth)  # a no-op at the same size
        out.append(scores.confusion)
    return np.stack(out)


@dataclass
class GroundTruthSet:
    """Images with reviewed masks (label maps at the images' original size) and the vocabulary:
    scores a candidate by `miou_reward`, in place of RewardSet's CLIP reward.

    The per-image confusion matrices of every setting scored are kept (a few KB each), so the
    bootstrap guard compares the default and the best without segmenting the images again.
    """

    images: list[np.ndarray]
    truths: list[np.ndarray]
    vocab: Vocabulary
    batch_size: int = 1
    _scored: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def predict(self, segmenter: Segmenter) -> list[np.ndarray]:
        """The segmenter's label map of each image."""
        predictions = []
        step = self.batch_size
        for start in range(0, len(self.images), step):
            chunk = self.images[start : start + step]
            predictions += [r.labels for r in segmenter.segment_batch(chunk, self.vocab)]
        return predictions

    def score(self, segmenter: Segmenter) -> float:
        """Segment the images and return the mean IoU against their ground truth."""
        return float(confusion_miou(self.confusions(segmenter).sum(0)))

    def confusions(self, segmenter: Segmenter) -> np.ndarray:
        """(images, K+1, K+1) per-image confusion matrices [truth, prediction]."""
        key = json.dumps(segmenter.describe()["settings"], sort_keys=True, default=str)
        if key not in self._scored:
            predictions = self.predict(segmenter)
            self._scored[key] = _confusions(predictions, self.truths, len(self.vocab) + 1)
        return self._scored[key]


def bootstrap_confidence(
    default: np.ndarray, best: np.ndarray, rounds: int = 2000, seed: int = 0
) -> float:
    """How often the best setting's mIoU beats the default's when the reviewed images are
    resampled with replacement (paired: the same images for both); ties count half.

    default, best: (images, K+1, K+1) per-image confusion matrices of the two settings.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(default), size=(rounds, len(default)))
    gain = confusion_miou(best[picks].sum(1)) - confusion_miou(default[picks].sum(1))
    return float(((gain > 0).sum() + 0.5 * (gain == 0).sum()) / rounds)


@dataclass
class ReviewedMasks:
    """A COCO file of reviewed masks matched to a folder's images: images by file name (the
    relative path, else a base name unique on both sides) and categories by name, as
    `autolabel eval --gt-coco` matches them."""

    path: Path
    coco: CocoFile
    classes: dict[Any, int | None]  # category id -> vocabulary class (1-based) or None
    by_rel: dict[str, dict[str, Any]]  # relative path of a folder image -> its COCO image

    @classmethod
    def match(cls, path: Path, vocab: Vocabulary, rels: list[str], folder: Path) -> ReviewedMasks:
        """Read and match; UsageError when no image or no category matches."""
        where = f"--gt-coco {path}"
        coco = read_coco(path, where=where)
        classes = match_categories(coco.categories, vocab.names)
        if not any(v is not None for v in classes.values()):
            raise UsageError(
                f"{where}: none of its categories ({', '.join(coco.names) or 'none'}) is named "
                f"like a vocabulary class ({', '.join(vocab.names)})"
            )
        pairs = pair_file_names(rels, coco.images)
        if not pairs:
            raise UsageError(
                f"{where}: none of its images has the file name of an image in {folder} "
                "(the relative path, or a base name unique on both sides)"
            )
        return cls(path, coco, classes, {rels[index]: image for index, image in pairs})

    def label_map(self, rel: str, size: tuple[int, int]) -> np.ndarray:
        """The painted ground truth of a folder image of (height, width) `size`."""
        image = self.by_rel[rel]
        height, width = image.get("height", size[0]), image.get("width", size[1])
        if (height, width) != tuple(size):
            raise UsageError(
                f"--gt-coco {self.path}: {image['file_name']} is {width}x{height}, the image "
                f"{rel} is {size[1]}x{size[0]}"
            )
        anns = self.coco.annotations[image["id"]]
        return paint_ground_truth(anns, self.classes, tuple(size), f"--gt-coco {self.path}")

    def instances(self, rels: list[str]) -> int:
        """How many annotations of vocabulary classes the images have."""
        return sum(
            self.classes.get(ann["category_id"]) is not None
            for rel in rels
            for ann in self.coco.annotations[self.by_rel[rel]["id"]]
        )


def paint_ground_truth(
    annotations: list[dict[str, Any]],
    classes: dict[Any, int | None],
    size: tuple[int, int],
    where: str = "--gt-coco",
) -> np.ndarray:
    """An H x W int32 label map painted from one image's COCO annotations (RLE, uncompressed
    RLE or polygons): 0 where no annotation lies, the vocabulary class of each instance (later
    ones win on overlap), IGNORE under categories outside the vocabulary unless a vocabulary
    instance covers the pixel."""
    from pycocotools import mask as mask_utils

    labels = np.zeros(size, np.int32)
    ordered = sorted(annotations, key=lambda a: classes.get(a["category_id"]) is not None)
    for ann in ordered:  # stable: unmatched categories first, then file order
        mask = mask_utils.decode(annotation_rle(ann, size)).astype(bool)
        if mask.shape != tuple(size):
            raise UsageError(
                f"{where}: annotation {ann.get('id')!r} is a {mask.shape[1]}x{mask.shape[0]} "
                f"mask on a {size[1]}x{size[0]} image"
            )
        cls = classes.get(ann["category_id"])
        labels[mask] = IGNORE if cls is None else cls
    return labels


def make_evaluator(
    method: str, base: dict[str, Any], device: str, sample: RewardSet | GroundTruthSet
) -> Callable[[dict[str, Any]], float]:
    """The reward of a candidate: build the method with base + candidate settings, score it."""

    def evaluate(params: dict[str, Any]) -> float:
        return sample.score(build_segmenter(method, {**base, **params}, device))

    return evaluate


# --------------------------------------------------------------------------- the tags


def class_lookup(vocab: Vocabulary) -> dict[str, int]:
    """Lower-cased names and synonyms -> 0-based class index."""
    return {p.strip().lower(): i for i, c in enumerate(vocab.classes) for p in c.prompts}


def load_tags(path: Path, vocab: Vocabulary, rels: list[str]) -> list[list[int]]:
    """Image-level tags for the images (relative paths) from a COCO JSON or a `file,tags` CSV.

    COCO: a category counts for an image if one of its annotations does. CSV: one row per image,
    `relative/path.jpg,cat;dog` (an optional header row starting with `file`). Names match
    vocabulary names or synonyms, case-insensitively; names outside the vocabulary are ignored.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--tags {path}: cannot read it ({exc})") from exc
    lookup = class_lookup(vocab)
    if path.suffix.lower() == ".json":
        by_file = _coco_tags(path, text, lookup)
    else:
        by_file = _csv_tags(path, text, lookup)
    by_name: dict[str, set[int] | None] = {}
    for rel, found in by_file.items():
        name = rel.rsplit("/", 1)[-1]
        by_name[name] = None if name in by_name else found  # None: ambiguous basename
    tags = []
    for rel in rels:
        found = by_file.get(rel)
        if found is None:
            found = by_name.get(rel.rsplit("/", 1)[-1]) or set()
        tags.append(sorted(found))
    if not any(tags):
        raise UsageError(
            f"--tags {path}: none of its file names match the images, or none of its tags is a "
            "vocabulary class"
        )
    return tags


def _coco_tags(path: Path, text: str, lookup: dict[str, int]) -> dict[str, set[int]]:
    coco = read_coco(path, text, where=f"--tags {path}")
    categories = {c["id"]: lookup.get(str(c["name"]).strip().lower()) for c in coco.categories}
    by_file: dict[str, set[int]] = {}
    for im in coco.images:
        found = by_file.setdefault(str(im["file_name"]), set())
        for ann in coco.annotations[im["id"]]:
            cls = categories.get(ann["category_id"])
            if cls is not None:
                found.add(cls)
    return by_file


def _csv_tags(path: Path, text: str, lookup: dict[str, int]) -> dict[str, set[int]]:
    by_file: dict[str, set[int]] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not row[0].strip() or (lineno == 1 and row[0].strip().lower() == "file"):
            continue
        if len(row) < 2:
            raise UsageError(f"--tags {path}, line {lineno}: expected `file,tag;tag`")
        names = [n.strip().lower() for cell in row[1:] for n in cell.split(";") if n.strip()]
        by_file[row[0].strip()] = {lookup[n] for n in names if n in lookup}
    return by_file


def clip_tags(
    clip: ClipModel, images: list[np.ndarray], vocab: Vocabulary, threshold: float
) -> list[list[int]]:
    """Tags from CLIP itself: the classes whose presence probability reaches the threshold."""
    presence = clip_presence(clip, images, vocab)
    return [np.flatnonzero(p >= threshold).tolist() for p in presence]


# ------------------------------------------------------------------------ the command


@dataclass
class TuneSummary:
    """What a search did and where it wrote.

    reward: "clip" (tags_source: where the tags came from, tagged_classes: how many) or "miou"
    (tags_source: the --gt-coco file, tagged_classes: its instances of vocabulary classes on the
    images used; skipped: images of the folder it has no entry for, left out).
    """

    result: SearchResult
    recipe_path: Path
    log_path: Path
    images: int
    tagged_classes: int
    tags_source: str
    space: Space
    reward: str = "clip"
    skipped: int = 0
    chosen: Trial | None = None  # what the recipe holds: the best, or the default if kept
    confidence: float | None = None  # with --gt-coco: bootstrap_confidence of best vs default


MIN_CONFIDENCE = 0.95  # with reviewed masks: the best replaces the default only this surely


def log_path_for(out: Path) -> Path:
    """The JSONL log of evaluated candidates kept next to the recipe."""
    return out.with_name(out.name + LOG_SUFFIX)


def run_tune(
    config: TuneConfig,
    progress: Callable[[int, int], None] | None = None,
    gt_coco: Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> TuneSummary:
    """Search the method's settings on the images and write the best as a recipe.

    gt_coco: reviewed masks as COCO (`autolabel pull` output or any export). The reward is then
    `miou_reward` against them instead of the CLIP reward, and only the images it has an entry
    for (matched by file name, as `autolabel eval --gt-coco` does) are sampled; it cannot be
    combined with tags (`config.tags`), and no reward CLIP is loaded. The recipe then holds the
    best setting only if it beats the default in at least `min_confidence` of bootstrap
    resamples of the reviewed images (`bootstrap_confidence`), else the default settings.
    """
    from autolabel.io.images import LoadedImage, iter_images, scan_images
    from autolabel.io.resize import fit_max_side
    from autolabel.vocab import load_vocabulary

    check_tunable(config.method)
    if config.out.suffix.lower() not in (".yaml", ".yml"):
        raise UsageError(f"-o {config.out}: the recipe must be a .yaml file")
    if config.max_images < 1:
        raise UsageError("autolabel tune: --max-images must be at least 1")
    if gt_coco is not None and config.tags is not None:
        raise UsageError(
            "autolabel tune: --gt-coco and --tags are exclusive: with reviewed masks the reward "
            "is their mean IoU, and tags are only used by the CLIP reward"
        )
    resolved = config.resolve()
    base = dict(resolved.settings)
    validated = validate_settings(config.method, base)  # before any image or model loads
    vocab = load_vocabulary(config.vocab, resolved.background)
    if not config.images.is_dir():
        raise UsageError(f"{config.images}: not a folder of images")
    entries, _ = scan_images(config.images)
    reviewed, skipped = None, 0
    if gt_coco is not None:  # only images with reviewed masks are sampled
        reviewed = ReviewedMasks.match(gt_coco, vocab, [e.rel for e in entries], config.images)
        skipped = len(entries) - len(reviewed.by_rel)
        entries = [e for e in entries if e.rel in reviewed.by_rel]
    step = max(1, len(entries) // config.max_images)  # spread the sample over the folder
    loaded = [im for im in iter_images(entries[::step]) if isinstance(im, LoadedImage)]
    loaded = loaded[: config.max_images]
    if not loaded:
        raise UsageError(f"{config.images}: no readable images")
    rels = [im.entry.rel for im in loaded]
    arrays = [fit_max_side(im.rgb, config.max_side) for im in loaded]

    identity: dict[str, Any] = {
        "method": config.method,
        "settings": base,
        "vocabulary": vocab.fingerprint(),
        "images": rels,
        "max_side": config.max_side,
    }
    sample: RewardSet | GroundTruthSet
    if reviewed is not None:
        truths = [reviewed.label_map(im.entry.rel, im.size) for im in loaded]
        counted = reviewed.instances(rels)
        digest = hashlib.sha256(b"".join(t.tobytes() for t in truths)).hexdigest()[:16]
        identity["ground_truth"] = digest  # the painted maps: other reviews restart the search
        source = str(reviewed.path)
        sample = GroundTruthSet(arrays, truths, vocab, config.batch_size)
    else:
        from autolabel.models.clip import load_clip

        try:
            clip = load_clip(
                config.clip_model, config.clip_pretrained, config.clip_checkpoint, config.device
            )
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"autolabel tune, reward CLIP (--clip-model): {exc}\n"
                "For the reward CLIP, pass the weights with --clip-checkpoint PATH."
            ) from exc
        if config.tags is not None:
            tags, source = load_tags(config.tags, vocab, rels), str(config.tags)
        else:
            tags, source = clip_tags(clip, arrays, vocab, config.tag_threshold), "CLIP"
        identity["tags"] = tags
        identity["clip"] = [config.clip_model, config.clip_pretrained, config.clip_checkpoint]
        counted = sum(len(t) for t in tags)
        sample = RewardSet(ClipReward(clip, vocab), arrays, tags, vocab, config.batch_size)
    space = search_space(config.method, validated, config.device)
    effective = build_segmenter(config.method, validated, config.device).describe()["settings"]
    default = {k: effective[k] for k in space if k in effective}
    log_path = log_path_for(config.out)
    if config.restart and log_path.exists():
        log_path.unlink()
    key = fingerprint(identity)
    evaluate = make_evaluator(config.method, base, config.device, sample)
    result = random_search(
        space, evaluate, config.budget, config.seed, log_path, key, default or None, progress
    )
    best = chosen = result.best
    default_trial = result.default
    confidence = None
    if (
        isinstance(sample, GroundTruthSet)
        and default_trial is not None
        and best is not default_trial
    ):
        # A few reviewed images are a small sample: keep the default unless the best setting
        # beats it on most resamples of them (a gain within the noise does not carry over).
        confidence = bootstrap_confidence(
            *(
                sample.confusions(
                    build_segmenter(config.method, {**base, **t.params}, config.device)
                )
                for t in (default_trial, best)
            )
        )
        if confidence < min_confidence:
            chosen = default_trial
    settings = {**base, **chosen.params}
    name = "reward" if gt_coco is None else "mIoU"
    if chosen is not best:
        note = (
            f"autolabel tune: kept the default settings (mIoU {chosen.reward:.3f}): the best "
            f"found ({best.reward:.3f}) beat them in only {confidence:.0%} of bootstrap resamples "
            f"of the images ({min_confidence:.0%} needed)"
        )
    else:
        note = f"autolabel tune: {name} {best.reward:.3f}"
        if default_trial is not None:
            note += f" (default settings {default_trial.reward:.3f}"
            note += ")" if confidence is None else f", beaten in {confidence:.0%} of resamples)"
    if gt_coco is None:
        note += f" on {len(arrays)} images, tags from {source}"
    else:
        note += f" on {len(arrays)} images with reviewed masks from {source}"
    note += f", {len(result.trials)} settings tried"
    save_recipe(
        Recipe(
            name=config.out.stem,
            method=config.method,
            model=settings.pop("model", None),
            pretrained=settings.pop("pretrained", None),
            background=resolved.background,
            settings=settings,
            description=note,
        ),
        config.out,
    )
    return TuneSummary(
        result,
        config.out,
        log_path,
        len(arrays),
        counted,
        source,
        space,
        "clip" if gt_coco is None else "miou",
        skipped,
        chosen,
        confidence,
    )
