"""`autolabel` command line: thin commands that parse options and call the library."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from autolabel.cli.apps import app
from autolabel.errors import AutolabelError

# Each module attaches its commands to the apps in autolabel.cli.apps when imported.
COMMAND_MODULES = (
    "autolabel.cli.core",
    "autolabel.cli.tune",
    "autolabel.cli.fiftyone",
    "autolabel.cli.labelstudio",
    "autolabel.cli.toyworld",
    "autolabel.cli.evaluate",
    "autolabel.cli.export",
    "autolabel.cli.report",
)

err_console = Console(stderr=True, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; errors become one clear message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    # --debug is taken here, anywhere on the line, so no command has to declare it (apps.py).
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    try:
        # Without standalone mode, click returns typer.Exit codes instead of raising them.
        code = app(args=args, prog_name="autolabel", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # typer's own click: usage errors, bad parameters
        exc.show()
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except AutolabelError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        # Nothing was labelled: bad options, vocabulary, recipe, output folder or weights.
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished images are saved, rerun to resume")
        return 130
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "rerun with --debug for the traceback, and please report it",
            highlight=False,
        )
        return 1
    return code if isinstance(code, int) else 0


def entry() -> None:
    """console_scripts entry point."""
    sys.exit(main())
