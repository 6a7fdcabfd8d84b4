"""Images/s of the local engine and of Ray with 1 and 2 workers on the toy world, Ray's overhead
per image, and the Ray driver's peak RSS on 100 vs 2,000 images (must stay within 10 %).

Each run is a fresh Python process (`run_job`, the toy model, the fast method) that reports its
wall-clock seconds, its steady rate (from the first finished image to the last, so model loading
and Ray's start are left out) and its own peak RSS. Ray runs start a local Ray instance. Traffic
stays on loopback: as root, the script re-runs itself in a private network and process namespace
(`unshare -n -p -f --mount-proc`) holding only loopback, as the tests do.

    python benchmarks/scale.py                              # 60 images; memory on 100 and 2000
    python benchmarks/scale.py --images 30 --memory-sizes 50 500
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSIDE = "AUTOLABEL_BENCH_NAMESPACE"


def child(engine: str, workers: int, images: Path, out: Path) -> dict:
    """One run in this process; what it measured."""
    from autolabel.config import RunConfig
    from autolabel.runner import run_job

    stamps: list[float] = []
    config = RunConfig(
        images=images,
        vocab=images.parent / "vocab.txt",
        out=out,
        model="toy",
        method="fast",
        device="cpu",
        batch_size=4,
        engine=engine,
        workers=workers if engine == "ray" else None,
    )
    started = time.perf_counter()
    summary = run_job(config, progress=lambda *_: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - started
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ok": summary.ok, "seconds": seconds, "steady": steady, "peak_mb": peak}


def measure(engine: str, workers: int, images: Path, work: Path) -> dict:
    """Run `child` in a fresh process."""
    out = work / f"out-{engine}-{workers}-{images.parent.name}"
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, __file__, "--child", engine, str(workers), str(images), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def world(work: Path, count: int) -> Path:
    """`count` toy scenes of 64 px (generated once per size)."""
    from autolabel.toyworld.export import write_dataset

    folder = work / f"world{count}"
    if not (folder / "images").is_dir():
        write_dataset(folder, count, seed=1, size=64)
    return folder / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="scenes for the images/s runs")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[100, 2000])
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, workers, images, out = args.child
        print(json.dumps(child(engine, int(workers), Path(images), Path(out))))
        return 0
    if os.environ.get(INSIDE) is None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            # Ray binds to the machine's network interface outside a private namespace.
            print("run as root with unshare available: Ray runs in a loopback-only namespace")
            return 2
        # Ray's sessions go to a tmpfs private to the namespace, as in tests/ray_scenario.py.
        command = (
            "ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray && "
            f"exec {sys.executable} {' '.join(map(repr, sys.argv))}"
        )
        # A home of its own: Ray keeps an auth token in ~/.ray that no other cluster may share.
        home = tempfile.mkdtemp(prefix="autolabel-scale-home-")
        env = {**os.environ, INSIDE: "1", "RAY_USAGE_STATS_ENABLED": "0", "HOME": home}
        unshare = ["unshare", "-n", "-p", "-f", "--mount-proc", "--", "bash", "-c", command]
        try:
            return subprocess.run(unshare, env=env, check=False).returncode
        finally:
            shutil.rmtree(home, ignore_errors=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="autolabel-scale-"))
    images = world(work, args.images)
    rows = {
        "local": measure("local", 1, images, work),
        "ray, 1 worker": measure("ray", 1, images, work),
        "ray, 2 workers": measure("ray", 2, images, work),
    }
    setup = "64 px, fast method, toy model, batch 4"
    print(f"{args.images} toy scenes ({setup}) on {os.cpu_count()} CPUs")
    print(f"{'engine':<16}{'wall s':>9}{'images/s':>10}{'steady img/s':>14}{'peak RSS MB':>13}")
    for name, row in rows.items():
        rate = row["ok"] / row["seconds"]
        print(
            f"{name:<16}{row['seconds']:>9.1f}{rate:>10.2f}{row['steady']:>14.2f}"
            f"{row['peak_mb']:>13.0f}"
        )
    local, ray1 = rows["local"], rows["ray, 1 worker"]
    overhead = (ray1["seconds"] - local["seconds"]) / args.images
    steady_overhead = 1 / ray1["steady"] - 1 / local["steady"]
    print(
        f"Ray overhead per image (1 worker vs local): {overhead * 1000:.0f} ms with Ray's start, "
        f"{steady_overhead * 1000:.0f} ms in steady state"
    )
    small, large = args.memory_sizes
    peaks = [measure("ray", 2, world(work, n), work)["peak_mb"] for n in (small, large)]
    growth = (peaks[1] - peaks[0]) / peaks[0]
    print(
        f"Ray driver peak RSS: {peaks[0]:.0f} MB on {small} images, {peaks[1]:.0f} MB on "
        f"{large} images ({growth:+.1%}; limit {args.tolerance:.0%})"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if abs(growth) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
