"""Score methods on toy scenes end to end (generate -> run -> eval), for tests and benchmarks.

Methods run through the same runner and recipes a user gets; the raw read-outs of the toy
model (no attention change or NACLIP's, no CRF) go through the same instance step (min area)
so that every row is scored on the masks a run would write.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from autolabel.evaluate import SegmentationScores, evaluate_instances, evaluate_run
from autolabel.instances import Instances, instances_from_labels, semantic_from_instances
from autolabel.io.run_folder import RunImage
from autolabel.toyworld.export import write_dataset
from autolabel.toyworld.scenes import DEFAULT_SIZE
from autolabel.vocab import load_vocabulary

# The bundled recipe for each method on the toy model.
RECIPES = {"car": "toy", "fast": "toy-fast"}
# Raw read-outs: name -> last-block path in readout.dense_logits.
RAW = {"raw": "standard", "raw-naclip": "naclip"}
MIN_AREA = 16  # the run's default: components smaller than this are dropped


def make_scenes(folder: Path, count: int, seed: int) -> Path:
    """Write `count` scenes of `seed` (images/, masks/, vocab.txt) and return the folder."""
    write_dataset(folder, count, seed, DEFAULT_SIZE, overwrite=True)
    return folder


def score(
    method: str,
    scenes: Path,
    out: Path,
    device: str = "cpu",
    recipe: str | None = None,
    refine: str | None = None,
) -> dict[str, Any]:
    """Metrics of one method (or raw read-out) on a scenes folder, plus seconds per image.

    recipe: another recipe for the method (a name or a YAML path); default its toy recipe.
    refine: --refine for the run (default: the recipe's). With it, the instances are scored
    too: COCO mask AP against the scenes' instances.json ("instances"), the AP of the connected
    components of the same run's label map ("components": what the run would give without SAM's
    instances) and the share of touching same-class pairs that come out as two instances
    ("split").
    """
    if method in RAW:
        return _score_raw(RAW[method], scenes, device)
    from autolabel.config import RunConfig
    from autolabel.runner import run_job

    config = RunConfig(
        images=scenes / "images",
        vocab=scenes / "vocab.txt",
        out=out,
        method=method,
        recipe=recipe or RECIPES[method],
        device=device,
        min_area=MIN_AREA,
        overwrite=True,
        resume=False,
        refine=refine,
    )
    summary = run_job(config)
    if summary.failed:
        raise RuntimeError(f"{method}: {len(summary.failed)} images failed: {summary.failed[:3]}")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if r.get("status") == "ok"]
    metrics = evaluate_run(out, scenes / "masks", ignore_index=None).metrics
    if refine is not None:
        gt = scenes / "instances.json"
        metrics["instances"] = evaluate_instances(out, gt).metrics
        metrics["components"] = evaluate_instances(out, gt, components_of).metrics
        metrics["split"] = touching_pairs_split(out, scenes)
    return {**metrics, "seconds_per_image": float(np.mean(seconds))}


def components_of(image: RunImage) -> Instances:
    """The connected components of a run image's label map, as instances (MIN_AREA as the run);
    each scored by the area-weighted mean score of the run's instances it covers."""
    run = image.instances
    items = instances_from_labels(run.label_map, None, run.size, MIN_AREA)
    for component in items:
        weights = [(component.mask & inst.mask).sum() for inst in run]
        component.score = float(np.average([i.score for i in run], weights=weights))
    return Instances(run.size, run.names, items, run.scores)


def touching_pairs_split(run_dir: Path, scenes: Path, min_iou: float = 0.5) -> dict[str, Any]:
    """How many ground-truth pairs of touching objects of one class a run labelled as two
    instances: each object's best instance of its class (by IoU) is another one, both with IoU
    >= min_iou. Pairs are objects whose masks touch (8-connectivity)."""
    from scipy import ndimage

    from autolabel.instances import Instance
    from autolabel.io.coco import read_coco
    from autolabel.io.run_folder import read_run

    run = {image.file_name: image.instances for image in read_run(run_dir).images}
    gt = read_coco(scenes / "instances.json")
    pairs = split = 0
    for image in gt.images:
        objects = [Instance.from_dict(a) for a in gt.annotations[image["id"]]]
        predicted = run.get(image["file_name"])
        for i, a in enumerate(objects):
            grown = ndimage.binary_dilation(a.mask, np.ones((3, 3), bool))
            for b in objects[i + 1 :]:
                if b.category_id != a.category_id or not (grown & b.mask).any():
                    continue
                pairs += 1
                if predicted is None:
                    continue
                mine = [p for p in predicted if p.category_id == a.category_id]
                best = [_best_match(obj.mask, mine) for obj in (a, b)]
                if all(iou >= min_iou for _, iou in best) and best[0][0] != best[1][0]:
                    split += 1
    return {"pairs": pairs, "split": split, "fraction": split / pairs if pairs else None}


def _best_match(mask: np.ndarray, candidates: list) -> tuple[int, float]:
    """(index, IoU) of the candidate instance that overlaps a mask best; (-1, 0) if none."""
    best = (-1, 0.0)
    for index, inst in enumerate(candidates):
        union = (mask | inst.mask).sum()
        iou = float((mask & inst.mask).sum() / union) if union else 0.0
        if iou > best[1]:
            best = (index, iou)
    return best


@torch.no_grad()
def _score_raw(path: str, scenes: Path, device: str, batch: int = 16) -> dict[str, Any]:
    from autolabel.models.clip import load_clip
    from autolabel.toyworld.readout import dense_logits

    clip = load_clip("toy", device=device)
    vocab = load_vocabulary(scenes / "vocab.txt")
    tally = SegmentationScores(len(vocab) + 1, None)
    files = sorted((scenes / "images").glob("*.png"))
    elapsed = 0.0
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        images = [np.asarray(Image.open(f).convert("RGB")) for f in chunk]
        t0 = time.perf_counter()
        probs = dense_logits(clip, images, vocab, path).softmax(dim=1).cpu().numpy()
        elapsed += time.perf_counter() - t0
        for f, p in zip(chunk, probs, strict=True):
            gt = np.asarray(Image.open(scenes / "masks" / f.name))
            instances = instances_from_labels(p.argmax(0), p, gt.shape, MIN_AREA)
            tally.add(semantic_from_instances(instances, gt.shape), gt)
    return {**tally.summary(vocab.names), "seconds_per_image": elapsed / max(1, len(files))}
