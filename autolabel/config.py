"""Run configuration and YAML recipes: what to run, resolved once, recorded in run.json."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autolabel.errors import UsageError

if TYPE_CHECKING:
    from autolabel.refine.settings import RefinePlan, SamSettings


def _recipes_dir() -> Path:
    """The bundled recipes: package autolabel.recipes, mapped from the repository's recipes/."""
    spec = importlib.util.find_spec("autolabel.recipes")
    found = [Path(p) for p in (spec.submodule_search_locations or ())] if spec else []
    # From a source tree or an editable install the data-only package is not importable.
    folders = [p for p in found if p.is_dir()] or [Path(__file__).resolve().parents[1] / "recipes"]
    return folders[0]


RECIPES_DIR = _recipes_dir()
DEFAULT_METHOD = "car"
# --precision values (autolabel.models.precision): auto picks one per device.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The default precision when neither an option nor the recipe sets one (else auto): also for the
# Label Studio backend and the FiftyOne plugin, which take no --precision.
PRECISION_ENV = "AUTOLABEL_PRECISION"
RECIPE_KEYS = {
    "method",
    "model",
    "pretrained",
    "background",
    "settings",
    "description",
    "refine",
    "sam",
    "precision",
}
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
    refine: str | None = None  # crf, sam, crf+sam or none (autolabel.refine.settings)
    sam: dict[str, Any] | None = None  # SAM's model, generator and matching settings
    precision: str | None = None  # auto, fp32, bf16 or fp16 (autolabel.models.precision)


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
        refine=data.get("refine"),
        sam=data.get("sam"),
        precision=_recipe_precision(path, data.get("precision")),
    )


def _recipe_precision(path: Path, value: Any) -> str | None:
    return None if value is None else check_precision(value, f"recipe {path}: 'precision'")


