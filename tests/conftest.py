"""Shared fixtures: a tiny random open_clip architecture, generated images, a real tiny run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from autolabel.config import RunConfig
from autolabel.runner import RunSummary, run_job

TINY_MODEL = "autolabel-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_VOCAB = "red square\nblue disc: blue circle, round blue thing\n# a comment\ngreen bar\n"


def pytest_configure(config: pytest.Config) -> None:
    """Keep torch to one thread: the machines are small and tests run beside other work. Runs
    without --precision label in fp32 on every machine (and in the servers and workers the tests
    start, which inherit the environment): `auto` would pick bf16 on a CPU with bf16
    instructions. tests/test_precision.py tests `auto` and bf16 explicitly."""
    torch.set_num_threads(1)
    os.environ["AUTOLABEL_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny random-weight open_clip ViT under TINY_MODEL and return its name."""
    import open_clip

    if TINY_MODEL not in open_clip.list_models():
        path = tmp_path_factory.mktemp("models") / f"{TINY_MODEL}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)
    return TINY_MODEL


def draw_scene(width: int, height: int, seed: int) -> Image.Image:
    """A small image with a red square, a blue disc and a green bar on noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    draw.rectangle([width * 0.1, height * 0.1, width * 0.4, height * 0.45], fill=(220, 20, 20))
    draw.ellipse([width * 0.55, height * 0.5, width * 0.9, height * 0.9], fill=(20, 30, 220))
    draw.rectangle([width * 0.05, height * 0.7, width * 0.45, height * 0.8], fill=(20, 200, 40))
    return image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three generated photos, one non-square and one in a subfolder."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    draw_scene(96, 64, 0).save(root / "a.png")
    draw_scene(64, 64, 1).save(root / "b.jpg", quality=95)
    draw_scene(48, 80, 2).save(root / "sub" / "c.png")
    return root


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    """A vocabulary with a synonym line and a comment."""
    path = tmp_path / "vocab.txt"
    path.write_text(TINY_VOCAB)
    return path


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_model: str) -> Path:
    """A recipe running the fast method on the tiny random model at low resolution."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"method: fast\nmodel: {tiny_model}\npretrained: none\n"
        "settings:\n  short_side: 64\n  templates: ['a photo of a {}.']\n"
    )
    return path


def tiny_config(images: Path, vocab: Path, out: Path, recipe: Path, **kwargs: object) -> RunConfig:
    """A RunConfig for the tiny recipe on CPU without progress output."""
    return RunConfig(
        images=images, vocab=vocab, out=out, recipe=str(recipe), device="cpu", min_area=0, **kwargs
    )


@pytest.fixture
def tiny_run(tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_recipe: Path) -> Path:
    """A real finished `autolabel run` output folder (fast method, tiny random model)."""
    out = tmp_path / "out"
    summary: RunSummary = run_job(tiny_config(image_folder, vocab_file, out, tiny_recipe))
    assert summary.ok == 3 and not summary.failed
    return out


@pytest.fixture
def predictor(tiny_recipe: Path, image_folder: Path) -> Any:
    """The Label Studio backend's Predictor on the tiny fast recipe, reading Local Storage files
    from the test images folder."""
    from autolabel.api import Labeler
    from autolabel.sinks.labelstudio.backend.media import MediaResolver
    from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, Predictor

    media = MediaResolver(document_root=image_folder.parent)
    labeler = Labeler(SERVE_VOCABULARY, recipe=str(tiny_recipe), device="cpu", min_area=0)
    return Predictor(labeler, media)
