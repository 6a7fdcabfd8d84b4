"""`autolabel run` end to end through the CLI, with a tiny random open_clip model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from autolabel.cli import main
from autolabel.cli.options import job_config
from autolabel.config import RunConfig, TuneConfig

# Libraries that take seconds to import; the CLI imports them only inside the commands.
HEAVY_MODULES = (
    "torch", "scipy", "numpy", "PIL", "open_clip", "transformers", "fiftyone", "label_studio_sdk"
)  # fmt: skip


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _args(images: Path, vocab: Path, out: Path, recipe: Path, *extra: str) -> list[str]:
    return ["run", str(images), "--vocab", str(vocab), "-o", str(out), "--recipe", str(recipe),
            "--device", "cpu", "--min-area", "0", *extra]  # fmt: skip


def test_run_writes_every_output(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_recipe: Path, capsys
) -> None:
    out = tmp_path / "out"
    code, text = _run(_args(image_folder, vocab_file, out, tiny_recipe, "--previews"), capsys)
    assert code == 0, text
    assert "3 images labelled" in text and "0 failed" in text

    coco = COCO(str(out / "annotations.json"))
    names = [c["name"] for c in coco.dataset["categories"]]
    assert names == ["red square", "blue disc", "green bar"]
    images = {im["file_name"]: im for im in coco.dataset["images"]}
    assert set(images) == {"a.png", "b.jpg", "sub/c.png"}
    assert (images["a.png"]["width"], images["a.png"]["height"]) == (96, 64)
    assert (images["sub/c.png"]["width"], images["sub/c.png"]["height"]) == (48, 80)

    for name, key in (("a.png", "a"), ("b.jpg", "b"), ("sub/c.png", "sub/c")):
        image = images[name]
        mask = np.asarray(Image.open(out / "masks" / f"{key}.png"))
        assert mask.shape == (image["height"], image["width"])
        painted = np.zeros_like(mask)
        for ann in coco.imgToAnns[image["id"]]:
            painted[coco.annToMask(ann).astype(bool)] = ann["category_id"]
            assert 0.0 <= ann["score"] <= 1.0 and ann["iscrowd"] == 0
        assert np.array_equal(painted, mask), name
        assert (out / "previews" / f"{key}.jpg").stat().st_size > 0

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == ["a.png", "b.jpg", "sub/c.png"]
    assert all(r["status"] == "ok" and r["seconds"] >= 0 for r in rows)
    assert sum(r["instances"] for r in rows) == len(coco.dataset["annotations"])

    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "fast" and run["vocabulary"]["classes"][1]["synonyms"] == [
        "blue circle",
        "round blue thing",
    ]
    assert run["models"]["backbone"]["name"] == "autolabel-tiny"
    assert {"torch", "open_clip_torch", "autolabel"} <= set(run["versions"])
    assert run["settings"]["short_side"] == 64


def test_failed_file_gives_exit_1_and_others_are_labelled(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_recipe: Path, capsys
) -> None:
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, text = _run(_args(image_folder, vocab_file, tmp_path / "o", tiny_recipe), capsys)
    assert code == 1
    assert "broken.png" in text and "3 images labelled" in text
    assert "Traceback" not in text


def test_usage_errors_exit_2_without_traceback(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_recipe: Path, capsys
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    code, text = _run(_args(image_folder, empty, tmp_path / "o", tiny_recipe), capsys)
    assert code == 2 and "no classes" in text and "Traceback" not in text

    code, text = _run(_args(tmp_path / "nope", vocab_file, tmp_path / "o", tiny_recipe), capsys)
    assert code == 2 and "not a folder" in text

    args = _args(image_folder, vocab_file, tmp_path / "o", tiny_recipe, "--method", "car")
    code, text = _run(args, capsys)
    assert code == 2 and "is for method 'fast'" in text

    code, text = _run(["run", str(image_folder), "--vocab", str(vocab_file), "--recipe", "nope"],
                      capsys)  # fmt: skip
    assert code == 2 and "unknown recipe 'nope'" in text

    # Command-line mistakes are usage errors too, not internal errors.
    code, text = _run(["run", str(image_folder), "--vocab", str(vocab_file), "--bogus"], capsys)
    assert code == 2 and "No such option: --bogus" in text and "internal error" not in text
    code, text = _run(["run", "--vocab", str(vocab_file)], capsys)
    assert code == 2 and "Missing argument" in text


def test_offline_weights_give_one_actionable_message(
    tmp_path: Path, image_folder: Path, vocab_file: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o"),
            "--method", "fast", "--model", "ViT-B-32", "--pretrained", "openai"]  # fmt: skip
    code, text = _run(args, capsys)
    assert code == 2
    assert "--checkpoint" in text and str(tmp_path / "hf") in text
    assert "Traceback" not in text


def test_local_checkpoint_is_loaded(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_model: str, capsys
) -> None:
    import open_clip
    import torch

    model = open_clip.create_model(tiny_model)
    with torch.no_grad():
        model.visual.proj.mul_(0).add_(1.5)  # a recognisable weight
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: fast\nmodel: {tiny_model}\nsettings:\n  short_side: 32\n")
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o"),
            "--recipe", str(recipe), "--checkpoint", str(ckpt), "--device", "cpu"]  # fmt: skip
    code, text = _run(args, capsys)
    assert code == 0, text
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["models"]["backbone"]["weights"] == str(ckpt)

    from autolabel.models.clip import load_clip

    loaded = load_clip(tiny_model, None, str(ckpt), "cpu")
    assert torch.allclose(loaded.model.visual.proj, torch.full_like(loaded.model.visual.proj, 1.5))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args[args.index(str(ckpt))] = str(bad)
    args[args.index(str(tmp_path / "o"))] = str(tmp_path / "o2")
    code, text = _run(args, capsys)
    assert code == 2 and "bad.pt" in text and "Traceback" not in text


def test_version_and_models(capsys) -> None:
    code, text = _run(["--version"], capsys)
    assert code == 0 and text.startswith("autolabel ")
    code, text = _run(["models"], capsys)
    assert code == 0
    assert "fast" in text and "car" in text and "pnp" in text and "ViT-B-16" in text


def test_help_and_version_import_no_heavy_library() -> None:
    # A fresh interpreter: this test process has imported torch already.
    script = (
        "import sys\n"
        "from autolabel.cli import main\n"
        "for args in (['--version'], ['--help'], ['run', '--help'], ['tune', '--help']):\n"
        "    assert main(args) == 0, args\n"
        f"loaded = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "sys.exit(f'imported at startup: {loaded}' if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: autolabel run" in result.stdout and "--clip-model" in result.stdout


def test_job_config_from_command_options(tmp_path: Path) -> None:
    params = {"images": tmp_path, "vocab": tmp_path / "v.txt", "out": tmp_path / "o",
              "checkpoint": tmp_path / "w.pt", "classifier_checkpoint": None,
              "background": " sky, ,wall ", "max_side": 640, "debug": True}  # fmt: skip
    config = job_config(RunConfig, params)
    assert config.checkpoint == str(tmp_path / "w.pt") and config.classifier_checkpoint is None
    assert config.background == ["sky", "wall"] and config.max_side == 640
    json.dumps(config.to_dict())  # run.json stays serialisable
    tune = job_config(TuneConfig, {**params, "background": "", "clip_checkpoint": tmp_path})
    assert tune.background is None and tune.clip_checkpoint == str(tmp_path)
    assert tune.max_side == 640 and tune.budget == 20
