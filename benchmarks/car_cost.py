"""What CaR costs on one image: the optimised path against the straightforward (official) one.

For each path it prints the images and texts that went through each backbone's encoders, the
Grad-CAM backward passes, the model FLOPs (torch.utils.flop_counter.FlopCounterMode) and the
wall time, then the ratios, and checks that both paths gave the same labels and scores.

The optimised path runs twice: "cold" with empty text caches (the first image of a run) and
"warm" (every later image: the vocabulary's embeddings are cached for the whole run). The
straightforward path has no caches, so every image costs what its one run costs.

    python benchmarks/car_cost.py IMAGE --vocab vocab.txt [--recipe coco-object]
        [--model ViT-B-16 --pretrained none --classifier-model ViT-L-14
         --classifier-pretrained none] [--max-side 1024] [--skip-reference]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torch.utils.flop_counter import FlopCounterMode

from autolabel.config import RunConfig
from autolabel.io.resize import fit_max_side
from autolabel.methods.base import SegResult
from autolabel.methods.car import CaRSegmenter, build
from autolabel.vocab import Vocabulary, load_vocabulary


@dataclass
class Cost:
    """One measured run."""

    counts: Counter
    flops: int
    seconds: float
    cpu_seconds: float  # both threads' compute; wall time also counts waiting on a busy machine
    results: list[SegResult]


def count_calls(segmenter: CaRSegmenter) -> Counter:
    """Hook the encoders' entry layers; each call adds its batch size under a readable key."""
    counts: Counter = Counter()
    roles = [("f", segmenter.f.model), ("g", segmenter.g.model)]
    if segmenter.f.model is segmenter.g.model:
        roles = [("f+g", segmenter.f.model)]
    for role, model in roles:
        encoders = {f"{role} image": model.visual.conv1, f"{role} text": model.token_embedding}
        for key, module in encoders.items():
            module.register_forward_hook(
                lambda _m, args, _out, key=key: counts.update({key: int(args[0].shape[0])})
            )
    return counts


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: its backward hooks are refused inside
    torch.autograd.grad(is_grads_batched=True), and the totals need no per-module split."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts totals only."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def measure(segmenter: CaRSegmenter, image: np.ndarray, vocab: Vocabulary, counts: Counter) -> Cost:
    """Run one image through the segmenter under the FLOP counter."""
    before = Counter(counts)
    backwards = segmenter.engine.stats["backwards"]
    start, cpu = time.perf_counter(), time.process_time()
    with flop_counter() as flops:
        results = segmenter.segment_batch([image], vocab)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    used = counts - before
    used["backward passes"] = segmenter.engine.stats["backwards"] - backwards
    return Cost(used, flops.get_total_flops(), seconds, cpu, results)


def settings_for(args: argparse.Namespace) -> tuple[dict, list[str] | None]:
    """Recipe + model options merged exactly as `autolabel run` merges them."""
    config = RunConfig(
        images=Path("."),
        vocab=Path(args.vocab),
        out=Path("."),
        method="car",
        recipe=args.recipe,
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        classifier_model=args.classifier_model,
        classifier_pretrained=args.classifier_pretrained,
        classifier_checkpoint=args.classifier_checkpoint,
        parity=args.parity,
    )
    resolved = config.resolve()
    return resolved.settings, resolved.background


def report(costs: dict[str, Cost]) -> None:
    """Print the table and the reference/optimised ratios."""
    keys = sorted({k for c in costs.values() for k in c.counts})
    names = list(costs)
    print(f"{'':24}" + "".join(f"{n:>18}" for n in names))
    for key in keys:
        print(f"{key:24}" + "".join(f"{costs[n].counts[key]:>18}" for n in names))
    print(f"{'model TFLOPs':24}" + "".join(f"{costs[n].flops / 1e12:>18.3f}" for n in names))
    print(f"{'wall seconds':24}" + "".join(f"{costs[n].seconds:>18.1f}" for n in names))
    print(f"{'CPU seconds':24}" + "".join(f"{costs[n].cpu_seconds:>18.1f}" for n in names))
    if "reference" in costs:
        ref = costs["reference"]
        for name in names[:-1]:
            print(
                f"reference / {name}: {ref.flops / costs[name].flops:.1f}x the FLOPs, "
                f"{ref.seconds / costs[name].seconds:.1f}x the wall time, "
                f"{ref.cpu_seconds / costs[name].cpu_seconds:.1f}x the CPU time"
            )


def same_outputs(a: list[SegResult], b: list[SegResult]) -> str:
    """A one-line verdict on whether two runs labelled the image identically."""
    la, lb = a[0].labels, b[0].labels
    agree = float((la == lb).mean())
    score_gap = float(np.abs(a[0].scores - b[0].scores).max())
    return f"labels agree on {agree:.2%} of pixels, max score difference {score_gap:.2e}"


def main() -> None:
    """Parse options, run the paths, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--recipe")
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    parser.add_argument("--checkpoint")
    parser.add_argument("--classifier-model")
    parser.add_argument("--classifier-pretrained")
    parser.add_argument("--classifier-checkpoint")
    parser.add_argument("--parity", action="store_true")
    parser.add_argument("--max-side", type=int, default=1024, help="as autolabel run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    settings, background = settings_for(args)
    vocab = load_vocabulary(Path(args.vocab), background)
    pil = ImageOps.exif_transpose(Image.open(args.image)).convert("RGB")
    image = fit_max_side(np.asarray(pil), args.max_side)
    start = time.perf_counter()
    fast = build({**settings, "engine": "fast"}, args.device)
    print(f"models loaded in {time.perf_counter() - start:.1f} s: f={fast.f.name} "
          f"({fast.f.source}), g={fast.g.name} ({fast.g.source})")  # fmt: skip
    print(f"image {args.image} at {image.shape[1]}x{image.shape[0]}, {len(vocab)} classes")
    counts = count_calls(fast)
    costs = {"optimised (cold)": measure(fast, image, vocab, counts)}
    costs["optimised (warm)"] = measure(fast, image, vocab, counts)
    if not args.skip_reference:
        reference = build({**settings, "engine": "reference"}, args.device)
        costs["reference"] = measure(reference, image, vocab, counts)
    report(costs)
    first = costs["optimised (cold)"].results
    print("warm vs cold:", same_outputs(first, costs["optimised (warm)"].results))
    if "reference" in costs:
        print("reference vs optimised:", same_outputs(first, costs["reference"].results))
    kept = [vocab.names[i] for i in np.nonzero(first[0].scores)[0]]
    print(f"surviving classes: {', '.join(kept)}")


if __name__ == "__main__":
    main()