def check_precision(value: Any, where: str = "--precision") -> str:
    """A precision name (PRECISIONS); UsageError naming where it came from otherwise."""
    if value not in PRECISIONS:
        raise UsageError(f"{where} must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write a recipe YAML that load_recipe reads back (atomically)."""
    from autolabel.io.atomic import atomic_write_text

    data: dict[str, Any] = {"method": recipe.method}
    if recipe.description:
        data["description"] = recipe.description
    for key in ("model", "pretrained", "background", "refine", "sam", "precision"):
        if getattr(recipe, key) is not None:
            data[key] = getattr(recipe, key)
    data["settings"] = recipe.settings
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def bundled_recipe_for(method: str, model: str | None) -> str | None:
    """The bundled recipe that a bundled model brings for a method (the toy model has one for
    each method it can run), or None."""
    if model is None:
        return None
    for name in list_recipes():
        recipe = load_recipe(name)
        if recipe.model == model and recipe.method == method:
            return name
    return None


def resolve_method(
    method: str | None = None,
    recipe: str | None = None,
    *,
    parity: bool = False,
    background: list[str] | None = None,
    settings: dict[str, Any] | None = None,
    refine: str | None = None,
    sam_model: str | None = None,
    precision: str | None = None,
    **models: str | None,
) -> ResolvedRun:
    """Merge a recipe, settings and explicit options (options win, then settings) into a method
    and its settings.

    `models` takes the MODEL_KEYS (model, pretrained, checkpoint, classifier_*); None = not given.
    Without a recipe, a model that ships its own recipe for the method (the toy model) uses it.
    Every entry point (the Python API, run, tune, the Label Studio backend, the FiftyOne plugin)
    resolves here. Settings are merged, not validated: methods.base.validate_settings does that.
    `refine` (else the recipe's) and `sam_model` (else the recipe's sam.model) are checked here;
    the CRF part of refine becomes the method's `crf` setting. `precision` (else the recipe's,
    else $AUTOLABEL_PRECISION, else auto) is checked here; the Labeler resolves it per device.
    """
    from autolabel.refine.settings import check_refine

    unknown = set(models) - set(MODEL_KEYS)
    if unknown:
        raise TypeError(f"unknown model option(s): {', '.join(sorted(unknown))}")
    if settings is not None and not isinstance(settings, dict):
        raise UsageError("settings must be a mapping of setting names to values")
    if recipe is None:
        recipe = bundled_recipe_for(method or DEFAULT_METHOD, models.get("model"))
    loaded = load_recipe(recipe) if recipe else None
    chosen = method or (loaded.method if loaded else None) or DEFAULT_METHOD
    if loaded and loaded.method and method and loaded.method != method:
        raise UsageError(f"recipe {loaded.name!r} is for method {loaded.method!r}, not {method!r}")
    merged: dict[str, Any] = dict(loaded.settings) if loaded else {}
    if loaded:
        for key in ("model", "pretrained"):
            if getattr(loaded, key) is not None:
                merged[key] = getattr(loaded, key)
    merged.update(settings or {})
    settings = merged
    given = {key: str(value) for key, value in models.items() if value is not None}
    settings.update(given)
    # A local checkpoint replaces the recipe's pretrained tag for the same backbone.
    if "checkpoint" in given and "pretrained" not in given:
        settings.pop("pretrained", None)
    if "classifier_checkpoint" in given and "classifier_pretrained" not in given:
        settings.pop("classifier_pretrained", None)
    if parity:
        settings["parity"] = True
    plan = check_refine(
        refine if refine is not None else (loaded.refine if loaded else None),
        loaded.sam if loaded else None,
        sam_model,
        settings.get("model"),
    )
    if plan.crf is not None:
        settings["crf"] = _crf_setting(settings.get("crf"), plan.crf)
    user_background = background is not None
    if background is None and loaded is not None:
        background = loaded.background
    if precision is None and loaded is not None:
        precision = loaded.precision
    if precision is None and os.environ.get(PRECISION_ENV):
        precision = check_precision(os.environ[PRECISION_ENV], PRECISION_ENV)
    precision = check_precision(precision or "auto")
    return ResolvedRun(
        chosen,
        loaded.name if loaded else None,
        settings,
        background,
        user_background,
        plan,
        precision,
    )


def _crf_setting(current: Any, wanted: bool) -> Any:
    """The method's crf setting for --refine: a recipe's CRF parameters (pnp) stay when the CRF
    stays on."""
    if wanted and isinstance(current, dict):
        return current
    return wanted


MIN_MAX_SIDE = 32


def check_sizes(max_side: int, min_area: int = 0, batch_size: int = 1) -> None:
    """UsageError for --max-side, --min-area or --batch-size values a run cannot use."""

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(max_side) or max_side < MIN_MAX_SIDE:
        raise UsageError(f"--max-side must be a whole number of at least {MIN_MAX_SIDE} pixels")
    if not whole(min_area) or min_area < 0:
        raise UsageError("--min-area must be a whole number of pixels, 0 or more")
    if not whole(batch_size) or batch_size < 1:
        raise UsageError("--batch-size must be a whole number, at least 1")


@dataclass
class JobConfig:
    """What `autolabel run` and `autolabel tune` share: the inputs, the method and its models."""

    images: Path
    vocab: Path | None  # None: the Python API got the vocabulary as data, not as a file
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
    refine: str | None = None  # None: the recipe's, else the method's default
    sam_model: str | None = None
    precision: str | None = None  # None: the recipe's, else auto

    def resolve(self) -> ResolvedRun:
        """Check the numeric options, then resolve the method as resolve_method does."""
        check_sizes(self.max_side, getattr(self, "min_area", 0), self.batch_size)
        models = {key: getattr(self, key) for key in MODEL_KEYS}
        return resolve_method(
            self.method,
            self.recipe,
            parity=self.parity,
            background=self.background,
            refine=self.refine,
            sam_model=self.sam_model,
            precision=self.precision,
            **models,
        )


@dataclass
class RunConfig(JobConfig):
    """Everything `autolabel run` needs; the CLI fills it, the runner consumes it."""

    min_area: int = 16
    previews: bool = False
    resume: bool = True
    overwrite: bool = False
    # Where the images are labelled (autolabel.engines): this process, or a Ray cluster.
    engine: str = "local"
    # Local engine: processes running each image's CRF beside the model (None: the default;
    # 0: the serial loop).
    cpu_workers: int | None = None
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    # fsspec options for URLs in images/out (endpoint, profile...); never recorded in run.json.
    storage_options: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy for run.json (storage options left out: they can hold secrets)."""
        data = asdict(self)
        data.pop("storage_options")
        for key in ("images", "vocab", "out"):
            data[key] = None if data[key] is None else os.fspath(data[key])
        return data


@dataclass
class TuneConfig(JobConfig):
    """Everything `autolabel tune` needs; the CLI fills it, autolabel.tune.run_tune consumes it.

    `out` is the recipe YAML to write; the search log goes next to it.
    """

    max_side: int = 512
    tags: Path | None = None  # None: CLIP tags the images
    tag_threshold: float = 0.1
    clip_model: str = "ViT-B-16"
    clip_pretrained: str | None = "openai"
    clip_checkpoint: str | None = None
    budget: int = 20
    max_images: int = 20
    seed: int = 0
    restart: bool = False


@dataclass
class ResolvedRun:
    """The method, recipe name, merged settings and background words of a run."""

    method: str
    recipe: str | None
    settings: dict[str, Any]
    background: list[str] | None
    background_user: bool = False  # written by the user (--background), not by a recipe
    refine: RefinePlan | None = None  # the checked --refine / sam settings
    precision: str = "auto"  # as asked (the Labeler resolves auto for its device)

    @property
    def sam(self) -> SamSettings | None:
        """SAM's settings when the run has a SAM stage."""
        return None if self.refine is None else self.refine.sam
