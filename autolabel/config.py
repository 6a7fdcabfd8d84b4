"""Run configuration and YAML recipes: what to run, resolved once, recorded in run.json."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autolabel.errors import UsageError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_METHOD = "car"
RECIPE_KEYS = {"method", "model", "pretrained", "background", "settings", "description"}
# CLI/model options that reach a method as settings keys (None = not given, method default wins).
MODEL_KEYS = (
    "model",
    "pretrained",
    "checkpoint",
    "classifier_model",
    "classifier_pretrained",
    "classifier_checkpoint",
)


@dataclass
class Recipe:
    """A named preset: a method, default backbones, background words and method settings."""

    name: str
    method: str | None = None
    model: str | None = None
    pretrained: str | None = None
    background: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def list_recipes() -> list[str]:
    """Names of the recipes shipped with autolabel."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """Load a bundled recipe by name or a YAML file by path, validating its keys."""
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(
                f"unknown recipe {name_or_path!r}; bundled recipes: {', '.join(list_recipes())} "
                "(or pass a path to a .yaml file)"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"recipe {path}: cannot read it ({exc.strerror or exc})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"recipe {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path}: expected a mapping at the top level")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise UsageError(
            f"recipe {path}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(RECIPE_KEYS))}"
        )
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise UsageError(f"recipe {path}: 'settings' must be a mapping")
    background = data.get("background")
    if background is not None and not (
        isinstance(background, list) and all(isinstance(w, str) for w in background)
    ):
        raise UsageError(f"recipe {path}: 'background' must be a list of words")
    return Recipe(
        name=path.stem if path.parent == RECIPES_DIR else str(path),
        method=data.get("method"),
        model=data.get("model"),
        pretrained=data.get("pretrained"),
        background=background,
        settings=dict(settings),
        description=str(data.get("description", "")),
    )


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write a recipe YAML that load_recipe reads back (atomically)."""
    from autolabel.writers.atomic import atomic_write_text

    data: dict[str, Any] = {"method": recipe.method}
    if recipe.description:
        data["description"] = recipe.description
    for key in ("model", "pretrained", "background"):
        if getattr(recipe, key) is not None:
            data[key] = getattr(recipe, key)
    data["settings"] = recipe.settings
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


@dataclass
class RunConfig:
    """Everything `autolabel run` needs; the CLI fills it, the runner consumes it."""

    images: Path
    vocab: Path
    out: Path
    method: str | None = None  # None: the recipe's method, else DEFAULT_METHOD
    recipe: str | None = None
    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    classifier_model: str | None = None
    classifier_pretrained: str | None = None
    classifier_checkpoint: str | None = None
    parity: bool = False
    background: list[str] | None = None
    device: str = "auto"
    batch_size: int = 1
    max_side: int = 1024
    min_area: int = 16
    previews: bool = False
    resume: bool = True
    overwrite: bool = False
    progress: bool = True

    def resolve(self) -> ResolvedRun:
        """Merge recipe and options (options win) into the method name and its settings."""
        recipe = load_recipe(self.recipe) if self.recipe else None
        method = self.method or (recipe.method if recipe else None) or DEFAULT_METHOD
        if recipe and recipe.method and self.method and recipe.method != self.method:
            raise UsageError(
                f"recipe {recipe.name!r} is for method {recipe.method!r}, not {self.method!r}"
            )
        settings: dict[str, Any] = dict(recipe.settings) if recipe else {}
        if recipe:
            for key in ("model", "pretrained"):
                if getattr(recipe, key) is not None:
                    settings[key] = getattr(recipe, key)
        for key in MODEL_KEYS:
            value = getattr(self, key)
            if value is not None:
                settings[key] = str(value)
        # A local checkpoint replaces the recipe's pretrained tag for the same backbone.
        if self.checkpoint is not None and self.pretrained is None:
            settings.pop("pretrained", None)
        if self.classifier_checkpoint is not None and self.classifier_pretrained is None:
            settings.pop("classifier_pretrained", None)
        if self.parity:
            settings["parity"] = True
        background = self.background
        if background is None and recipe is not None:
            background = recipe.background
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.max_side < 32:
            raise UsageError("--max-side must be at least 32 pixels")
        if self.min_area < 0:
            raise UsageError("--min-area cannot be negative")
        return ResolvedRun(method, recipe.name if recipe else None, settings, background)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy for run.json."""
        data = asdict(self)
        for key in ("images", "vocab", "out"):
            data[key] = os.fspath(data[key])
        return data


@dataclass
class ResolvedRun:
    """The method, recipe name, merged settings and background words of a run."""

    method: str
    recipe: str | None
    settings: dict[str, Any]
    background: list[str] | None
