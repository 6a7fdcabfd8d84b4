"""`autolabel eval`: score a run's masks against ground-truth label PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from autolabel.cli.apps import app

console = Console(soft_wrap=True)


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
