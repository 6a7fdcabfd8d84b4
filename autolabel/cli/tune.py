"""`autolabel tune`: label-free hyperparameter search that writes a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autolabel.cli import options as opt
from autolabel.cli.apps import app
from autolabel.config import TuneConfig

if TYPE_CHECKING:
    from autolabel.tune import TuneSummary

console = Console()


@app.command()
@opt.job_options
def tune(
    ctx: typer.Context,
    images: Annotated[
        Path, typer.Argument(help="Folder of images to tune on (searched recursively).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recipe YAML to write.")],
    method: Annotated[
        opt.MethodName, typer.Option("--method", "-m", help="Method to tune: pnp or car.")
    ],
    budget: Annotated[
        int, typer.Option("--budget", help="Settings to evaluate, the default included.")
    ] = 20,
    tags: Annotated[
        Path | None,
        typer.Option(
            "--tags", help="Image-level tags: a COCO .json or a `file,tag;tag` CSV (default: CLIP)."
        ),
    ] = None,
    gt_coco: Annotated[
        Path | None,
        typer.Option(
            "--gt-coco",
            help="Reviewed masks as COCO (e.g. what `pull` writes): the reward is their mean IoU "
            "instead of CLIP's, on the images they cover (matched by file name, categories by "
            "name). Not with --tags.",
        ),
    ] = None,
    tag_threshold: Annotated[
        float,
        typer.Option(
            "--tag-threshold", help="Without --tags: CLIP presence probability for a tag."
        ),
    ] = 0.1,
    max_images: Annotated[
        int, typer.Option("--max-images", help="Images used, spread over the folder.")
    ] = 20,
    max_side: opt.MaxSide = 512,
    clip_model: Annotated[
        str, typer.Option("--clip-model", help="CLIP that scores rewards.")
    ] = "ViT-B-16",
    clip_pretrained: Annotated[str, typer.Option("--clip-pretrained")] = "openai",
    clip_checkpoint: Annotated[Path | None, typer.Option("--clip-checkpoint")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Order in which settings are tried.")] = 0,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the log of an earlier search.")
    ] = False,
) -> None:
    """Search a method's settings with a CLIP reward (no masks needed), or against reviewed
    masks (--gt-coco); write the best recipe.

    Reruns with the same -o resume: settings already in OUT.tune.jsonl are not evaluated again.
    """
    from autolabel.tune import run_tune

    columns = (
        TextColumn("[bold]tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("settings"),
        TimeElapsedColumn(),
    )
    # Every option, the shared ones included, reaches the config by name through ctx.params.
    config = opt.job_config(TuneConfig, ctx.params)
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("tune", total=budget)
        summary = run_tune(
            config, lambda done, total: bar.update(task, completed=done), gt_coco=gt_coco
        )
    print_tune_summary(summary)


def print_tune_summary(summary: TuneSummary) -> None:
    """Default vs best reward, the best settings, and where the recipe and log are."""
    result = summary.result
    if summary.reward == "miou":
        skipped = (
            f"; {summary.skipped} image(s) of the folder have none and were left out"
            if summary.skipped
            else ""
        )
        console.print(
            f"{len(result.trials)} settings scored on {summary.images} images against "
            f"{summary.tagged_classes} reviewed instances from {summary.tags_source}{skipped}",
            highlight=False,
        )
        title = "mIoU against the reviewed masks"
    else:
        console.print(
            f"{len(result.trials)} settings scored on {summary.images} images "
            f"({summary.tagged_classes} tagged classes, tags from {summary.tags_source})"
        )
        title = "CLIP reward (fraction of tagged classes)"
    table = Table("", "reward", *summary.space, title=title)
    default = result.default
    if default is not None:
        table.add_row(
            "default", f"{default.reward:.3f}", *(str(default.params.get(k)) for k in summary.space)
        )
    best = result.best
    table.add_row("best", f"{best.reward:.3f}", *(str(best.params.get(k)) for k in summary.space))
    console.print(table)
    if summary.confidence is not None:
        kept = summary.chosen is not best
        console.print(
            f"the best beat the default in {summary.confidence:.0%} of bootstrap resamples of the "
            "reviewed images: "
            + ("within the noise, so the recipe keeps the default settings" if kept else "kept"),
            highlight=False,
        )
    console.print(
        f"recipe: {summary.recipe_path} (use it with `autolabel run --recipe "
        f"{summary.recipe_path}`); log: {summary.log_path}",
        highlight=False,
    )
