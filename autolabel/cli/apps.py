"""The Typer apps; command modules attach their commands to these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand

# autolabel.cli.main takes --debug anywhere on the command line, before Typer parses it.
DEBUG_HELP = "Add --debug anywhere on the command line to see the traceback of an error."
# Help wraps at the terminal's width up to this; narrower terminals wrap, nothing is cut.
HELP_WIDTH = 100


class Command(TyperCommand):
    """A command whose arguments read click-style in help: IMAGES, or [OUT] when optional."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        """`[OPTIONS] IMAGES` rather than Typer's `[OPTIONS] {images}`."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar if param.required else f"[{param.metavar}]"
                pieces.append(name if param.nargs == 1 else f"{name}...")
        return pieces

    def get_short_help_str(self, limit: int = 45) -> str:
        """The help's first sentence in full: the command list wraps it rather than cut it."""
        return super().get_short_help_str(limit=1000)


class App(typer.Typer):
    """typer.Typer whose commands are `Command`s and end their help with DEBUG_HELP."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        """typer.Typer.command with autolabel's command class and epilog."""
        kwargs.setdefault("cls", Command)
        kwargs.setdefault("epilog", DEBUG_HELP)
        return super().command(*args, **kwargs)


app = App(
    name="autolabel",
    help="Label image folders with segmentation masks from a vocabulary, without training.",
    epilog=DEBUG_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    # Plain help: Rich's option tables cut long option names and label flags "<bool>".
    rich_markup_mode=None,
    context_settings={"max_content_width": HELP_WIDTH},
)
push_app = App(help="Send a run's masks to an annotation platform.", no_args_is_help=True)
pull_app = App(help="Bring reviewed annotations back as COCO.", no_args_is_help=True)
serve_app = App(help="Serve autolabel as a platform's ML backend.", no_args_is_help=True)
toyworld_app = App(help="Procedural toy scenes and the bundled toy model.", no_args_is_help=True)

app.add_typer(push_app, name="push")
app.add_typer(pull_app, name="pull")
app.add_typer(serve_app, name="serve")
app.add_typer(toyworld_app, name="toyworld")
