"""`autolabel toyworld generate|train`, `autolabel demo` and `autolabel eval`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from autolabel.cli.apps import app, toyworld_app
from autolabel.toyworld import DEFAULT_SIZE

console = Console(soft_wrap=True)
DEMO_SCENES = 6
DEMO_SEED = 2024  # never used in training (training uses seed 0)


@toyworld_app.command()
def generate(
    out: Path = typer.Argument(..., help="Output folder: images/, masks/ and vocab.txt."),
    n: int = typer.Option(20, "--n", help="Number of scenes."),
    seed: int = typer.Option(1, "--seed", help="Scene stream; the toy model was trained on 0."),
    size: int = typer.Option(DEFAULT_SIZE, "--size", help="Side of each square scene in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace scenes already in OUT."),
) -> None:
    """Write procedural scenes with exact ground truth (mask pixel = line in vocab.txt)."""
    from autolabel.toyworld.export import write_dataset

    count = write_dataset(out, n, seed, size, overwrite)
    console.print(
        f"wrote {count} scenes to {out / 'images'}/, their label maps to {out / 'masks'}/ "
        f"and the classes to {out / 'vocab.txt'}",
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
    from autolabel.errors import UsageError
    from autolabel.toyworld.train import TrainSettings
    from autolabel.toyworld.train import train as run_training

    settings = TrainSettings(seed=seed, threads=threads, device=device)
    if steps is not None:
        if steps < 1:
            raise UsageError("--steps must be at least 1")
        settings.steps = steps
    run_training(settings, out, log=lambda line: console.print(line, highlight=False))
    console.print(
        f"use it with: autolabel run IMAGES --vocab V --model toy --checkpoint {out / 'toy.pt'}",
        highlight=False,
    )


@app.command()
def demo(
    out: Path = typer.Option(Path("autolabel-demo"), "--out", "-o", help="Output folder."),
    method: str = typer.Option(None, "--method", "-m", help="car, fast or pnp (default: car)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Label a few toy scenes with the bundled toy model, offline, and score them."""
    from autolabel.cli.core import print_summary, run_with_progress
    from autolabel.config import RunConfig
    from autolabel.evaluate import evaluate_run
    from autolabel.toyworld.export import write_dataset

    scenes = out / "scenes"
    write_dataset(scenes, DEMO_SCENES, DEMO_SEED, DEFAULT_SIZE, overwrite=True)
    labels = out / "labels"
    config = RunConfig(
        images=scenes / "images",
        vocab=scenes / "vocab.txt",
        out=labels,
        method=method,
        recipe="toy",
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


@app.command(name="eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="Output folder of `autolabel run`."),
    gt_masks: Path = typer.Option(
        ..., "--gt-masks", help="Ground-truth label PNGs, same relative names and class ids."
    ),
    ignore_index: int = typer.Option(
        255, "--ignore-index", help="Ground-truth value to skip (-1: count every pixel)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Score a run's masks against ground truth: per-class IoU, mIoU, accuracy, presence P/R/F1."""
    from autolabel.evaluate import evaluate_run

    report = evaluate_run(run_dir, gt_masks, None if ignore_index < 0 else ignore_index)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    print_metrics(report.metrics)
    for label, rows in (
        ("run masks without ground truth", report.missing_gt),
        ("ground truth without a run mask (failed or skipped images)", report.missing_pred),
        ("run masks resized to the ground truth's size", report.resized),
    ):
        if rows:
            shown = ", ".join(rows[:10]) + (f" ... (+{len(rows) - 10})" if len(rows) > 10 else "")
            console.print(f"[yellow]{label}[/]: {len(rows)}: {shown}", highlight=False)


def print_metrics(metrics: dict, brief: bool = False) -> None:
    """Per-class table (classes seen in ground truth or predictions) and the totals."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    if not brief:
        table = Table("id", "class", "IoU", "precision", "recall", "F1", title="per class")
        for row in metrics["classes"]:
            if row["gt_pixels"] == 0 and row["pred_pixels"] == 0:
                continue
            table.add_row(
                str(row["id"]),
                row["name"],
                fmt(row["iou"]),
                *(fmt(row.get(k)) for k in ("precision", "recall", "f1")),
            )
        console.print(table)
    presence = metrics["presence"]
    console.print(
        f"images {metrics['images']}  mIoU [bold]{fmt(metrics['miou'])}[/]  "
        f"pixel accuracy {fmt(metrics['pixel_accuracy'])}  presence precision "
        f"{fmt(presence['precision'])} recall {fmt(presence['recall'])} "
        f"F1 [bold]{fmt(presence['f1'])}[/]",
        highlight=False,
    )
