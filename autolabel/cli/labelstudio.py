"""`autolabel push labelstudio`, `pull labelstudio` and `serve labelstudio`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autolabel.cli import options as opt
from autolabel.cli.apps import pull_app, push_app, serve_app

console = Console()

URL_HELP = "Label Studio address, e.g. http://localhost:8080."
KEY_HELP = "API token (Account & Settings: personal access token or legacy token)."


@push_app.command("labelstudio")
def push_labelstudio(
    out: str = typer.Argument(
        ..., help="Output folder of `autolabel run`: a path or an fsspec URL (s3://...)."
    ),
    url: str = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL", help=URL_HELP),
    api_key: str = typer.Option(..., "--api-key", envvar="LABEL_STUDIO_API_KEY", help=KEY_HELP),
    project: int = typer.Option(None, "--project", help="Existing project id."),
    title: str = typer.Option(
        None, "--title", help="Project title; the project is created if none has this title."
    ),
    document_root: Path = typer.Option(
        None,
        "--document-root",
        help="The server's LOCAL_FILES_DOCUMENT_ROOT; the run's images folder must be inside it.",
    ),
    url_prefix: str = typer.Option(
        None, "--url-prefix", help="URL under which the run's images folder is already served."
    ),
    polygons: bool = typer.Option(
        False, "--polygons", help="New projects also get PolygonLabels for reviewers."
    ),
    chunk_mb: float = typer.Option(16.0, "--chunk-mb", help="Largest request body, in MB."),
    storage_options: opt.StorageOptions = None,
) -> None:
    """Send a run's masks to Label Studio as tasks with brush pre-annotations (idempotent)."""
    from autolabel.io.storage import local_run
    from autolabel.sinks.labelstudio.push import iter_summary_lines, push_run

    options = opt.parse_storage_options(storage_options)
    with local_run(out, options) as folder, _bar("pushing") as advance:
        summary = push_run(
            folder,
            url,
            api_key,
            project_id=project,
            title=title,
            document_root=document_root,
            url_prefix=url_prefix,
            polygons=polygons,
            chunk_bytes=int(chunk_mb * 1024 * 1024),
            progress=advance,
        )
    for line in iter_summary_lines(summary, url):
        console.print(escape(line), highlight=False)


@pull_app.command("labelstudio")
def pull_labelstudio(
    url: str = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL", help=URL_HELP),
    api_key: str = typer.Option(..., "--api-key", envvar="LABEL_STUDIO_API_KEY", help=KEY_HELP),
    project: int = typer.Option(..., "--project", help="Project id."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="COCO file to write (reviewed annotations, RLE)."
    ),
    report: Path = typer.Option(
        None, "--report", help="Review report JSON (default: OUTPUT with .review.json)."
    ),
) -> None:
    """Export reviewed annotations to COCO and report how much reviewers changed the masks."""
    from autolabel.sinks.labelstudio.pull import pull_project, report_text

    with _bar("pulling", total=False) as advance:
        summary = pull_project(url, api_key, project, output, report, progress=advance)
    console.print(escape(report_text(summary)), highlight=False)


