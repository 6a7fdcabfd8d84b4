"""`autolabel tune`: label-free hyperparameter search that writes a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autolabel.cli.apps import app
from autolabel.tune import TuneConfig, TuneSummary, run_tune

console = Console()


@app.command()
def tune(
    images: Annotated[
        Path, typer.Argument(help="Folder of images to tune on (searched recursively).")
    ],
    vocab: Annotated[
        Path, typer.Option("--vocab", "-v", help="Vocabulary file, one class a line.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recipe YAML to write.")],
    method: Annotated[str, typer.Option("--method", "-m", help="pnp or car.")],
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="Starting recipe (name or path).")
    ] = None,
    budget: Annotated[
        int, typer.Option("--budget", help="Settings to evaluate, the default included.")
    ] = 20,
    tags: Annotated[
        Path | None,
        typer.Option(
            "--tags", help="Image-level tags: a COCO .json or a `file,tag;tag` CSV [default: CLIP]."
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
    max_side: Annotated[
        int, typer.Option("--max-side", help="Process at most this many pixels.")
    ] = 512,
    model: Annotated[
        str | None, typer.Option("--model", help="Backbone (HF id or folder for pnp).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="Pretrained tag (car).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Local weights for --model (car).")
    ] = None,
    classifier_model: Annotated[
        str | None, typer.Option("--classifier-model", help="CaR classifier.")
    ] = None,
    classifier_pretrained: Annotated[str | None, typer.Option("--classifier-pretrained")] = None,
    classifier_checkpoint: Annotated[Path | None, typer.Option("--classifier-checkpoint")] = None,
    clip_model: Annotated[
        str, typer.Option("--clip-model", help="CLIP that scores rewards.")
    ] = "ViT-B-16",
    clip_pretrained: Annotated[str, typer.Option("--clip-pretrained")] = "openai",
    clip_checkpoint: Annotated[Path | None, typer.Option("--clip-checkpoint")] = None,
    background: Annotated[
        str | None,
        typer.Option(
            "--background", help="Comma-separated background words (replaces the default list)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Order in which settings are tried.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 1,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the log of an earlier search.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Search a method's settings with a CLIP reward (no masks needed); write the best recipe.

    Reruns with the same -o resume: settings already in OUT.tune.jsonl are not evaluated again.
    """
    config = TuneConfig(
        images=images,
        vocab=vocab,
        out=out,
        method=method,
        recipe=recipe,
        model=model,
        pretrained=pretrained,
        checkpoint=str(checkpoint) if checkpoint else None,
        classifier_model=classifier_model,
        classifier_pretrained=classifier_pretrained,
        classifier_checkpoint=str(classifier_checkpoint) if classifier_checkpoint else None,
        background=[w.strip() for w in background.split(",") if w.strip()] if background else None,
        tags=tags,
        tag_threshold=tag_threshold,
        clip_model=clip_model,
        clip_pretrained=clip_pretrained,
        clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
        budget=budget,
        max_images=max_images,
        max_side=max_side,
        seed=seed,
        device=device,
        batch_size=batch_size,
        restart=restart,
    )
    columns = (
        TextColumn("[bold]tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("settings"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("tune", total=budget)
        summary = run_tune(config, lambda done, total: bar.update(task, completed=done))
    print_tune_summary(summary)


def print_tune_summary(summary: TuneSummary) -> None:
    """Default vs best reward, the best settings, and where the recipe and log are."""
    result = summary.result
    console.print(
        f"{len(result.trials)} settings scored on {summary.images} images "
        f"({summary.tagged_classes} tagged classes, tags from {summary.tags_source})"
    )
    table = Table("", "reward", *summary.space, title="CLIP reward (fraction of tagged classes)")
    default = result.default
    if default is not None:
        table.add_row(
            "default", f"{default.reward:.3f}", *(str(default.params.get(k)) for k in summary.space)
        )
    best = result.best
    table.add_row("best", f"{best.reward:.3f}", *(str(best.params.get(k)) for k in summary.space))
    console.print(table)
    console.print(
        f"recipe: {summary.recipe_path} (use it with `autolabel run --recipe "
        f"{summary.recipe_path}`); log: {summary.log_path}",
        highlight=False,
    )
