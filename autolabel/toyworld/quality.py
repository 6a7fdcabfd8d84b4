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

from autolabel.evaluate import SegmentationScores, evaluate_run
from autolabel.instances import instances_from_labels, semantic_from_instances
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
    method: str, scenes: Path, out: Path, device: str = "cpu", recipe: str | None = None
) -> dict[str, Any]:
    """Metrics of one method (or raw read-out) on a scenes folder, plus seconds per image.

    recipe: another recipe for the method (a name or a YAML path); default its toy recipe.
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
    )
    summary = run_job(config)
    if summary.failed:
        raise RuntimeError(f"{method}: {len(summary.failed)} images failed: {summary.failed[:3]}")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if r.get("status") == "ok"]
    metrics = evaluate_run(out, scenes / "masks", ignore_index=None).metrics
    return {**metrics, "seconds_per_image": float(np.mean(seconds))}


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
