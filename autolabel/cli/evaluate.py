"""`autolabel eval`: score a run against ground-truth label PNGs and/or COCO instances."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from autolabel.cli import options as opt
from autolabel.cli.apps import app

console = Console(soft_wrap=True)


@app.command(name="eval")
def eval_command(
    run_dir: str = typer.Argument(
        ..., help="Output folder of `autolabel run`: a path or an fsspec URL (s3://...)."
    ),
    gt_masks: Path | None = typer.Option(
        None, "--gt-masks", help="Ground-truth label PNGs, same relative names and class ids."
    ),
    gt_coco: Path | None = typer.Option(
        None,
        "--gt-coco",
        help="Ground-truth instances as COCO (e.g. what `pull` writes): images matched by file "
        "name, categories by name.",
    ),
    ignore_index: int = typer.Option(
        255, "--ignore-index", help="Ground-truth value to skip (-1: count every pixel)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    storage_options: opt.StorageOptions = None,
) -> None:
    """Score a run against ground truth: semantic (per-class IoU, mIoU, accuracy, presence
    P/R/F1) with --gt-masks, instance (COCO mask AP, AP50, AP75, per class) with --gt-coco."""
    from autolabel.errors import UsageError
    from autolabel.evaluate import evaluate_instances, evaluate_run
    from autolabel.io.storage import local_run

    if gt_masks is None and gt_coco is None:
        raise UsageError("give --gt-masks FOLDER, --gt-coco FILE, or both")
    semantic = None
    # A run in object storage: a local copy to read.
    with local_run(run_dir, opt.parse_storage_options(storage_options)) as folder:
        if gt_masks is not None:
            semantic = evaluate_run(folder, gt_masks, None if ignore_index < 0 else ignore_index)
        instances = evaluate_instances(folder, gt_coco) if gt_coco is not None else None
    if as_json:
        data = {} if semantic is None else semantic.to_dict()
        if instances is not None:
            data["instances"] = instances.to_dict()
        typer.echo(json.dumps(data, indent=2))
        return
    if semantic is not None:
        print_metrics(semantic.metrics)
        _print_unpaired(
            ("run masks without ground truth", semantic.missing_gt),
            ("ground truth without a run mask (failed or skipped images)", semantic.missing_pred),
            ("run masks resized to the ground truth's size", semantic.resized),
        )
    if instances is not None:
        print_instance_metrics(instances.metrics)
        _print_unpaired(
            ("run images without ground-truth instances", instances.missing_gt),
            ("ground-truth images the run did not label", instances.missing_pred),
            ("ground-truth classes not in the run's vocabulary", instances.unmatched_classes),
        )


def _print_unpaired(*groups: tuple[str, list[str]]) -> None:
    for label, rows in groups:
        if rows:
            shown = ", ".join(rows[:10]) + (f" ... (+{len(rows) - 10})" if len(rows) > 10 else "")
            console.print(f"[yellow]{label}[/]: {len(rows)}: {shown}", highlight=False)


def print_instance_metrics(metrics: dict) -> None:
    """Per-class mask AP and COCO's AP / AP50 / AP75."""
    table = Table("id", "class", "AP", "ground-truth instances", title="instance AP per class")
    for row in metrics["classes"]:
        table.add_row(str(row["id"]), row["name"], _fmt(row["ap"]), str(row["gt"]))
    console.print(table)
    console.print(
        f"images {metrics['images']}  mask AP [bold]{_fmt(metrics['ap'])}[/]  "
        f"AP50 {_fmt(metrics['ap50'])}  AP75 {_fmt(metrics['ap75'])}",
        highlight=False,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_metrics(metrics: dict, brief: bool = False) -> None:
    """Per-class table (classes seen in ground truth or predictions) and the totals."""

    if not brief:
        table = Table("id", "class", "IoU", "precision", "recall", "F1", title="per class")
        for row in metrics["classes"]:
            if row["gt_pixels"] == 0 and row["pred_pixels"] == 0:
                continue
            table.add_row(
                str(row["id"]),
                row["name"],
                _fmt(row["iou"]),
                *(_fmt(row.get(k)) for k in ("precision", "recall", "f1")),
            )
        console.print(table)
    presence = metrics["presence"]
    console.print(
        f"images {metrics['images']}  mIoU [bold]{_fmt(metrics['miou'])}[/]  "
        f"pixel accuracy {_fmt(metrics['pixel_accuracy'])}  presence precision "
        f"{_fmt(presence['precision'])} recall {_fmt(presence['recall'])} "
        f"F1 [bold]{_fmt(presence['f1'])}[/]",
        highlight=False,
    )
