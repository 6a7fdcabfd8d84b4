"""Quality and speed of every method on toy scenes from a seed never used in training.

Generates the scenes, labels them with each method through the runner (the bundled toy
recipes), scores the written masks against the exact ground truth, and prints one row per
method: mIoU, pixel accuracy, image-level presence precision / recall / F1, seconds per image.
`raw` / `raw-naclip` are the toy model's own dense read-outs (patch tokens vs class text,
argmax; unchanged or NACLIP last block; no CRF), the floor that the methods build on.

    python benchmarks/toyworld.py                 # 40 scenes of seed 777, all rows
    python benchmarks/toyworld.py --n 100 --methods fast car --json
    python benchmarks/toyworld.py --seed 4243 --methods fast car --refine crf crf+sam

With --refine, each method runs once per refinement and the rows add COCO mask AP against the
scenes' instances.json, the AP of the connected components of the same run's label map (the
instances the run would give without SAM's) and the touching same-class pairs split into two
instances.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from autolabel.toyworld.quality import RAW, RECIPES, make_scenes, score


def main() -> int:
    """Run the benchmark and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of scenes")
    parser.add_argument("--seed", type=int, default=777, help="scene seed (training used 0)")
    parser.add_argument("--methods", nargs="+", default=[*RAW, *RECIPES])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep scenes and runs here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--refine", nargs="+", help="--refine values to compare (not for raw)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        scenes = make_scenes(work / "scenes", args.n, args.seed)
        runs = [(m, r) for m in args.methods for r in (args.refine or [None])]
        results = {
            f"{m} {r}" if r else m: score(m, scenes, work / f"{m}-{r}", args.device, refine=r)
            for m, r in runs
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.n} toy scenes, seed {args.seed}, device {args.device}")
    header = f"{'method':<13} {'mIoU':>6} {'pixacc':>6} {'pres P':>6} {'pres R':>6} {'pres F1':>7}"
    if args.refine:
        header += f" {'s/img':>7} {'mask AP':>7} {'CC AP':>7} {'split':>7}"
    else:
        header += f" {'s/img':>7}"
    print(header)
    for method, r in results.items():
        p = r["presence"]
        line = (
            f"{method:<13} {r['miou']:6.3f} {r['pixel_accuracy']:6.3f} {p['precision']:6.3f} "
            f"{p['recall']:6.3f} {p['f1']:7.3f} {r['seconds_per_image']:7.3f}"
        )
        if "instances" in r:
            split = f"{r['split']['split']}/{r['split']['pairs']}"
            ap, cc = r["instances"]["ap"], r["components"]["ap"]
            line += f" {ap:7.3f} {cc:7.3f} {split:>7}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
