"""--precision: what `auto` picks per device, what is refused, and that bf16 labels like fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autolabel.api import Labeler
from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.models import precision
from autolabel.models.precision import resolve_precision
from autolabel.toyworld.export import write_dataset

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize(
    ("device", "cpu_bf16", "cuda_bf16", "expected"),
    [
        (CPU, True, False, "bf16"),  # AVX512-BF16 / AMX
        (CPU, False, False, "fp32"),  # bf16 would be emulated, slower than fp32
        (CUDA, False, True, "bf16"),
        (CUDA, False, False, "fp16"),  # e.g. a V100 or T4
        (MPS, True, True, "fp32"),
    ],
)
def test_auto_picks_the_precision_the_device_computes_natively(
    monkeypatch, device, cpu_bf16, cuda_bf16, expected
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_precision("auto", device) == expected
    assert resolve_precision("auto", device, parity=True) == "fp32"
    assert resolve_precision("fp32", device) == "fp32"


def test_impossible_precisions_are_refused_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="GPUs only"):
        resolve_precision("fp16", CPU)
    with pytest.raises(UsageError, match="--parity"):
        resolve_precision("bf16", CUDA, parity=True)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\n")
    with pytest.raises(UsageError, match="--precision must be one of"):
        Labeler(vocab, model="toy", precision="int8", device="cpu", lazy=True)
    with pytest.raises(UsageError, match="GPUs only"):
        Labeler(vocab, model="toy", method="fast", precision="fp16", device="cpu", lazy=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: fast\nmodel: toy\nprecision: half\n")
    with pytest.raises(UsageError, match="'precision' must be one of"):
        Labeler(vocab, recipe=str(recipe), lazy=True)
    recipe.write_text("method: fast\nmodel: toy\nprecision: bf16\n")
    assert Labeler(vocab, recipe=str(recipe), device="cpu", lazy=True).precision_used == "bf16"


@pytest.mark.parametrize(("method", "scenes"), [("fast", 4), ("car", 2)])
def test_bf16_runs_label_like_fp32_and_are_recorded(
    method: str, scenes: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Measured on 24 toy scenes: fast 99.95 %, car 99.99 % of pixels as in fp32. On a CPU
    without bf16 instructions the run says that bf16 is emulated there."""
    data = tmp_path / "scenes"
    write_dataset(data, scenes, 4242, 128)
    maps = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / prec
        args = ["run", str(data / "images"), "--vocab", str(data / "vocab.txt"), "-o", str(out)]
        opts = ["--model", "toy", "--method", method, "--device", "cpu", "--precision", prec]
        capsys.readouterr()
        assert main([*args, *opts]) == 0
        emulated = "no bf16 instructions" in " ".join(capsys.readouterr().out.split())
        assert emulated == (prec == "bf16" and not precision.cpu_has_bf16())
        assert json.loads((out / "run.json").read_text())["precision"] == prec
        maps[prec] = [np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))]
    agreement = np.mean([np.mean(a == b) for a, b in zip(*maps.values(), strict=True)])
    assert len(maps["bf16"]) == scenes and agreement >= 0.995, agreement


def test_the_environment_sets_the_default_precision(tmp_path: Path, monkeypatch) -> None:
    """AUTOLABEL_PRECISION is the default below --precision and the recipe's key (the tests set
    it to fp32 in conftest)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\n")
    monkeypatch.setenv("AUTOLABEL_PRECISION", "bf16")
    assert Labeler(vocab, model="toy", method="fast", device="cpu", lazy=True).precision == "bf16"
    labeler = Labeler(vocab, model="toy", method="fast", precision="fp32", lazy=True)
    assert labeler.precision_used == "fp32"
    monkeypatch.setenv("AUTOLABEL_PRECISION", "half")
    with pytest.raises(UsageError, match="AUTOLABEL_PRECISION must be one of"):
        Labeler(vocab, model="toy", method="fast", lazy=True)
    monkeypatch.delenv("AUTOLABEL_PRECISION")
    assert Labeler(vocab, model="toy", method="fast", lazy=True).precision == "auto"
