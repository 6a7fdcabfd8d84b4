"""`autolabel export`: a run's masks in the formats people train on (YOLO, VOC, CVAT, LabelMe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autolabel.cli.apps import app

console = Console(soft_wrap=True)

# Listed here too (autolabel.io.export imports numpy and Pillow): help must stay fast.
FORMAT_HELP = (
    "yolo (Ultralytics segmentation), voc (Pascal VOC segmentation), cvat (CVAT for images "
    "1.1 XML), labelme (LabelMe JSON)."
)


@app.command(name="export")
def export_command(
    out: Annotated[Path, typer.Argument(help="Output folder of `autolabel run`.")],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", metavar="yolo|voc|cvat|labelme", help=FORMAT_HELP),
    ],
    dest: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (new, or empty).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the output folder if it is not empty.")
    ] = False,
    link: Annotated[
        bool,
        typer.Option(
            "--link", help="Symlink the images instead of copying them (where used as they are)."
        ),
    ] = False,
    cvat_shape: Annotated[
        str,
        typer.Option(
            "--cvat-shape",
            metavar="mask|polygon",
            help="cvat only: write each instance as a <mask> (RLE, exact) or a <polygon>.",
        ),
    ] = "mask",
) -> None:
    """Write the run's instances as a YOLO, Pascal VOC, CVAT or LabelMe dataset, with images."""
    from autolabel.io.export import export_run

    summary = export_run(out, fmt, dest, overwrite=overwrite, link=link, cvat_shape=cvat_shape)
    images = f"{summary.copied} copied, {summary.linked} linked, {len(summary.converted)} converted"
    console.print(
        f"exported {summary.images} images and {summary.instances} instances as "
        f"[bold]{summary.format}[/] to {summary.dest} (images: {images})",
        highlight=False,
    )
    if summary.converted:
        shown = ", ".join(summary.converted[:5])
        more = f" and {len(summary.converted) - 5} more" if len(summary.converted) > 5 else ""
        console.print(
            f"re-encoded upright or into a type the format takes: {shown}{more}", highlight=False
        )
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False)
