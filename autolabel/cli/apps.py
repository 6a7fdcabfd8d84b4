"""The Typer apps; command modules attach their commands to these."""

import typer

app = typer.Typer(
    name="autolabel",
    help="Label image folders with segmentation masks from a vocabulary, without training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
push_app = typer.Typer(help="Send a run's masks to an annotation platform.", no_args_is_help=True)
pull_app = typer.Typer(help="Bring reviewed annotations back as COCO.", no_args_is_help=True)
serve_app = typer.Typer(help="Serve autolabel as a platform's ML backend.", no_args_is_help=True)
toyworld_app = typer.Typer(
    help="Procedural toy scenes and the bundled toy model.", no_args_is_help=True
)

app.add_typer(push_app, name="push")
app.add_typer(pull_app, name="pull")
app.add_typer(serve_app, name="serve")
app.add_typer(toyworld_app, name="toyworld")