@serve_app.command("labelstudio")
def serve_labelstudio(
    host: str = typer.Option(
        "127.0.0.1", "--host", envvar="AUTOLABEL_HOST", help="Address to bind."
    ),
    port: int = typer.Option(9090, "--port", envvar="AUTOLABEL_PORT", help="Port to listen on."),
    method: opt.MethodName | None = typer.Option(
        None, "--method", "-m", envvar="AUTOLABEL_METHOD", help="Method (default: the recipe's)."
    ),
    recipe: str = typer.Option(
        None, "--recipe", "-r", envvar="AUTOLABEL_RECIPE", help="Recipe name or YAML path."
    ),
    model: str = typer.Option(None, "--model", envvar="AUTOLABEL_MODEL", help="Backbone name."),
    pretrained: str = typer.Option(
        None, "--pretrained", envvar="AUTOLABEL_PRETRAINED", help="Pretrained tag."
    ),
    checkpoint: str = typer.Option(
        None, "--checkpoint", envvar="AUTOLABEL_CHECKPOINT", help="Local weights for --model."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        envvar="AUTOLABEL_DEVICE",
        parser=opt.parse_device,
        metavar=opt.DEVICES,
        help="Where to run the model.",
    ),
    max_side: int = typer.Option(
        1024, "--max-side", envvar="AUTOLABEL_MAX_SIDE", help=opt.MAX_SIDE_HELP
    ),
    min_area: int = typer.Option(16, "--min-area", envvar="AUTOLABEL_MIN_AREA"),
    ls_url: str = typer.Option(
        None,
        "--label-studio-url",
        envvar=["LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"],
        help="To fetch task images.",
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar=["LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"],
        help="To fetch task images.",
    ),
    document_root: Path = typer.Option(
        None,
        "--document-root",
        envvar="LOCAL_FILES_DOCUMENT_ROOT",
        help="Read Local Storage images from this folder instead of over HTTP.",
    ),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", help="Another host whose image URLs may be fetched (repeatable)."
    ),
    basic_auth_user: str = typer.Option(None, "--basic-auth-user", envvar="BASIC_AUTH_USER"),
    basic_auth_pass: str = typer.Option(None, "--basic-auth-pass", envvar="BASIC_AUTH_PASS"),
    workers: int = typer.Option(
        1, "--workers", envvar="AUTOLABEL_WORKERS", help="Predict requests run at once."
    ),
    queue: int = typer.Option(
        64, "--queue", envvar="AUTOLABEL_QUEUE", help="Predict requests waiting; more get 503."
    ),
    max_tasks: int = typer.Option(
        100, "--max-tasks", envvar="AUTOLABEL_MAX_TASKS", help="Tasks per predict request."
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="LOG_LEVEL"),
) -> None:
    """Serve autolabel as a Label Studio ML backend (model loaded once, at start)."""
    from autolabel.api import Labeler
    from autolabel.errors import UsageError
    from autolabel.sinks.labelstudio.backend.app import BackendServer, ServerLimits
    from autolabel.sinks.labelstudio.backend.media import MediaResolver
    from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, Predictor

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if (basic_auth_user is None) != (basic_auth_pass is None):
        raise UsageError("--basic-auth-user and --basic-auth-pass go together")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if queue < 0 or max_tasks < 1:
        raise UsageError("--queue must be at least 0 and --max-tasks at least 1")
    if document_root is not None and not document_root.is_dir():
        raise UsageError(f"--document-root {document_root}: not a folder")
    try:
        media = MediaResolver(ls_url, api_key, document_root, tuple(allow_host))
    except ValueError as exc:
        raise UsageError(f"--label-studio-url: {exc}") from exc
    labeler = Labeler(
        SERVE_VOCABULARY,
        method=method,
        recipe=recipe,
        model=model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        device=device,
        max_side=max_side,
        min_area=min_area,
        lazy=True,
    )
    console.print("loading the model ...")
    predictor = Predictor(labeler, media)
    auth = (basic_auth_user, basic_auth_pass) if basic_auth_user is not None else None
    try:
        limits = ServerLimits(predict_slots=workers, max_queue=queue, max_tasks=max_tasks)
        server = BackendServer((host, port), predictor, limits, auth)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    console.print(
        f"autolabel ML backend ({predictor.method}) on http://{host}:{server.server_port} "
        f"(pid {os.getpid()}); connect it in the project's Settings > Model",
        highlight=False,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


@contextlib.contextmanager
def _bar(label: str, total: bool = True) -> Iterator[Callable[..., None]]:
    """A progress bar started on first advance, so errors before any work print cleanly."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn()]
    columns += [MofNCompleteColumn()] if total else [TextColumn("{task.completed} tasks")]
    progress = Progress(*columns, TimeElapsedColumn(), console=console)
    task = progress.add_task(label, total=None)

    def advance(done: int, total: int | None = None) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        progress.stop()
