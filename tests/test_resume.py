"""Crash safety: a run killed with SIGKILL anywhere resumes to the outputs of an unbroken run.

Kills at exact points run the real CLI in a forked child (so the loaded model is shared) and
patch one function in the child to SIGKILL itself at that point; one test kills a separate
`autolabel run` process from outside at a moment it does not choose. The model is the tiny
architecture with fixed weights from a checkpoint, so every process computes the same masks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG, TINY_MODEL, TINY_VOCAB, draw_scene
from corpus import encoded, exif_photo, exif_with_orientation

from autolabel.cli import main
from autolabel.io.atomic import atomic_open
from autolabel.io.store import RunStore

IMAGES = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> dict[str, Path]:
    """Images, vocabulary, recipe, a fixed-weight checkpoint, and an unbroken reference run."""
    import open_clip

    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_model)
    torch.save(model.state_dict(), root / "tiny.pt")
    (root / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    (root / "vocab.txt").write_text(TINY_VOCAB)
    (root / "tiny.yaml").write_text(
        "method: fast\nsettings:\n  short_side: 64\n  templates: ['a photo of a {}.']\n"
    )
    images = root / "images"
    (images / "sub dir").mkdir(parents=True)
    for i in range(IMAGES - 2):
        folder = images / ("sub dir" if i % 3 == 0 else "")
        draw_scene(48 + 8 * i, 40 + 4 * i, i).save(folder / f"img{i}.png")
    _, sideways = exif_photo(40, 56)
    (images / "camera.jpg").write_bytes(encoded(sideways, "JPEG", exif=exif_with_orientation(6)))
    draw_scene(40, 40, 99).save(images / "sub dir" / "img0.jpg")  # shares a stem with img0.png
    paths = {"root": root, "images": images, "reference": root / "reference"}
    code = main(cli_args(paths, paths["reference"]))
    assert code == 0
    coco = json.loads((paths["reference"] / "annotations.json").read_text())
    assert len(coco["images"]) == IMAGES and coco["annotations"]
    return paths


def cli_args(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """`autolabel run` on the test images with the fixed-weight tiny model."""
    root = paths["root"]
    return [
        "run", str(paths["images"]), "--vocab", str(root / "vocab.txt"), "-o", str(out),
        "--recipe", str(root / "tiny.yaml"), "--model", str(root / f"{TINY_MODEL}.json"),
        "--checkpoint", str(root / "tiny.pt"), "--device", "cpu", "--min-area", "0",
        "--previews", *extra,
    ]  # fmt: skip


def die() -> None:
    """What a power cut or the OOM killer does: no cleanup, no flushing of Python buffers."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_records(count: int) -> None:
    """Die right after the count-th image's record is durable."""
    original, seen = RunStore.append, [0]

    def append(self: RunStore, record: dict) -> None:
        original(self, record)
        seen[0] += 1
        if seen[0] == count:
            die()

    RunStore.append = append  # type: ignore[method-assign]


