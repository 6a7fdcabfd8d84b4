"""Throughput of each method per --precision: images/s, time per stage, GFLOP/s, RSS, agreement.

Two datasets: the photos of ../shared/data/real/coco10 with random weights of the real sizes
(fast: ViT-B/16; car: ViT-B/16 for f and ViT-L/14 for g; a vocabulary of coco10's 7 most frequent
categories) and toy scenes with the bundled toy model. Each row runs in its own process (so its
peak RSS is its own) and prints: images/s over the whole loop (decode, label, write), seconds
per image in each stage (decode; model = the method's passes; crf; instances; write), the
model's GFLOP/s (torch.utils.flop_counter on the first image, after the loop, with the
vocabulary's text embeddings cached as they are for every image of the loop) and its share of
this run's measured matmul peak in the row's precision (a 2048^2 matmul, measured first),
peak RSS, and the share of pixels whose label equals the fp32 row's. pnp needs a local BLIP
(`--pnp-model DIR`, a save_pretrained folder): none can be downloaded here.

    python benchmarks/throughput.py                      # fast and car, fp32 / auto / bf16, CPU
    python benchmarks/throughput.py --device cuda --precisions fp32 auto
    python benchmarks/throughput.py --datasets toy --methods fast --limit 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

COCO10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "coco10"
REAL_MODELS = {"fast": {"model": "ViT-B-16"}, "car": {"classifier_model": "ViT-L-14"}}
STAGES = ("decode", "model", "crf", "instances", "write")


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n matmul in dtype on device (best of reps, after a warm-up); a dtype the
    device only emulates (bf16 on a CPU without bf16 instructions: about a minute per 2048^2
    product) is measured at 256^2."""
    probe = torch.randn(256, 256, device=device, dtype=dtype)
    probe @ probe  # warm-up: CUDA's first call sets up its libraries
    t0 = time.perf_counter()
    (probe @ probe).sum().item()
    if 2 * 256**3 / (time.perf_counter() - t0) < 10e9:  # well below any native rate
        n = 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def coco10_vocabulary(folder: Path, size: int = 7) -> list[str]:
    """The `size` categories that most coco10 images hold."""
    counts: Counter = Counter()
    for line in (folder / "annotations.jsonl").read_text().splitlines():
        counts.update({box["category"] for box in json.loads(line)["bboxes"]})
    return [name for name, _ in counts.most_common(size)]


def timed(stage: str, times: Counter, function):
    """function, adding its wall time to times[stage] on every call."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[stage] += time.perf_counter() - t0

    return wrapper


def run_row(args: argparse.Namespace) -> dict:
    """One method, precision and dataset, in this process; label maps saved for agreement."""
    from torch.utils.flop_counter import FlopCounterMode

    from autolabel.api import Labeler
    from autolabel.instances import Instances
    from autolabel.io.images import ImageEntry, load_image
    from autolabel.io.png import write_label_png
    from autolabel.refine import finish

    torch.set_num_threads(args.threads)
    images = sorted(Path(args.images).glob("*.[jp][pn]g"))[: args.limit]
    options: dict = {"method": args.method, "precision": args.precision, "device": args.device}
    if args.dataset == "toy":
        options["model"] = "toy"
    elif args.method == "pnp":
        options["model"] = args.pnp_model
    else:
        options.update(REAL_MODELS[args.method], pretrained="none")
        if args.method == "car":
            options["classifier_pretrained"] = "none"
    torch.manual_seed(0)  # the same random weights in every row (pretrained none)
    labeler = Labeler(args.vocab.split(","), **options)
    labeler.load()
    times: Counter = Counter()
    finish.dense_crf = timed("crf", times, finish.dense_crf)  # every method's CRF runs there
    Instances.from_label_map = timed("instances", times, Instances.from_label_map)
    entries = [ImageEntry(i + 1, p, p.name, p.stem) for i, p in enumerate(images)]
    first = load_image(entries[0])
    labeler.label_loaded([first])  # text embeddings cached, as for every image after the first
    times.clear()
    out = Path(args.maps)
    start = time.perf_counter()
    for i in range(0, len(entries), args.batch_size):
        t0 = time.perf_counter()
        batch = [load_image(e) for e in entries[i : i + args.batch_size]]
        times["decode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        results = labeler.label_loaded(batch)
        times["label"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for image in batch:
            write_label_png(out / f"{image.entry.key}.png", results[image.entry.rel].label_map)
        times["write"] += time.perf_counter() - t0
    total = time.perf_counter() - start
    with FlopCounterMode(display=False) as flops:  # after the loop: it runs every op again
        labeler.label_loaded([first])
    flops_per_image = flops.get_total_flops()
    n = len(entries)
    times["model"] = times.pop("label") - times["crf"] - times["instances"]
    return {
        "images_per_s": n / total,
        "stages": {stage: times[stage] / n for stage in STAGES},
        "gflops": flops_per_image / 1e9 / max(times["model"] / n, 1e-9),
        "precision_used": labeler.precision_used,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def agreement(maps: Path, reference: Path) -> float | None:
    """Share of pixels labelled as in the reference row's maps (None without them)."""
    from PIL import Image

    pairs = [(p, reference / p.name) for p in sorted(maps.glob("*.png"))]
    if not pairs or not all(r.is_file() for _, r in pairs):
        return None
    return float(
        np.mean([np.mean(np.asarray(Image.open(a)) == np.asarray(Image.open(b))) for a, b in pairs])
    )


