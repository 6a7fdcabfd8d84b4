"""The local engine's overlap: a whole `label_folder` run, serial (--cpu-workers 0) against
overlapped (decode ahead, CRFs in worker processes, writes in a thread), and whether both write
the same masks.

Datasets as benchmarks/throughput.py: toy scenes with the bundled toy models, and the photos of
../shared/data/real/coco10 with random weights of the real sizes. Each run is timed from the call
to the summary (model loading excluded, the workers' start included); the two engines alternate
over `--repeats` and the medians are printed.

    python benchmarks/overlap.py                           # toy: car, fast + CRF, fast
    python benchmarks/overlap.py --datasets coco10 --limit 6 --methods fast+crf
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


# name: (method, settings)
VARIANTS = {"car": ("car", None), "fast+crf": ("fast", {"crf": True}), "fast": ("fast", None)}


def labeler_for(variant: str, dataset: str, vocab: list[str], device: str):
    """A loaded Labeler for a variant on a dataset (toy models, or random real-size weights)."""
    import torch
    from throughput import REAL_MODELS

    from autolabel import Labeler

    method, settings = VARIANTS[variant]
    options: dict = {"method": method, "settings": settings, "device": device}
    if dataset == "toy":
        options["recipe"] = "toy" if method == "car" else "toy-fast"
    else:
        options.update(REAL_MODELS[method], pretrained="none")
        if method == "car":
            options["classifier_pretrained"] = "none"
    torch.manual_seed(0)
    return Labeler(vocab, **options)


def main() -> int:
    """Time serial and overlapped runs of each variant and dataset; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--datasets", nargs="+", default=["toy"], choices=["toy", "coco10"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--cpu-workers", type=int, help="default: the engine's default, at least 1")
    parser.add_argument("--limit", type=int, default=24, help="images per dataset")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Imported here, not at the top: the engine's worker processes import this file again
    # (multiprocessing's spawn), and they need no torch.
    import torch
    from throughput import COCO10, coco10_vocabulary

    from autolabel.engines.local import default_workers

    torch.set_num_threads(args.threads)
    from autolabel.toyworld.export import write_dataset

    workers = args.cpu_workers or max(1, default_workers(torch.device(args.device).type))
    print(f"device {args.device}, {args.threads} threads, batch {args.batch_size}, "
          f"{workers} CPU workers")  # fmt: skip
    print(f"{'dataset':<7} {'method':<9} {'images':>6} {'serial img/s':>12} "
          f"{'overlap img/s':>13} {'speed-up':>8} {'same masks':>10}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dataset in args.datasets:
            if dataset == "toy":
                write_dataset(work / "toy", args.limit, 4243, 128)
                images = work / "toy" / "images"
                vocab = [n for n in (work / "toy" / "vocab.txt").read_text().splitlines() if n]
            else:
                images = work / "coco10"
                images.mkdir()
                for path in sorted((COCO10 / "imgs").glob("*.jpg"))[: args.limit]:
                    (images / path.name).symlink_to(path)
                vocab = coco10_vocabulary(COCO10)
            count = len(list(images.iterdir()))
            for variant in args.methods:
                labeler = labeler_for(variant, dataset, vocab, args.device)
                labeler.label(next(images.iterdir()))  # models loaded, text embeddings cached
                times: dict[int, list[float]] = {0: [], workers: []}
                for repeat in range(args.repeats):
                    for n in times:
                        out = work / f"{dataset}-{variant}-{n}-{repeat}"
                        t0 = time.perf_counter()
                        labeler.label_folder(images, out, batch_size=args.batch_size, cpu_workers=n)
                        times[n].append(time.perf_counter() - t0)
                serial, overlap = (statistics.median(times[n]) for n in times)
                same = all(
                    mask.read_bytes()
                    == (work / f"{dataset}-{variant}-{workers}-0" / mask.relative_to(
                        work / f"{dataset}-{variant}-0-0")).read_bytes()
                    for mask in (work / f"{dataset}-{variant}-0-0" / "masks").rglob("*.png")
                )  # fmt: skip
                print(
                    f"{dataset:<7} {variant:<9} {count:>6} {count / serial:12.2f} "
                    f"{count / overlap:13.2f} {serial / overlap:7.2f}x {str(same):>10}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
