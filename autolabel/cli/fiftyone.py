"""`autolabel push fiftyone`: a run's masks as FiftyOne samples and fields."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from autolabel.cli import options as opt
from autolabel.cli.apps import push_app
from autolabel.errors import UsageError

console = Console()


@push_app.command("fiftyone")
def push_fiftyone(
    out: Annotated[
        str,
        typer.Argument(
            help="Output folder of `autolabel run`: a path or an fsspec URL (s3://...)."
        ),
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="FiftyOne dataset (created if new).")
    ],
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Keep the dataset when the database stops.")
    ] = False,
    field: Annotated[
        str, typer.Option("--field", help="Field prefix: <field>_instances, <field>_semantic.")
    ] = "autolabel",
    storage_options: opt.StorageOptions = None,
) -> None:
    """Add the run's images as samples with instance masks, semantic masks and provenance."""
    try:
        from autolabel.sinks.fiftyone import push_run
    except ImportError as exc:
        raise UsageError(
            f"FiftyOne is not available ({exc}); install it with `pip install fiftyone` "
            "(README, FiftyOne section: the database wheel for offline machines)"
        ) from exc
    from autolabel.io.storage import local_run

    with local_run(out, opt.parse_storage_options(storage_options)) as folder:
        summary = push_run(folder, dataset, field, persistent)
    instances_field, semantic_field = summary.fields
    console.print(
        f"dataset [bold]{summary.dataset}[/]: {summary.added} samples added, "
        f"{summary.updated} updated, {summary.instances} instances in {instances_field}, "
        f"semantic masks in {semantic_field}; settings in run {field!r} "
        f"(dataset.get_run_info({field!r}))",
        highlight=False,
    )
    for rel in summary.missing:
        console.print(f"[yellow]not pushed[/] {rel}: the image file is gone", highlight=False)
    if not persistent:
        console.print(
            "note: the dataset is not persistent and disappears when the database stops; "
            "push with --persistent to keep it",
            highlight=False,
        )
