"""Uncurated folders: every bad input is reported and skipped, never fatal; usage errors early."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_VOCAB, draw_scene, tiny_config
from corpus import as_nobody, build_corpus, shared_tempdir

from autolabel import api
from autolabel.cli import main
from autolabel.config import RunConfig
from autolabel.errors import UsageError
from autolabel.io.png import read_label_png
from autolabel.runner import run_job

# Valid names whose weights files do not exist: a run that loads them fails (offline-safe).
UNREACHABLE_MODEL = [
    "--model", "ViT-B-16", "--checkpoint", "/nonexistent/never-loaded.pt",
    "--classifier-model", "ViT-B-16", "--classifier-checkpoint", "/nonexistent/never-loaded.pt",
]  # fmt: skip


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The real `autolabel` entry point in-process; returns exit code and stdout+stderr."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def read_manifest(out: Path) -> dict[str, dict]:
    """manifest.jsonl rows by file."""
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len({r["file"] for r in rows}) == len(rows), "a file is listed twice"
    return {r["file"]: r for r in rows}


def test_bad_inputs_are_reported_and_good_images_labelled(
    tmp_path: Path, vocab_file: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    expect = {k: v for k, v in build_corpus(photos).items() if v.status != "ignored"}
    out = tmp_path / "out"
    args = ["run", str(photos), "--vocab", str(vocab_file), "-o", str(out)]
    code, text = run_cli([*args, "--recipe", str(tiny_recipe), "--min-area", "0"], capsys)
    assert code == 1, text  # some images failed; the run still finished

    rows = read_manifest(out)
    assert set(rows) == set(expect)
    for rel, want in expect.items():
        row = rows[rel]
        assert row["status"] == want.status, (rel, row)
        if want.reason:
            assert want.reason in row["reason"], (rel, row)
            # The end-of-run summary names the file and the reason too.
            assert f"{rel}: " in text and want.reason in text, rel
        elif want.status == "ok":
            assert row["reason"] == "", (rel, row)

    good = {rel: want for rel, want in expect.items() if want.status == "ok"}
    coco = json.loads((out / "annotations.json").read_text(encoding="utf-8"))
    images = {im["file_name"]: im for im in coco["images"]}
    assert set(images) == set(good)
    assert sorted(im["id"] for im in coco["images"]) == list(range(1, len(good) + 1))
    for rel, want in good.items():
        assert (images[rel]["width"], images[rel]["height"]) == want.size, rel
        mask = read_label_png(out / rows[rel]["mask"])
        assert mask.shape == want.size[::-1], rel
    assert rows["a/same name.jpg"]["mask"] == "masks/a/same name.png"
    assert rows["b/same name.jpg"]["mask"] == "masks/b/same name.png"
    assert rows["twin.jpg"]["mask"] != rows["twin.png"]["mask"]
    assert len({rows[rel]["mask"] for rel in good}) == len(good)
    heights = {im["id"]: [im["height"], im["width"]] for im in coco["images"]}
    assert coco["annotations"], "the tiny model labelled nothing"
    for ann in coco["annotations"]:
        assert ann["segmentation"]["size"] == heights[ann["image_id"]]
    assert f"{len(good)} images labelled" in text


def test_unreadable_file_in_a_run(tiny_recipe: Path) -> None:
    """A file without read permission fails alone; as root the run is made as user nobody."""
    with shared_tempdir() as shared:
        photos = shared / "photos"
        photos.mkdir()
        (shared / "out").mkdir()
        (shared / "out").chmod(0o777)
        draw_scene(64, 48, 0).save(photos / "fine.jpg")
        draw_scene(64, 48, 1).save(photos / "secret.jpg")
        (photos / "secret.jpg").chmod(0)
        vocab = shared / "vocab.txt"
        vocab.write_text(TINY_VOCAB)
        recipe = shared / "tiny.yaml"
        recipe.write_text(tiny_recipe.read_text())
        run_job(tiny_config(photos, vocab, shared / "as-root", recipe))  # see as_nobody
        with as_nobody():
            summary = run_job(tiny_config(photos, vocab, shared / "out", recipe))
        assert summary.ok == 1
        assert summary.failed == [("secret.jpg", "cannot read file: Permission denied")]
        rows = read_manifest(shared / "out")
        assert rows["secret.jpg"]["status"] == "failed"


BAD_VOCABULARIES = {
    "empty": (b"", "no classes"),
    "only-comments": (b"# nothing here\n\n   # still nothing\n", "no classes"),
    "duplicate": (b"cat\ndog\nCat\n", "appears twice"),
    "duplicate-synonym": (b"cat: kitty\ndog: kitty\n", "appears twice"),
    "not-utf8": ("chat\ncaf\u00e9\n".encode("latin-1"), "not UTF-8"),
    "long-name": (b"x" * 5000 + b"\n", "characters long"),
    "huge-file": (b"cat\n" + b"# padding\n" * 150_000, "too large"),
    "too-many": ("".join(f"class {i}\n" for i in range(5000)).encode(), "at most"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOCABULARIES))
def test_bad_vocabulary_is_a_usage_error_before_the_model(
    case: str, tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, message = BAD_VOCABULARIES[case]
    vocab = tmp_path / f"{case}.txt"
    vocab.write_bytes(data)
    args = ["run", str(image_folder), "-v", str(vocab), "-o", str(tmp_path / "out")]
    code, text = run_cli([*args, "--method", "fast", *UNREACHABLE_MODEL], capsys)
    assert code == 2, text
    assert str(vocab) in text and message in text
    assert "never-loaded" not in text and "Traceback" not in text


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_unreadable_vocabulary_path(
    case: str, tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vocab = tmp_path / "vocab.txt"
    if case == "folder":
        vocab.mkdir()
    args = ["run", str(image_folder), "-v", str(vocab), "-o", str(tmp_path / "out")]
    code, text = run_cli([*args, *UNREACHABLE_MODEL], capsys)
    assert code == 2 and str(vocab) in text and "cannot read" in text, text


def test_the_unreachable_model_is_reached_with_good_inputs(
    tmp_path: Path, image_folder: Path, vocab_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control for the tests above: with nothing wrong, the model loader does complain."""
    args = ["run", str(image_folder), "-v", str(vocab_file), "-o", str(tmp_path / "out")]
    code, text = run_cli([*args, "--method", "fast", *UNREACHABLE_MODEL], capsys)
    assert code != 0 and "never-loaded" in text, text


