"""Peak memory of a labelling run on 100 and on 2,000 generated images (tiny random model).

Each folder size runs `run_job` in a fresh Python process, so the figures do not share an
allocator; the child reports its own peak RSS (getrusage ru_maxrss) and wall-clock seconds.
Memory must not grow with the number of images: the script exits 1 when the peaks differ by
more than --tolerance (10 %).

    python benchmarks/memory.py                     # 100 vs 2000 images
    python benchmarks/memory.py --sizes 50 500 --workdir /tmp/bench --keep
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The tests' tiny open_clip ViT: random weights, so the run is about the pipeline, not a model.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
VOCAB = "red square\nblue disc: blue circle\ngreen bar\n"
RECIPE = (
    "method: fast\npretrained: none\n"
    "settings:\n  short_side: 64\n  templates: ['a photo of a {}.']\n"
)


def make_images(folder: Path, count: int) -> None:
    """`count` JPEGs of 160-320 px with three coloured shapes on noise, in 10 subfolders."""
    rng = np.random.default_rng(count)
    for i in range(count):
        width, height = int(rng.integers(160, 321)), int(rng.integers(120, 241))
        noise = rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        x, y = rng.uniform(0.05, 0.5, size=2)
        draw.rectangle([width * x, height * y, width * (x + 0.3), height * (y + 0.3)], fill="red")
        draw.ellipse([width * 0.55, height * 0.5, width * 0.9, height * 0.9], fill="blue")
        draw.rectangle([width * 0.05, height * 0.7, width * 0.45, height * 0.8], fill="green")
        target = folder / f"part{i % 10}" / f"img_{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), in MiB; 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / 2**20


def child(images: Path, work: Path) -> None:
    """Run one job in this process and print its figures as one JSON line."""
    import open_clip  # noqa: F401  (imported before timing: it alone takes seconds)
    import torch

    import autolabel.methods.dense  # noqa: F401
    from autolabel.config import RunConfig
    from autolabel.runner import run_job

    torch.set_num_threads(1)
    samples: list[float] = []

    def progress(step: int, total: int, resumed: int) -> None:
        samples.append(current_rss_mb())

    model = work / "autolabel-tiny.json"
    model.write_text(json.dumps(TINY_CONFIG))
    (work / "vocab.txt").write_text(VOCAB)
    (work / "tiny.yaml").write_text(RECIPE)
    config = RunConfig(
        images=images,
        vocab=work / "vocab.txt",
        out=work / "out",
        recipe=str(work / "tiny.yaml"),
        model=str(model),
        device="cpu",
        progress=False,
    )
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    summary = run_job(config, progress=progress)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "images": summary.ok,
        "failed": len(summary.failed),
        "annotations": summary.annotations_written,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "imports_rss_mb": round(before_kb / 1024, 1),
        "rss_first_image_mb": round(samples[0], 1),
        "rss_last_image_mb": round(samples[-1], 1),
        "annotations_json_mb": round((work / "out" / "annotations.json").stat().st_size / 2**20, 2),
    }
    print(json.dumps(result))


def measure(size: int, root: Path) -> dict:
    """Generate `size` images under root and run a child process on them."""
    work = root / f"n{size}"
    images = work / "images"
    if not images.exists():
        make_images(images, size)
    shutil.rmtree(work / "out", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(images), str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"run on {size} images failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse options, run each size, print a table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100, 2000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep generated images and outputs")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="autolabel-memory-"))
    try:
        results = [measure(size, root) for size in args.sizes]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    header = (
        "images", "failed", "instances", "seconds", "img/s", "peak RSS MB",
        "after imports", "after 1st image", "after last image", "annotations.json MB",
    )  # fmt: skip
    print("  ".join(header))
    for r in results:
        row = (
            r["images"], r["failed"], r["annotations"], r["seconds"],
            round(r["images"] / max(r["seconds"], 1e-9), 1), r["peak_rss_mb"],
            r["imports_rss_mb"], r["rss_first_image_mb"], r["rss_last_image_mb"],
            r["annotations_json_mb"],
        )  # fmt: skip
        print("  ".join(f"{v:>{len(h)}}" for v, h in zip(row, header, strict=True)))
    small, large = results[0]["peak_rss_mb"], results[1]["peak_rss_mb"]
    growth = (large - small) / small
    verdict = "ok" if abs(growth) <= args.tolerance else "FAIL"
    print(f"peak RSS growth {args.sizes[0]} -> {args.sizes[1]} images: {growth:+.1%} ({verdict})")
    if verdict != "ok":
        sys.exit(1)


if __name__ == "__main__":
    main()
