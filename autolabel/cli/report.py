"""`autolabel report`: rebuild a run's report.html from its run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autolabel.cli.apps import app

console = Console(soft_wrap=True)


@app.command(name="report")
def report_command(
    out: Annotated[Path, typer.Argument(help="Output folder of `autolabel run`.")],
) -> None:
    """Rebuild OUT/report.html: the run's settings, counts, per-class plots and gallery."""
    from autolabel.io.report import write_report

    path = write_report(out)
    console.print(f"wrote {path} (open it in a browser; it needs no network)", highlight=False)