def test_unwritable_output_is_a_usage_error_before_the_model(
    tmp_path: Path, image_folder: Path, vocab_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a folder")
    for out, message in ((a_file / "out", "not writable"), (a_file, "a file of that name")):
        args = ["run", str(image_folder), "-v", str(vocab_file), "-o", str(out)]
        code, text = run_cli([*args, *UNREACHABLE_MODEL], capsys)
        assert code == 2 and str(out) in text and message in text, text
    with shared_tempdir() as shared:
        vocab = shared / "vocab.txt"
        vocab.write_text(TINY_VOCAB)
        (shared / "photos").mkdir()
        (shared / "readonly").mkdir(mode=0o555)
        (shared / "readonly").chmod(0o555)
        args = ["run", str(shared / "photos"), "-v", str(vocab), *UNREACHABLE_MODEL]
        assert run_cli([*args, "-o", str(shared / "as-root")], capsys)[0] == 0  # see as_nobody
        with as_nobody():  # root writes anywhere; nobody may not write a 0555 folder of root's
            code, text = run_cli([*args, "-o", str(shared / "readonly")], capsys)
        assert code == 2 and "not writable (Permission denied)" in text, text


def test_empty_folder_is_not_an_error(
    tmp_path: Path, vocab_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = ["run", str(empty), "-v", str(vocab_file), "-o", str(out), "--method", "fast"]
    code, text = run_cli([*args, *UNREACHABLE_MODEL], capsys)
    assert code == 0, text
    assert "no image files found" in text and "0 images labelled" in text
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["images"] == [] and coco["annotations"] == []
    assert len(coco["categories"]) == 3
    assert (out / "manifest.jsonl").read_text() == ""
    assert not json.loads((out / "run.json").read_text())["models"]  # no model was loaded


def test_missing_input_folder(tmp_path: Path, vocab_file: Path) -> None:
    with pytest.raises(UsageError, match="not a folder of images"):
        run_job(RunConfig(images=tmp_path / "nope", vocab=vocab_file, out=tmp_path / "out"))


def test_output_folder_inside_or_equal_to_the_input(
    image_folder: Path, vocab_file: Path, tiny_recipe: Path
) -> None:
    """Outputs written into the image folder are never read back as images."""
    for out in (image_folder / "labels", image_folder):
        config = tiny_config(image_folder, vocab_file, out, tiny_recipe, previews=True)
        first = run_job(config)
        again = run_job(config)
        assert first.ok == 3 and again.ok == 3 and again.resumed == 3
        assert first.skipped == again.skipped
        labelled = {rel for rel, row in read_manifest(out).items() if row["status"] != "skipped"}
        assert labelled == {"a.png", "b.jpg", "sub/c.png"}
    # The earlier run's folder, inside the input folder, is reported and passed over.
    rows = read_manifest(image_folder)
    assert (
        rows["labels"]["status"] == "skipped"
        and "another autolabel run" in rows["labels"]["reason"]
    )


class FailsOnTallImages:
    """The real tiny segmenter, made to raise like a GPU out of memory on one image size."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = "fast"
        self.calls = 0

    def forward_batch(self, images: list[np.ndarray], vocab: object) -> list:
        self.calls += 1
        if any(im.shape[0] > im.shape[1] for im in images):
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.forward_batch(images, vocab)

    def describe(self) -> dict:
        return self.inner.describe()


def test_segmentation_error_fails_one_image_of_a_batch(
    tmp_path: Path,
    image_folder: Path,
    vocab_file: Path,
    tiny_recipe: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = run_job(tiny_config(image_folder, vocab_file, tmp_path / "ref", tiny_recipe))
    assert reference.ok == 3
    config = tiny_config(image_folder, vocab_file, tmp_path / "out", tiny_recipe, batch_size=3)
    built: list[FailsOnTallImages] = []

    def build(*args: object) -> FailsOnTallImages:
        built.append(FailsOnTallImages(real_build(*args)))
        return built[-1]

    real_build = api.build_segmenter
    monkeypatch.setattr(api, "build_segmenter", build)
    summary = run_job(config)
    (segmenter,) = built
    assert summary.ok == 2 and segmenter.calls == 4  # one batch, then one call per image
    assert summary.failed == [
        ("sub/c.png", "segmentation failed: RuntimeError: CUDA out of memory (simulated)")
    ]
    for rel in ("a.png", "b.jpg"):
        mask = Path("masks") / rel.replace(".jpg", ".png")
        ours = read_label_png(tmp_path / "out" / mask)
        np.testing.assert_array_equal(ours, read_label_png(tmp_path / "ref" / mask))
    assert not (tmp_path / "out" / "masks" / "sub" / "c.png").exists()