def main() -> int:
    """Measure the matmul peaks, run every row in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["fast", "car"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto", "bf16"])
    parser.add_argument("--datasets", nargs="+", default=["coco10", "toy"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=10, help="images per dataset")
    parser.add_argument("--pnp-model", help="a local BLIP (save_pretrained folder) for pnp rows")
    parser.add_argument("--row", nargs=4, help=argparse.SUPPRESS)  # method precision images vocab
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--maps", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        args.method, args.precision, args.images, args.vocab = args.row
        print(json.dumps(run_row(args)))
        return 0
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    peaks = {
        "fp32": matmul_peak(device, torch.float32),
        "bf16": matmul_peak(device, torch.bfloat16),
    }
    if device.type == "cuda":
        peaks["fp16"] = matmul_peak(device, torch.float16)
    print(f"device {args.device}, {args.threads} threads; matmul peak GFLOP/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))  # fmt: skip
    header = f"{'dataset':<7} {'method':<5} {'prec':<9} {'img/s':>6} " + " ".join(
        f"{s:>9}" for s in STAGES
    )
    print(header + f" {'GFLOP/s':>8} {'%peak':>6} {'RSS MB':>7} {'agree':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        datasets = {"coco10": None, "toy": None}
        if "toy" in args.datasets:
            from autolabel.toyworld.export import write_dataset

            write_dataset(work / "toy", args.limit, 4242, 128)
            names = (work / "toy" / "vocab.txt").read_text().split("\n")
            datasets["toy"] = (work / "toy" / "images", ",".join(n for n in names if n))
        if "coco10" in args.datasets:
            datasets["coco10"] = (COCO10 / "imgs", ",".join(coco10_vocabulary(COCO10)))
        for dataset, (images, vocab) in ((k, v) for k, v in datasets.items() if v):
            for method in args.methods:
                if method == "pnp" and not args.pnp_model:
                    print(f"{dataset:<7} pnp   (skipped: pass --pnp-model DIR, a local BLIP)")
                    continue
                for prec in args.precisions:
                    maps = work / f"{dataset}-{method}-{prec}"
                    maps.mkdir()
                    command = [
                        sys.executable, __file__, "--row", method, prec, str(images), vocab,
                        "--dataset", dataset, "--maps", str(maps), "--device", args.device,
                        "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                        "--limit", str(args.limit), "--pnp-model", str(args.pnp_model),
                    ]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{dataset:<7} {method:<5} {prec:<9} failed: {done.stderr[-400:]}")
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    used = r["precision_used"]
                    label = f"{prec}={used}" if prec == "auto" else prec
                    agree = agreement(maps, work / f"{dataset}-{method}-fp32")
                    print(
                        f"{dataset:<7} {method:<5} {label:<9} "
                        f"{r['images_per_s']:6.2f} "
                        + " ".join(f"{r['stages'][s]:9.3f}" for s in STAGES)
                        + f" {r['gflops']:8.1f} {100 * r['gflops'] / peaks.get(used, np.nan):6.1f}"
                        f" {r['peak_rss_mb']:7.0f} "
                        + ("    -  " if agree is None else f"{100 * agree:6.2f}%"),
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
