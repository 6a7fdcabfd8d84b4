"""The local engine: decode ahead, CRFs in worker processes, writes in order; same outputs as the
serial loop, and a worker that dies costs at most the image that killed it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel import Labeler, api
from autolabel.engines.local import Tails, check_workers
from autolabel.errors import ImageError, UsageError
from autolabel.io.images import ImageEntry, LoadedImage
from autolabel.methods.base import SegResult
from autolabel.pipeline import Staged
from autolabel.toyworld.export import write_dataset


def _toy_folder(root: Path, scenes: int = 5) -> tuple[Path, list[str]]:
    """Toy scenes, a corrupt file and an extreme strip (padded before segmentation)."""
    write_dataset(root, scenes, 4243, 96)
    images = root / "images"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    strip = np.asarray(Image.open(next(images.glob("*.png"))))[:12]
    Image.fromarray(np.tile(strip, (1, 10, 1))).save(images / "strip.png")
    names = [n for n in (root / "vocab.txt").read_text().splitlines() if n]
    return images, names


def _run_outputs(out: Path) -> dict[str, object]:
    """Everything a run wrote, timings left out, in the order the run store got it."""
    records = [json.loads(line) for line in (out / ".autolabel" / "records.jsonl").open()]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").open()]
    for row in records + manifest:
        row.pop("seconds", None)
    masks = {p.name: p.read_bytes() for p in sorted((out / "masks").rglob("*.png"))}
    return {
        "records": records,
        "manifest": manifest,
        "coco": json.loads((out / "annotations.json").read_text()),
        "masks": masks,
    }


@pytest.mark.parametrize("recipe", ["toy", "toy-fast"])
def test_overlapped_run_writes_what_the_serial_loop_writes(tmp_path: Path, recipe: str) -> None:
    images, names = _toy_folder(tmp_path / "scenes")
    settings = {"crf": True} if recipe == "toy-fast" else None  # a CRF for the workers to run
    labeler = Labeler(names, recipe=recipe, settings=settings, device="cpu")
    serial = labeler.label_folder(images, tmp_path / "serial", batch_size=2, cpu_workers=0)
    overlapped = labeler.label_folder(images, tmp_path / "overlap", batch_size=2, cpu_workers=2)
    assert serial.ok == overlapped.ok == 6 and serial.failed == overlapped.failed
    assert [rel for rel, _ in overlapped.failed] == ["broken.png"]
    expected, got = _run_outputs(tmp_path / "serial"), _run_outputs(tmp_path / "overlap")
    assert got["records"] == expected["records"]  # same content, same order
    assert got == expected
    assert any(r["instances"] for r in got["records"] if r["status"] == "ok")


def test_the_crf_runs_beside_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While batch k's CRFs run in the workers, the model is already at batch k+1."""
    # Enough images that the model still runs once the worker has started, however slowly.
    images, names = _toy_folder(tmp_path / "scenes", scenes=16)
    spans: dict[str, list[tuple[float, float]]] = {"model": [], "tail": []}
    real_build = api.build_segmenter

    class Timed:
        """The real toy car method, its forward and its tails (in the workers) timed."""

        def __init__(self, inner: object) -> None:
            self.inner, self.name = inner, inner.name

        def forward_batch(self, batch: list[np.ndarray], vocab: object) -> list:
            t0 = time.time()
            finishes = self.inner.forward_batch(batch, vocab)
            spans["model"].append((t0, time.time()))
            return [TimedFinish(f) for f in finishes]

        def describe(self) -> dict:
            return self.inner.describe()

    monkeypatch.setattr(api, "build_segmenter", lambda *args: Timed(real_build(*args)))
    real_to_instances = Labeler.to_instances

    def to_instances(self: Labeler, staged: Staged, result: object) -> object:
        if isinstance(result, SegResult):
            spans["tail"].append(result.extras["span"])
        return real_to_instances(self, staged, result)

    monkeypatch.setattr(Labeler, "to_instances", to_instances)
    labeler = Labeler(names, recipe="toy", device="cpu")
    summary = labeler.label_folder(images, tmp_path / "out", cpu_workers=1)
    assert summary.ok == 17 and len(spans["tail"]) == 17
    overlaps = [
        (t0, t1)
        for t0, t1 in spans["tail"]
        if any(m0 < t1 and t0 < m1 for m0, m1 in spans["model"])
    ]
    assert overlaps, f"no CRF ran while the model did: {spans}"


