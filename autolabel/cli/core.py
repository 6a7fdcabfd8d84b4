"""`autolabel run`, `autolabel models` and `--version`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from autolabel import __version__
from autolabel.cli import options as opt
from autolabel.cli.apps import app
from autolabel.config import DEFAULT_METHOD, RunConfig, list_recipes

if TYPE_CHECKING:
    from autolabel.runner import RunSummary

console = Console(soft_wrap=True)
DEFAULT_OUT = Path("autolabel-out")
# Failed, skipped and noted files listed at the end of a run; the rest are in manifest.jsonl.
SUMMARY_LINES = 50


def _version(value: bool) -> None:
    if value:
        console.print(f"autolabel {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Label image folders with segmentation masks from a vocabulary, without training."""


@app.command()
@opt.job_options
def run(
    ctx: typer.Context,
    images: Annotated[
        str,
        typer.Argument(help="Folder of images (searched recursively): a path or an fsspec URL."),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output folder: a path or an fsspec URL (s3://...).")
    ] = str(DEFAULT_OUT),
    method: Annotated[
        opt.MethodName | None,
        typer.Option(
            "--method", "-m", help=f"Method (default: the recipe's, else {DEFAULT_METHOD})."
        ),
    ] = None,
    parity: Annotated[
        bool, typer.Option("--parity", help="CaR: reproduce the official code's quirks exactly.")
    ] = False,
    max_side: opt.MaxSide = 1024,
    refine: opt.Refine = None,
    sam_model: opt.SamModel = None,
    min_area: Annotated[
        int, typer.Option("--min-area", help="Drop instances smaller than this (px).")
    ] = 16,
    previews: Annotated[
        bool, typer.Option("--previews", help="Write overlay JPEGs to previews/.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Skip finished images.")
    ] = True,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a run with other settings in the output folder."),
    ] = False,
    engine: Annotated[
        Literal["local", "ray"],
        typer.Option("--engine", help="Label in this process, or on a Ray cluster's workers."),
    ] = "local",
    cpu_workers: Annotated[
        int | None,
        typer.Option(
            "--cpu-workers",
            help="Local engine: processes running each image's CRF while the model works on the "
            "next batch (default: one per core left, at most 4; 0: one image after another).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster (default: RAY_ADDRESS, else a new one)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Ray: workers, one model each (default: 1 per GPU, or 1)."),
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option("--gpus-per-worker", help="Ray: GPUs each worker takes.")
    ] = 0.0,
    storage_options: opt.StorageOptions = None,
) -> None:
    """Segment every image in IMAGES into the vocabulary's classes; write COCO, PNGs, manifest."""
    # Every option, the shared ones included, reaches the config by name through ctx.params.
    config = opt.job_config(RunConfig, ctx.params)
    config.storage_options = opt.parse_storage_options(storage_options)
    summary = run_with_progress(config)
    print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


def run_with_progress(config: RunConfig) -> RunSummary:
    """Run a job (as the Python API's label_folder does) under a Rich progress bar."""
    from autolabel.runner import run_job

    columns = (
        TextColumn("[bold]labelling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task("run", total=None, rate="")

    def advance(step: int, total: int, resumed: int) -> None:
        # Started on the first finished image, so usage errors print without a stray bar.
        if bar.tasks[0].total is None:
            bar.start()
            bar.update(task, total=total, completed=resumed)
        bar.advance(task, step)
        speed = bar.tasks[0].speed
        bar.update(task, rate=f"{speed:.2f} img/s" if speed else "")

    try:
        return run_job(config, progress=advance)
    finally:
        bar.stop()


def print_summary(summary: RunSummary) -> None:
    """The end-of-run report: counts, instances per class, failures, where outputs are."""
    console.print(
        f"[bold]{summary.ok}[/] images labelled, [bold]{len(summary.failed)}[/] failed, "
        f"{len(summary.skipped)} skipped"
        + (f" ({summary.resumed} already done before this run)" if summary.resumed else "")
        + f" in {summary.seconds:.1f}s"
    )
    if summary.per_class:
        table = Table("class", "instances", title="instances per class")
        for name, count in summary.per_class.most_common():
            table.add_row(name, str(count))
        console.print(table)
    if not summary.found:
        console.print("[yellow]no image files found[/] in the input folder", highlight=False)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for label, rows in (
        ("[red]failed[/] ", summary.failed),
        ("[yellow]skipped[/]", summary.skipped),
        ("[cyan]note[/]   ", summary.notes),
    ):
        for rel, reason in rows[:SUMMARY_LINES]:
            console.print(f"{label} {escape(rel)}: {escape(reason)}", highlight=False)
        if len(rows) > SUMMARY_LINES:
            console.print(f"{label} ... and {len(rows) - SUMMARY_LINES} more in manifest.jsonl")
    out = str(summary.out).rstrip("/")
    console.print(
        f"outputs: {out}/annotations.json ({summary.annotations_written} instances), "
        f"{out}/masks/, {out}/manifest.jsonl, {out}/run.json",
        highlight=False,
    )


@app.command()
def models() -> None:
    """List methods, bundled recipes and the CLIP models autolabel can run."""
    from autolabel.methods.base import METHODS
    from autolabel.models.clip import supported_models

    table = Table("method", "what it does", title="methods")
    for name, spec in METHODS.items():
        table.add_row(name + (" (default)" if name == DEFAULT_METHOD else ""), spec.description)
    console.print(table)
    console.print("recipes: " + ", ".join(list_recipes()))
    console.print("'toy': the bundled toy-world model (offline; for the demo and tests)")
    tags = Table("open_clip model (plain ViT)", "pretrained tags", title="--model / --pretrained")
    for name, tag_list in supported_models():
        tags.add_row(name, ", ".join(tag_list) or "none: weights with --checkpoint")
    console.print(tags)
    console.print(
        "PnP-OVSS: any Hugging Face BLIP/BridgeTower ITM id (default "
        "Salesforce/blip-itm-large-flickr) or a save_pretrained folder."
    )
