"""Does tuning against reviewed masks pay off on images it never saw? (toy world, CaR)

Writes the ground truth of a few toy scenes as a COCO file of instances (one per connected
component per class, RLE masks: what `autolabel pull labelstudio` writes after a review), tunes
`car` on the toy model from the bundled `toy` recipe with `autolabel tune --gt-coco` (reward:
mean IoU against those masks), then labels held-out scenes of another seed with the base recipe
and with the tuned one through the runner and scores both against their exact masks. Neither
seed is the training seed (0) nor one that the tests or the other benchmarks use.

    python benchmarks/tune_reviewed.py                       # 20 tuning, 100 held-out scenes
    python benchmarks/tune_reviewed.py --budget 4 --n-test 20 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.config import TuneConfig
from autolabel.instances import Instances
from autolabel.io.coco import coco_categories
from autolabel.io.png import read_label_png
from autolabel.toyworld.export import write_dataset
from autolabel.toyworld.quality import score
from autolabel.toyworld.scenes import DEFAULT_SIZE
from autolabel.tune import run_tune
from autolabel.vocab import load_vocabulary

BASE_RECIPE = "toy"


def reviewed_coco(scenes: Path, out: Path) -> Path:
    """The scenes' exact masks as a COCO file of instances, one per component per class."""
    names = load_vocabulary(scenes / "vocab.txt").names
    images, annotations = [], []
    for image_id, path in enumerate(sorted((scenes / "masks").glob("*.png")), 1):
        labels = read_label_png(path)
        height, width = labels.shape
        images.append({"id": image_id, "file_name": path.name, "height": height, "width": width})
        instances = Instances.from_label_map(labels, names)
        annotations += instances.to_coco(image_id, first_id=len(annotations) + 1)
    data = {"images": images, "annotations": annotations, "categories": coco_categories(names)}
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def label_and_score(recipe: str, scenes: Path, out: Path, device: str) -> dict[str, Any]:
    """mIoU, pixel accuracy and presence F1 of a recipe's run on the scenes."""
    metrics = score("car", scenes, out, device, recipe=recipe)
    return {
        "miou": metrics["miou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "presence_f1": metrics["presence"]["f1"],
    }


def _set_settings(recipe: Path, params: dict[str, Any]) -> None:
    """Overwrite searched settings of a recipe file (the unguarded best, for comparison)."""
    import yaml

    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    data["settings"].update(params)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def main() -> int:
    """Tune, label the held-out scenes twice, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-tune", type=int, default=20, help="scenes with reviewed masks")
    parser.add_argument("--n-test", type=int, default=100, help="held-out scenes")
    parser.add_argument("--tune-seed", type=int, default=5150)
    parser.add_argument("--test-seed", type=int, default=6262)
    parser.add_argument("--budget", type=int, default=8, help="settings tried, default included")
    parser.add_argument("--search-seed", type=int, default=0, help="tune --seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep scenes, recipe, log and runs here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        tune_scenes, test_scenes = work / "tune-scenes", work / "test-scenes"
        write_dataset(tune_scenes, args.n_tune, args.tune_seed, DEFAULT_SIZE, overwrite=True)
        write_dataset(test_scenes, args.n_test, args.test_seed, DEFAULT_SIZE, overwrite=True)
        gt = reviewed_coco(tune_scenes, work / "reviewed.json")
        recipe = work / "tuned.yaml"
        start = time.perf_counter()
        summary = run_tune(
            TuneConfig(
                images=tune_scenes / "images",
                vocab=tune_scenes / "vocab.txt",
                out=recipe,
                method="car",
                recipe=BASE_RECIPE,
                budget=args.budget,
                max_images=args.n_tune,
                seed=args.search_seed,
                device=args.device,
                restart=args.workdir is None,  # a kept --workdir resumes the search
            ),
            gt_coco=gt,
        )
        tune_seconds = time.perf_counter() - start
        base = label_and_score(BASE_RECIPE, test_scenes, work / "run-base", args.device)
        tuned = label_and_score(str(recipe), test_scenes, work / "run-tuned", args.device)
        result = summary.result
        raw_best = None
        if summary.chosen is not result.best:  # what the best would have done on its own
            best_recipe = work / "best.yaml"
            text = recipe.read_text(encoding="utf-8")
            best_recipe.write_text(text, encoding="utf-8")
            _set_settings(best_recipe, result.best.params)
            raw_best = label_and_score(
                str(best_recipe), test_scenes, work / "run-best", args.device
            )
    default = result.default
    report = {
        "tune": {
            "scenes": summary.images,
            "seed": args.tune_seed,
            "budget": args.budget,
            "seconds": round(tune_seconds, 1),
            "default": {"params": default.params, "miou": default.reward} if default else None,
            "best": {"params": result.best.params, "miou": result.best.reward},
            "confidence": summary.confidence,
            "kept_default": summary.chosen is not result.best,
            "trials": [{"params": t.params, "miou": t.reward} for t in result.trials],
        },
        "held_out": {
            "scenes": args.n_test,
            "seed": args.test_seed,
            "base": base,
            "tuned": tuned,
            "best_unguarded": raw_best,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"tune: car from recipe {BASE_RECIPE}, {summary.images} scenes of seed {args.tune_seed} "
        f"with reviewed masks, budget {args.budget}, {tune_seconds:.0f} s"
    )
    for trial in result.trials:
        mark = " (default)" if trial.default else ""
        mark += " <- best" if trial is result.best else ""
        print(f"  mIoU {trial.reward:.4f}  {json.dumps(trial.params)}{mark}")
    if summary.confidence is not None:
        verdict = "kept the default" if summary.chosen is not result.best else "took the best"
        print(f"  best beat default in {summary.confidence:.1%} of bootstrap resamples: {verdict}")
    print(f"held out: {args.n_test} scenes of seed {args.test_seed}")
    print(f"{'recipe':<15} {'mIoU':>7} {'pixacc':>7} {'pres F1':>7}")
    rows = [("base", base), ("tuned", tuned)]
    if raw_best is not None:
        rows.append(("best, unguarded", raw_best))
    for name, row in rows:
        print(
            f"{name:<15} {row['miou']:7.4f} {row['pixel_accuracy']:7.4f} {row['presence_f1']:7.4f}"
        )
    gain = tuned["miou"] - base["miou"]
    print(f"mIoU gain on held-out scenes: {gain:+.4f}")
    return 0 if np.isfinite(gain) else 1


if __name__ == "__main__":
    sys.exit(main())