@dataclass
class TimedFinish:
    """A method's tail whose result carries when it ran and in which process."""

    inner: object
    heavy = True

    def __call__(self) -> SegResult:
        t0 = time.time()
        result = self.inner()
        result.extras.update(span=(t0, time.time()), pid=os.getpid())
        return result


@dataclass
class Tail:
    """A heavy tail that says which process ran it, or kills that process."""

    kill: bool = False
    heavy = True

    def __call__(self) -> SegResult:
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        zeros = np.zeros((4, 4), np.int32)
        return SegResult(zeros, np.zeros(1, np.float32), extras={"pid": os.getpid()})


def _staged(rel: str, finish: object) -> Staged:
    image = LoadedImage(ImageEntry(0, Path(rel), rel), np.zeros((4, 4, 3), np.uint8))
    return Staged(image, image.rgb, finish, (0, 0, 4, 4))


def test_heavy_tails_run_in_workers_and_light_ones_here() -> None:
    tails = Tails(2)
    try:
        heavy = _staged("a", Tail())
        light = _staged("b", TimedFinish(Tail()))
        light.finish.heavy = False
        futures = {s.image.entry.rel: tails.submit(s.image.entry.rel, s) for s in (heavy, light)}
        assert futures["b"] is None
        worker_pid = tails.result("a", heavy, futures["a"]).extras["pid"]
        assert worker_pid != os.getpid()
        assert tails.result("b", light, None).extras["pid"] == os.getpid()
    finally:
        tails.shutdown(wait=True)


def test_a_dying_worker_costs_only_the_image_that_killed_it() -> None:
    tails = Tails(2)
    try:
        warm = _staged("warm", Tail())  # workers have started: a later break is a dying worker
        assert isinstance(tails.result("warm", warm, tails.submit("warm", warm)), SegResult)
        staged = {rel: _staged(rel, Tail(kill=rel == "poison")) for rel in ("a", "poison", "b")}
        futures = {rel: tails.submit(rel, s) for rel, s in staged.items()}
        results = {rel: tails.result(rel, staged[rel], futures[rel]) for rel in staged}
        assert isinstance(results["poison"], ImageError)
        assert "died twice" in results["poison"].reason
        for rel in ("a", "b"):  # retried in a fresh pool if the first one broke under them
            assert isinstance(results[rel], SegResult) and results[rel].extras["pid"] > 0
        after = _staged("c", Tail())  # the engine goes on with a working pool
        assert isinstance(tails.result("c", after, tails.submit("c", after)), SegResult)
    finally:
        tails.shutdown(wait=True)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_cpu_workers_must_be_a_count(value: object) -> None:
    with pytest.raises(UsageError, match="--cpu-workers"):
        check_workers(value)  # type: ignore[arg-type]
    assert check_workers(0) == 0 and check_workers(3) == 3 and check_workers(None) is None


def test_default_workers_are_the_cores_the_model_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from autolabel.engines.local import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_workers("cpu") == 4 and default_workers("cuda") == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers("cpu") == 0 and default_workers("cuda") == 1


def test_a_script_without_the_main_guard_still_labels_everything(tmp_path: Path) -> None:
    """Workers re-run an unguarded script and die before their first CRF: the run goes on with
    the CRFs in the main process, says why, and loses no image."""
    images, names = _toy_folder(tmp_path / "scenes")
    out = tmp_path / "out"
    script = tmp_path / "label.py"
    script.write_text(
        "from autolabel import Labeler\n"
        f"labeler = Labeler({names!r}, recipe='toy', device='cpu')\n"
        f"summary = labeler.label_folder({str(images)!r}, {str(out)!r}, cpu_workers=1)\n"
        "print('OK', summary.ok, ' | '.join(summary.warnings))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("OK")]
    assert line.startswith("OK 6 ") and "CRF worker processes could not start" in line
    assert len(list((out / "masks").rglob("*.png"))) == 6
