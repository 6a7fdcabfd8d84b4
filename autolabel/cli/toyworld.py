"""`autolabel toyworld generate|train|train-sam` and `autolabel demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from autolabel.cli import options as opt
from autolabel.cli.apps import app, toyworld_app
from autolabel.toyworld import DEFAULT_SIZE

console = Console(soft_wrap=True)
DEMO_SCENES = 6
DEMO_SEED = 2024  # never used in training (training uses seed 0)


@toyworld_app.command()
def generate(
    out: Path = typer.Argument(
        ..., help="Output folder: images/, masks/, instances.json and vocab.txt."
    ),
    n: int = typer.Option(20, "--n", help="Number of scenes."),
    seed: int = typer.Option(1, "--seed", help="Scene stream; the toy model was trained on 0."),
    size: int = typer.Option(DEFAULT_SIZE, "--size", help="Side of each square scene in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace scenes already in OUT."),
) -> None:
    """Write procedural scenes with exact ground truth (mask pixel = line in vocab.txt)."""
    from autolabel.toyworld.export import write_dataset

    count = write_dataset(out, n, seed, size, overwrite)
    console.print(
        f"wrote {count} scenes to {out / 'images'}/, their label maps to {out / 'masks'}/, "
        f"their instances to {out / 'instances.json'} and the classes to {out / 'vocab.txt'}",
        highlight=False,
    )


@toyworld_app.command()
def train(
    out: Path = typer.Argument(..., help="Folder for toy.json and toy.pt."),
    seed: int = typer.Option(0, "--seed", help="Seed for scenes, initialisation and batches."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps (default: as shipped)."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Train the toy CLIP from scratch, as the bundled weights were trained."""
    from autolabel.toyworld.train import TrainSettings
    from autolabel.toyworld.train import train as run_training

    settings = TrainSettings(seed=seed, threads=threads, device=device)
    _set_steps(settings, steps)
    run_training(settings, out, log=lambda line: console.print(line, highlight=False))
    console.print(
        f"use it with: autolabel run IMAGES --vocab V --model toy --checkpoint {out / 'toy.pt'}",
        highlight=False,
    )


@toyworld_app.command("train-sam")
def train_sam(
    out: Path = typer.Argument(..., help="Folder for the model (save_pretrained) and processor."),
    seed: int = typer.Option(0, "--seed", help="Seed for scenes, initialisation and prompts."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps (default: as shipped)."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
    coarse: Path | None = typer.Option(
        None,
        "--coarse",
        help="A coarse-stage model trained before (a train-sam folder's coarse/): skip that "
        "stage and only sharpen it.",
    ),
) -> None:
    """Train the toy SAM from scratch, as the bundled one was trained (coarse, then sharpened)."""
    from autolabel.toyworld.train_sam import SamTrainSettings
    from autolabel.toyworld.train_sam import train_sam as run_training

    settings = SamTrainSettings(seed=seed, threads=threads)
    _set_steps(settings, steps)
    run_training(
        settings, out, log=lambda line: console.print(line, highlight=False), coarse=coarse
    )
    console.print(
        f"use it with: autolabel run IMAGES --vocab V --model toy --refine crf+sam "
        f"--sam-model {out}",
        highlight=False,
    )


@app.command()
def demo(
    out: Path = typer.Option(Path("autolabel-demo"), "--out", "-o", help="Output folder."),
    method: opt.MethodName | None = typer.Option(
        None, "--method", "-m", help="Method (default: the toy recipe's)."
    ),
    device: opt.Device = "auto",
) -> None:
    """Label a few toy scenes with the bundled toy model, offline, and score them."""
    from autolabel.cli.core import print_summary, run_with_progress
    from autolabel.cli.evaluate import print_metrics
    from autolabel.config import RunConfig
    from autolabel.evaluate import evaluate_run
    from autolabel.toyworld.export import write_dataset

    scenes = out / "scenes"
    write_dataset(scenes, DEMO_SCENES, DEMO_SEED, DEFAULT_SIZE, overwrite=True)
    labels = out / "labels"
    # The toy model brings its own recipe for car and fast; pnp has no toy ITM model, so its
    # toy recipe downloads BLIP and keeps the toy CLIP as presence filter.
    config = RunConfig(
        images=scenes / "images",
        vocab=scenes / "vocab.txt",
        out=labels,
        method=method,
        recipe="toy-pnp" if method == "pnp" else None,
        model=None if method == "pnp" else "toy",
        device=device,
        previews=True,
    )
    summary = run_with_progress(config)
    print_summary(summary)
    report = evaluate_run(labels, scenes / "masks")
    print_metrics(report.metrics, brief=True)
    console.print(
        f"\nlook at: {labels / 'previews'}/ (overlays), {scenes / 'images'}/ (inputs), "
        f"{labels / 'annotations.json'} (COCO), {labels / 'masks'}/ (label PNGs).\n"
        f"score it again: autolabel eval {labels} --gt-masks {scenes / 'masks'}",
        highlight=False,
    )


def _set_steps(settings: Any, steps: int | None) -> None:
    """--steps of a training command: at least 1; None keeps the shipped model's count."""
    if steps is None:
        return
    if steps < 1:
        from autolabel.errors import UsageError

        raise UsageError("--steps must be at least 1")
    settings.steps = steps
