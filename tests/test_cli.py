"""`autolabel run` end to end through the CLI, with a tiny random open_clip model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from autolabel.cli import main
from autolabel.cli.apps import app
from autolabel.cli.options import job_config, parse_device
from autolabel.config import RunConfig, TuneConfig
from autolabel.methods.base import METHODS

# Libraries that take seconds to import; the CLI imports them only inside the commands.
HEAVY_MODULES = (
    "torch", "scipy", "numpy", "PIL", "open_clip", "transformers", "fiftyone", "label_studio_sdk",
    "matplotlib", "supervision",
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
              "background": " sky, ,wall ", "max_side": 640}  # fmt: skip
    config = job_config(RunConfig, params)
    assert config.checkpoint == str(tmp_path / "w.pt") and config.classifier_checkpoint is None
    assert config.background == ["sky", "wall"] and config.max_side == 640
    json.dumps(config.to_dict())  # run.json stays serialisable
    tune = job_config(TuneConfig, {**params, "background": "", "clip_checkpoint": tmp_path})
    assert tune.background is None and tune.clip_checkpoint == str(tmp_path)
    assert tune.max_side == 640 and tune.budget == 20


def _commands() -> dict[str, object]:
    """Every command of the CLI by its path ("run", "push labelstudio", ...)."""
    import importlib

    import typer

    from autolabel.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    found, stack = {}, [("", typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        for name, sub in getattr(command, "commands", {}).items():
            stack.append((f"{path} {name}".strip(), sub))
        found[path] = command
    return found


def test_help_reads_like_a_cli(capsys) -> None:
    code, text = _run(["run", "--help"], capsys)
    assert code == 0
    assert "Usage: autolabel run [OPTIONS] IMAGES\n" in text
    assert "<bool>" not in text and "…" not in text
    # Long option names in full, whatever the width of the terminal.
    assert "--classifier-pretrained <str>" in text and "--classifier-checkpoint <path>" in text
    assert "Longest image side, in pixels" in text
    assert f"--method <{'|'.join(METHODS)}>" in text
    assert "--device auto|cpu|cuda|cuda:N" in text
    code, text = _run(["--help"], capsys)
    assert code == 0 and "<bool>" not in text and "--install-completion" in text
    assert "--debug" in text


def test_method_and_device_are_checked_when_parsed(
    tmp_path: Path, image_folder: Path, vocab_file: Path, capsys
) -> None:
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o")]
    code, text = _run([*args, "--method", "bogus"], capsys)
    assert code == 2 and all(repr(name) in text for name in METHODS)
    code, text = _run([*args, "--device", "gpu"], capsys)
    assert code == 2 and "auto, cpu, cuda or cuda:N" in text
    assert not (tmp_path / "o").exists()
    assert [parse_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == [
        "auto", "cpu", "cuda", "cuda:1"
    ]  # fmt: skip


def test_shell_completion_is_on_and_light() -> None:
    script = (
        "import sys\n"
        "from autolabel.cli import main\n"
        "try:\n"
        "    main([])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        f"loaded = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "sys.exit(f'imported for completion: {loaded}' if loaded else 0)\n"
    )
    # What bash sends on `autolabel run x --method <TAB>`.
    env = {**os.environ, "_AUTOLABEL_COMPLETE": "complete_bash",
           "COMP_WORDS": "autolabel run x --method ", "COMP_CWORD": "4"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == list(METHODS)


def test_debug_is_taken_anywhere_and_declared_by_no_command(
    tmp_path: Path, image_folder: Path, vocab_file: Path, monkeypatch, capsys
) -> None:
    def internal_error(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("autolabel.cli.options.job_config", internal_error)
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o")]
    code, text = _run(args, capsys)
    assert code == 1 and "internal error: RuntimeError: boom" in text and "--debug" in text
    assert "Traceback" not in text
    # With --debug the exception reaches Python, which prints its traceback.
    for where in ([*args, "--debug"], ["--debug", *args], [*args[:2], "--debug", *args[2:]]):
        with pytest.raises(RuntimeError, match="boom"):
            main(where)
    declaring = [path for path, command in _commands().items()
                 if any(param.name == "debug" for param in command.params)]  # fmt: skip
    assert declaring == []


def test_offline_message_names_both_checkpoint_options() -> None:
    from autolabel.models.clip import _offline_message

    text = _offline_message("ViT-B-16", "openai", OSError("Cannot reach the hub. "))
    assert "Cannot reach the hub.\n" in text
    assert "--checkpoint PATH for --model" in text
    assert "--classifier-checkpoint PATH for --classifier-model" in text
    assert ".." not in text and ". ." not in text


def test_offline_classifier_of_car_points_to_classifier_checkpoint(
    tmp_path: Path, image_folder: Path, vocab_file: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o"),
            "--method", "car", "--model", "toy", "--classifier-model", "ViT-B-32",
            "--classifier-pretrained", "openai", "--device", "cpu"]  # fmt: skip
    code, text = _run(args, capsys)
    assert code == 2 and "'ViT-B-32'" in text
    assert "--classifier-checkpoint" in text and ".." not in text
    assert "Traceback" not in text


def test_eval_is_its_own_command_module() -> None:
    from autolabel.cli import COMMAND_MODULES, toyworld
    from autolabel.cli.evaluate import print_metrics

    assert "autolabel.cli.evaluate" in COMMAND_MODULES and callable(print_metrics)
    assert not hasattr(toyworld, "eval_command") and not hasattr(toyworld, "print_metrics")
    assert "eval" in _commands()