def kill_mid_record(count: int) -> None:
    """Die after writing half of the count-th record line (a torn append)."""
    original, seen = RunStore.append, [0]

    def append(self: RunStore, record: dict) -> None:
        seen[0] += 1
        if seen[0] == count:
            line = json.dumps(record) + "\n"
            with open(self.records_path, "a", encoding="utf-8") as handle:
                handle.write(line[: len(line) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            die()
        original(self, record)

    RunStore.append = append  # type: ignore[method-assign]


def kill_mid_mask(count: int) -> None:
    """Die halfway through writing the count-th mask PNG (its temp file is left behind)."""
    import autolabel.io.png as png

    original, seen = png.atomic_write_bytes, [0]

    def write(path: Path, data: bytes) -> None:
        seen[0] += path.suffix == ".png"  # previews (.jpg) go through here too
        if seen[0] == count and path.suffix == ".png":
            with atomic_open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                die()
        original(path, data)

    png.atomic_write_bytes = write


def kill_mid_annotations(_: int) -> None:
    """Die while annotations.json is being assembled, after its first annotation."""
    import autolabel.io.coco as coco

    original = coco._write_array

    def write_array(out: object, key: str, items: object) -> None:
        if key == "annotations":
            out.write(f'"{key}": [' + next(iter(items)))
            out.flush()
            die()
        original(out, key, items)

    coco._write_array = write_array


def kill_before_manifest(_: int) -> None:
    """Die after annotations.json is in place, before manifest.jsonl is written."""
    import autolabel.runner as runner

    original = runner.atomic_open

    def opener(path: Path, *args: object, **kwargs: object) -> object:
        if path.name == "manifest.jsonl":
            die()
        return original(path, *args, **kwargs)

    runner.atomic_open = opener


def run_killed(args: list[str], install: Callable[[int], None], count: int) -> None:
    """Run the CLI in a forked child that SIGKILLs itself at the installed point."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            install(count)
            main(args)
        finally:
            os._exit(99)  # only reached when the kill point never came
    deadline = time.monotonic() + 120
    while (result := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:  # a hung child must not hang the test session
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked run neither finished nor reached its kill point")
        time.sleep(0.01)
    status = result[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def record_lines(out: Path) -> list[bytes]:
    """The raw lines of the records file (a torn last line has no newline)."""
    return (out / ".autolabel" / "records.jsonl").read_bytes().splitlines(keepends=True)


def temp_files(out: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes."""
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below folder (hidden ones too) by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def manifest_rows(out: Path) -> list[dict]:
    """manifest.jsonl without the timings, which differ between any two runs."""
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_outputs(out: Path, reference: Path) -> None:
    """annotations.json content, every mask and preview byte, and the manifest match."""
    ours = json.loads((out / "annotations.json").read_text())
    assert ours == json.loads((reference / "annotations.json").read_text())
    assert files_under(out / "masks") == files_under(reference / "masks")
    assert files_under(out / "previews") == files_under(reference / "previews")
    assert manifest_rows(out) == manifest_rows(reference)
    assert temp_files(out) == []


KILL_POINTS = {
    "after-2-records": (kill_after_records, 2),
    "torn-4th-record": (kill_mid_record, 4),
    "half-written-5th-mask": (kill_mid_mask, 5),
    "mid-annotations-json": (kill_mid_annotations, 0),
    "before-manifest": (kill_before_manifest, 0),
}


@pytest.mark.parametrize("workers", ["0", "1"], ids=["serial", "overlapped"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_matches_an_unbroken_run(
    point: str,
    workers: str,
    setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args = cli_args(setup, out, "--cpu-workers", workers)
    install, count = KILL_POINTS[point]
    run_killed(args, install, count)
    lines = record_lines(out)
    # The crash left the state each point is about.
    if point == "after-2-records":
        assert len(lines) == 2 and not (out / "annotations.json").exists()
    elif point == "torn-4th-record":
        assert len(lines) == 4 and not lines[-1].endswith(b"\n")
    elif point == "half-written-5th-mask":
        # Overlapped, the writer thread may be up to two batches ahead of the records.
        assert (len(lines) == 4 if workers == "0" else 2 <= len(lines) <= 4) and temp_files(out)
    elif point == "mid-annotations-json":
        assert len(lines) == IMAGES and temp_files(out)
        assert not (out / "annotations.json").exists()
    else:
        assert (out / "annotations.json").exists() and not (out / "manifest.jsonl").exists()
    done_before = sum(1 for line in lines if line.endswith(b"\n"))
    capsys.readouterr()

    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{IMAGES} images labelled" in text
    assert f"({done_before} already done before this run)" in text or done_before == 0
    # Each image was segmented exactly once over both processes: resume skipped finished ones.
    assert len(record_lines(out)) == IMAGES
    assert_same_outputs(out, setup["reference"])


def test_repeated_kills_then_resume(setup: dict[str, Path], tmp_path: Path) -> None:
    """Crash after crash on the same folder, each at a different point, then finish."""
    out = tmp_path / "out"
    args = cli_args(setup, out)
    run_killed(args, kill_after_records, 1)
    run_killed(args, kill_mid_mask, 2)
    run_killed(args, kill_mid_record, 2)
    run_killed(args, kill_mid_annotations, 0)
    run_killed(args, kill_before_manifest, 0)
    assert main(args) == 0
    assert len(record_lines(out)) == IMAGES
    assert_same_outputs(out, setup["reference"])


def test_killing_an_autolabel_process_from_outside(setup: dict[str, Path], tmp_path: Path) -> None:
    """A separate `autolabel run` process, SIGKILLed as soon as its first image is saved."""
    out = tmp_path / "out"
    records = out / ".autolabel" / "records.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from autolabel.cli import entry; entry()"]
    proc = subprocess.Popen(
        [*command, *cli_args(setup, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (records.exists() and records.stat().st_size > 0):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never finished an image"
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert main(cli_args(setup, out)) == 0
    assert_same_outputs(out, setup["reference"])


def test_changed_settings_are_refused_unless_overwrite(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(setup["reference"], out)
    before = files_under(out)
    other_vocab = tmp_path / "other.txt"
    other_vocab.write_text("yellow star\npurple blob\n")
    other_recipe = tmp_path / "other.yaml"
    other_recipe.write_text((setup["root"] / "tiny.yaml").read_text().replace("64", "96"))
    args = cli_args(setup, out)
    changes = {
        "vocabulary": [*args[:3], str(other_vocab), *args[4:]],
        "method": [a for a in args if a not in ("--recipe", str(setup["root"] / "tiny.yaml"))]
        + ["--method", "car"],
        "recipe": [*args, "--recipe", str(other_recipe)],
        "--max-side": [*args, "--max-side", "512"],
    }
    for what, changed in changes.items():
        capsys.readouterr()
        assert main(changed) == 2, what
        err = capsys.readouterr().err
        assert "holds a run made with a different" in err and what in err, err
        assert "--overwrite" in err
    assert files_under(out) == before  # nothing was touched

    assert main([*changes["vocabulary"], "--overwrite"]) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["yellow star", "purple blob"]
    assert len(record_lines(out)) == IMAGES  # the old run's records were dropped, not reused


def test_outputs_autolabel_did_not_write_are_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "annotations.json").write_text('{"mine": true}')
    assert main(cli_args(setup, out)) == 2
    assert "no autolabel run recorded" in capsys.readouterr().err
    assert (out / "annotations.json").read_text() == '{"mine": true}'
    assert main([*cli_args(setup, out), "--overwrite"]) == 0
    assert_same_outputs(out, setup["reference"])


def test_a_folder_in_use_is_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `autolabel run` holds
        assert main(cli_args(setup, out)) == 2
        assert "in use by another autolabel run" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert main(cli_args(setup, out)) == 0


def test_fixed_changed_and_removed_files_on_rerun(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun retries failures, relabels replaced files, drops removed ones; only those."""
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    good = (images / "img1.png").read_bytes()
    (images / "img1.png").write_bytes(good[: len(good) // 2])  # truncated: fails first
    (images / "gone.png").write_bytes((images / "img2.png").read_bytes())
    paths = {**setup, "images": images}
    out = tmp_path / "out"
    assert main(cli_args(paths, out)) == 1
    assert (out / "masks" / "gone.png").exists()

    (images / "img1.png").write_bytes(good)  # fixed
    (images / "gone.png").unlink()  # removed
    draw_scene(60, 44, 5).save(images / "img2.png")  # replaced by another picture
    capsys.readouterr()
    assert main(cli_args(paths, out)) == 0
    assert f"({IMAGES - 2} already done before this run)" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert main(cli_args(paths, fresh)) == 0
    assert_same_outputs(out, fresh)
    assert not (out / "masks" / "gone.png").exists()


def _children(pid: int) -> set[int]:
    """The process ids a running process has started (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def test_killing_an_overlapped_run_leaves_no_worker_and_resumes(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """`--cpu-workers 1` with a CRF: SIGKILLed once its CRF worker is up and an image is saved,
    its worker exits, and the resumed run writes what the serial loop writes."""
    recipe = tmp_path / "crf.yaml"
    recipe.write_text((setup["root"] / "tiny.yaml").read_text() + "  crf: true\n")

    def args(out: Path, workers: str) -> list[str]:
        base = cli_args(setup, out, "--cpu-workers", workers)
        return [str(recipe) if a == str(setup["root"] / "tiny.yaml") else a for a in base]

    assert main(args(tmp_path / "serial", "0")) == 0
    out = tmp_path / "out"
    records = out / ".autolabel" / "records.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from autolabel.cli import entry; entry()"]
    proc = subprocess.Popen(
        [*command, *args(out, "1")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    workers: set[int] = set()
    while not (workers and records.exists() and records.stat().st_size > 0):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never finished an image in its worker"
        workers = _children(proc.pid)
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists()]:
        if time.monotonic() > deadline:
            for pid in alive:  # stopped by id so the session goes on; the test still fails
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"worker processes {alive} outlived the killed run")
        time.sleep(0.05)
    assert main(args(out, "1")) == 0
    assert_same_outputs(out, tmp_path / "serial")
