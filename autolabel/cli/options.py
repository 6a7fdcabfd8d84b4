"""Options that `run` and `tune` share, declared once, and the config built from them.

Only Typer and light autolabel modules are imported here, so `autolabel --help` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from autolabel.config import JobConfig
from autolabel.methods.base import METHODS

Job = TypeVar("Job", bound=JobConfig)
CHECKPOINTS = ("checkpoint", "classifier_checkpoint", "clip_checkpoint")
# --method takes the registry's names: Typer shows them in help, completes and checks them.
MethodName = Literal[tuple(METHODS)]
DEVICES = "auto|cpu|cuda|cuda:N"


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """--storage-options: a JSON object of keyword arguments for the fsspec filesystem."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON ({exc})", param_hint="--storage-options") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--storage-options")
    return value


# Credentials and endpoints of fsspec URLs (s3://, gs://, az://), for every command that takes one.
StorageOptions = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        metavar="JSON",
        help='fsspec options for URLs, e.g. \'{"endpoint_url": "http://..."}\'.',
    ),
]


def parse_device(value: str) -> str:
    """A --device value: auto, cpu, cuda or cuda:N (whether it exists is checked at load)."""
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")


Vocab = Annotated[Path, typer.Option("--vocab", "-v", help="Vocabulary file, one class a line.")]
Recipe = Annotated[
    str | None, typer.Option("--recipe", "-r", help="Bundled recipe name or a YAML path.")
]
Model = Annotated[
    str | None,
    typer.Option("--model", help="Backbone: open_clip name, HF id or folder (pnp), or 'toy'."),
]
Pretrained = Annotated[
    str | None, typer.Option("--pretrained", help="Pretrained tag (e.g. openai).")
]
Checkpoint = Annotated[Path | None, typer.Option("--checkpoint", help="Local weights for --model.")]
ClassifierModel = Annotated[
    str | None,
    typer.Option("--classifier-model", help="CaR: classifier backbone (default ViT-L-14)."),
]
ClassifierPretrained = Annotated[
    str | None, typer.Option("--classifier-pretrained", help="CaR: classifier pretrained tag.")
]
ClassifierCheckpoint = Annotated[
    Path | None,
    typer.Option("--classifier-checkpoint", help="CaR: local weights for the classifier."),
]
Background = Annotated[
    str | None,
    typer.Option(
        "--background", help="Comma-separated background words (replaces the default list)."
    ),
]
Device = Annotated[
    str,
    typer.Option("--device", parser=parse_device, metavar=DEVICES, help="Where to run the models."),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
RefineName = Literal["crf", "sam", "crf+sam", "none"]  # autolabel.refine.settings.REFINE_CHOICES
Refine = Annotated[
    RefineName | None,
    typer.Option(
        "--refine",
        help="After the method: its dense CRF, CaR + SAM's mask matching, both (the paper's "
        "CaR + SAM), or none (default: the recipe's).",
    ),
]
SamModel = Annotated[
    str | None,
    typer.Option(
        "--sam-model",
        help="SAM for --refine sam: HF id or save_pretrained folder (SAM, HQ-SAM, SAM 2), "
        "or 'toy'.",
    ),
]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]  # autolabel.config.PRECISIONS
Precision = Annotated[
    PrecisionName | None,
    typer.Option(
        "--precision",
        help="Numeric precision of the models: auto (bf16 where the device has it, fp16 on "
        "GPUs without bf16, else fp32; fp32 under --parity), fp32, bf16 or fp16 "
        "(default: the recipe's, else auto).",
    ),
]
MAX_SIDE_HELP = "Longest image side, in pixels, to process at (larger images shrink)."
MaxSide = Annotated[int, typer.Option("--max-side", help=MAX_SIDE_HELP)]

# The options of every labelling job (name: type and option, default), as JobConfig names them.
JOB_OPTIONS: dict[str, tuple[Any, Any]] = {
    "vocab": (Vocab, inspect.Parameter.empty),
    "recipe": (Recipe, None),
    "model": (Model, None),
    "pretrained": (Pretrained, None),
    "checkpoint": (Checkpoint, None),
    "classifier_model": (ClassifierModel, None),
    "classifier_pretrained": (ClassifierPretrained, None),
    "classifier_checkpoint": (ClassifierCheckpoint, None),
    "background": (Background, None),
    "device": (Device, "auto"),
    "precision": (Precision, None),
    "batch_size": (BatchSize, 1),
}


def job_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add JOB_OPTIONS to a command, after its required parameters, for Typer to parse.

    Their values reach the command only in `ctx.params` (read them with job_config), so the
    command takes a `ctx: typer.Context` and does not list them.
    """
    signature = inspect.signature(command, eval_str=True)
    own = list(signature.parameters.values())
    split = next((i for i, p in enumerate(own) if p.default is not p.empty), len(own))
    shared = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a)
        for name, (a, d) in JOB_OPTIONS.items()
    ]

    @functools.wraps(command)
    def with_options(**values: Any) -> None:
        command(**{k: v for k, v in values.items() if k not in JOB_OPTIONS})

    with_options.__signature__ = signature.replace(parameters=[*own[:split], *shared, *own[split:]])
    return with_options


def job_config(cls: type[Job], params: dict[str, Any]) -> Job:
    """A run or tune config from a command's parsed options (`ctx.params`), matched by name."""
    values = {f.name: params[f.name] for f in fields(cls) if f.name in params}
    # Weights files are recorded as text, as given (run.json, the tune log's fingerprint).
    for name in CHECKPOINTS:
        if values.get(name) is not None:
            values[name] = str(values[name])
    text = values.get("background")
    values["background"] = [w.strip() for w in text.split(",") if w.strip()] if text else None
    return cls(**values)
