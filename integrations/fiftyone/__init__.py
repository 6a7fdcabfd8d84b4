"""autolabel in FiftyOne: a plugin and a remote model zoo source, both in this one folder.

As a plugin (fiftyone.yml, `register`), two operators; forms and progress only:
segment              label the target view with <field>_instances / <field>_semantic
find_label_mistakes  score how much a reviewed field disagrees with autolabel's masks

As a zoo source (manifest.json, `download_model` / `load_model`, and the App form hooks
`resolve_input` / `parse_parameters`): the models autolabel-fast, autolabel-car and
autolabel-pnp, for `foz.load_zoo_model(name, classes=[...])` and `apply_model`.

The work is in autolabel itself (autolabel/sinks/fiftyone.py): the segment operator and the zoo
models label images through the same function, `label_images`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from autolabel.api import Labeler
from autolabel.config import DEFAULT_METHOD, list_recipes, resolve_method
from autolabel.errors import UsageError
from autolabel.methods.base import METHODS
from autolabel.sinks.fiftyone import (
    OUTPUTS,
    ZOO_MODELS,
    LabelerModel,
    field_names,
    label_classes,
    mark_zoo_model_downloaded,
    score_disagreement,
    segment_samples,
    zoo_model,
)
from autolabel.vocab import DEFAULT_BACKGROUND, Vocabulary, parse_vocabulary

# Views larger than this default to delegated execution (`fiftyone delegated launch`), since
# segmenting hundreds of images would hold the App's request for minutes.
DELEGATE_ABOVE = 50
DEFAULT_FIELD = "autolabel"
VOCAB_HELP = (
    "One class per line; synonyms after a colon: `dog: puppy, hound`. "
    "`!background: sky, wall` replaces the background words."
)


class _Operator(foo.Operator):
    """What both operators share: their config, the end of their form and delegation.

    They run as generators, in the App or delegated; their forms end with the method and
    delegation inputs; they delegate by default above DELEGATE_ABOVE images to segment.
    """

    NAME = LABEL = DESCRIPTION = ACTION = ""  # set by each operator

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=self.NAME,
            label=self.LABEL,
            description=self.DESCRIPTION,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx, action_description=self.ACTION)
        self.own_inputs(ctx, inputs)
        _method_inputs(ctx, inputs)
        _delegate_input(inputs, self.to_segment(ctx))
        return types.Property(inputs, view=types.View(label=self.LABEL))

    def resolve_delegation(self, ctx: Any) -> bool:
        choice = ctx.params.get("delegate")
        return bool(choice) if choice is not None else self.to_segment(ctx) > DELEGATE_ABOVE

    def own_inputs(self, ctx: Any, inputs: types.Object) -> None:
        """The operator's own form fields, before the shared ones."""
        raise NotImplementedError

    def to_segment(self, ctx: Any) -> int:
        """How many samples the operator would segment with the form's current values."""
        raise NotImplementedError


class Segment(_Operator):
    """Segment the target view's images into a vocabulary's classes."""

    NAME = "segment"
    LABEL = "autolabel: segment"
    DESCRIPTION = "Training-free instance and semantic masks from a vocabulary"
    ACTION = "Segment"

    def own_inputs(self, ctx: Any, inputs: types.Object) -> None:
        _vocabulary_input(ctx, inputs, "Vocabulary", VOCAB_HELP, rows=5, required=True)
        _field_input(
            ctx,
            inputs,
            "Output field",
            "Writes <field>_instances (Detections) and <field>_semantic",
        )
        inputs.bool(
            "overwrite",
            default=False,
            label="Re-segment samples that already have the field",
        )

    def to_segment(self, ctx: Any) -> int:
        """Samples without the output field; all of them with overwrite."""
        target = ctx.target_view()
        if ctx.params.get("overwrite"):
            return len(target)
        try:
            instances_field, _ = field_names(_prefix(ctx.params))
        except UsageError:
            return len(target)
        return len(target.exists(instances_field, False))

    def execute(self, ctx: Any) -> Iterator[Any]:
        params = ctx.params
        yield from _run_segment(
            ctx,
            ctx.target_view(),
            _vocabulary(params),
            _prefix(params),
            overwrite=bool(params.get("overwrite")),
        )
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()


class FindLabelMistakes(_Operator):
    """Rank samples by how much a reviewed field disagrees with autolabel's semantic masks."""

    NAME = "find_label_mistakes"
    LABEL = "autolabel: find label mistakes"
    DESCRIPTION = "Score reviewed labels against training-free masks; sort by likely error"
    ACTION = "Score"

    def own_inputs(self, ctx: Any, inputs: types.Object) -> None:
        choices = types.DropdownView()
        for name in _reviewable_fields(ctx):
            choices.add_choice(name, label=name)
        inputs.enum(
            "reviewed_field",
            choices.values(),
            required=True,
            label="Reviewed field",
            description="Ground truth to audit: Detections with masks, Polylines or Segmentation",
            view=choices,
        )
        _field_input(
            ctx,
            inputs,
            "autolabel field",
            "Compares with <field>_semantic; images without it are segmented first",
        )
        inputs.str(
            "score_field",
            default="autolabel_disagreement",
            label="Score field",
            description="Per-sample score in [0, 1] (1 - mean class IoU) and <score>_classes",
        )
        _vocabulary_input(
            ctx,
            inputs,
            "Vocabulary for missing predictions",
            "Empty: the reviewed field's class names. " + VOCAB_HELP,
            rows=3,
        )

    def to_segment(self, ctx: Any) -> int:
        """Samples without predictions, segmented before scoring."""
        try:
            _, semantic_field = field_names(_prefix(ctx.params))
        except UsageError:
            return 0
        return len(ctx.target_view().exists(semantic_field, False))

    def execute(self, ctx: Any) -> Iterator[Any]:
        params = ctx.params
        target = ctx.target_view()
        reviewed = params["reviewed_field"]
        prefix = _prefix(params)
        _, semantic_field = field_names(prefix)
        missing = target.exists(semantic_field, False)
        if len(missing):
            vocab = _optional_vocabulary(params) or _vocabulary_from_field(target, reviewed)
            # Only samples without predictions are in `missing`, so nothing is redone.
            yield from _run_segment(ctx, missing, vocab, prefix, overwrite=True)
        score_field = params.get("score_field") or "autolabel_disagreement"
        summary = score_disagreement(target, reviewed, semantic_field, score_field)
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
            yield ctx.ops.set_view(target.sort_by(score_field, reverse=True))
            yield ctx.ops.notify(
                f"scored {summary.scored} samples ({summary.skipped} lack a field); "
                f"sorted by {score_field}, likely mistakes first"
            )


def _vocabulary_input(
    ctx: Any, inputs: types.Object, label: str, description: str, rows: int, required: bool = False
) -> None:
    prop = inputs.str(
        "vocabulary",
        required=required,
        label=label,
        description=description,
        view=types.TextFieldView(multiline=True, rows=rows),
    )
    _check(prop, lambda: _optional_vocabulary(ctx.params))


def _field_input(ctx: Any, inputs: types.Object, label: str, description: str) -> None:
    """The <field> prefix input, checked as the operator will use it."""
    prop = inputs.str("field", default=DEFAULT_FIELD, label=label, description=description)
    _check(prop, lambda: field_names(_prefix(ctx.params)))


def _prefix(params: dict[str, Any]) -> str:
    return params.get("field") or DEFAULT_FIELD


def _run_segment(
    ctx: Any, target: Any, vocab: Vocabulary, prefix: str, *, overwrite: bool
) -> Iterator[Any]:
    """Drive segment_samples, reporting progress to the App or the delegated run."""
    params = ctx.params
    progress = None
    for progress in segment_samples(
        target,
        _labeler(params, vocab),
        prefix,
        overwrite=overwrite,
        batch_size=_number(params, "batch_size", 1),
    ):
        fraction = progress.done / progress.total if progress.total else 1.0
        label = f"autolabel: {progress.done}/{progress.total} images"
        if ctx.delegated:
            ctx.set_progress(progress=fraction, label=label)
        else:
            yield ctx.ops.set_progress(progress=fraction, label=label)
    if progress is not None and progress.failed and not ctx.delegated:
        first = "; ".join(f"{path}: {reason}" for path, reason in progress.failed[:3])
        yield ctx.ops.notify(f"{len(progress.failed)} images failed ({first})", variant="warning")


class _LastLabeler:
    """The Labeler of the last run, kept with its models (the App or a delegated worker runs
    many operations in one process); one at a time, so memory holds one set of models."""

    lock = threading.Lock()
    key: str | None = None
    labeler: Labeler | None = None


def _labeler(params: dict[str, Any], vocab: Vocabulary) -> Labeler:
    """A Labeler for the form's options and this call's vocabulary, every option checked.

    When the method, settings, device and sizes are those of the last run, its loaded models
    are reused through `with_vocabulary`; otherwise the new Labeler loads them on first use.
    """
    labeler = Labeler(
        vocab,
        method=params.get("method") or None,
        recipe=params.get("recipe") or None,
        model=params.get("model") or None,
        pretrained=params.get("pretrained") or None,
        checkpoint=params.get("checkpoint") or None,
        device=params.get("device") or "auto",
        max_side=_number(params, "max_side", 1024),
        min_area=_number(params, "min_area", 16),
        lazy=True,
    )
    models = (labeler.method, labeler.settings, labeler.device, labeler.max_side, labeler.min_area)
    key = json.dumps(models, sort_keys=True, default=str)
    with _LastLabeler.lock:
        last = _LastLabeler.labeler
        if last is not None and _LastLabeler.key == key and last.loaded:
            # The new Labeler's vocabulary has the recipe's background applied already.
            return last.with_vocabulary(labeler.vocabulary)
        _LastLabeler.key, _LastLabeler.labeler = key, labeler
    return labeler


def _number(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    return default if value is None else int(value)


def _vocabulary(params: dict[str, Any]) -> Vocabulary:
    return parse_vocabulary(params.get("vocabulary") or "", "vocabulary")


def _optional_vocabulary(params: dict[str, Any]) -> Vocabulary | None:
    return _vocabulary(params) if (params.get("vocabulary") or "").strip() else None


def _vocabulary_from_field(target: Any, reviewed: str) -> Vocabulary:
    """The reviewed field's classes; background words that are also classes are left out."""
    names = label_classes(target, reviewed)
    if not names:
        raise UsageError(f"field {reviewed!r} has no class names to segment; give a vocabulary")
    lowered = {n.lower() for n in names}
    return Vocabulary.from_names(names, tuple(w for w in DEFAULT_BACKGROUND if w not in lowered))


def _method_inputs(ctx: Any, inputs: types.Object) -> None:
    """Method, recipe and backbone options, named as in `autolabel run`."""
    methods = types.DropdownView()
    for name in METHODS:
        methods.add_choice(name, label=name)
    inputs.enum(
        "method",
        methods.values(),
        label="Method",
        description=f"Empty: the recipe's method ({DEFAULT_METHOD} without a recipe)",
        view=methods,
    )
    recipes = types.AutocompleteView()
    for name in list_recipes():
        recipes.add_choice(name, label=name)
    recipe_prop = inputs.str(
        "recipe", label="Recipe", description="A bundled recipe or a .yaml path", view=recipes
    )
    params = ctx.params
    _check(
        recipe_prop,
        lambda: resolve_method(params.get("method") or None, params.get("recipe") or None),
    )
    inputs.str("model", label="Model", description="Backbone name, e.g. ViT-B-16 or toy")
    inputs.str("pretrained", label="Pretrained tag", description="e.g. openai")
    inputs.str("checkpoint", label="Checkpoint", description="Local weights file for the model")
    inputs.str("device", default="auto", label="Device", description="auto, cpu, cuda or cuda:N")
    inputs.int("batch_size", default=1, label="Batch size")
    inputs.int("max_side", default=1024, label="Max side", description="Pixels processed")
    inputs.int("min_area", default=16, label="Min area", description="Smaller instances dropped")


def _check(prop: Any, parse: Any) -> None:
    """Show a usage error under the form field instead of failing on execute."""
    try:
        parse()
    except UsageError as exc:
        prop.invalid = True
        prop.error_message = str(exc)


def _delegate_input(inputs: types.Object, count: int) -> None:
    inputs.bool(
        "delegate",
        default=count > DELEGATE_ABOVE,
        label="Delegate",
        description=(
            f"{count} images to segment. Delegated runs go to the queue that "
            "`fiftyone delegated launch` works through, and record their progress"
        ),
    )


def _reviewable_fields(ctx: Any) -> list[str]:
    schema = ctx.dataset.get_field_schema(
        embedded_doc_type=[fo.Detections, fo.Polylines, fo.Segmentation]
    )
    return sorted(schema)


def register(plugin: Any) -> None:
    """FiftyOne's plugin entry point."""
    plugin.register(Segment)
    plugin.register(FindLabelMistakes)


# --- the remote model zoo source (manifest.json) --------------------------------------------
# FiftyOne imports this file from its copy of the folder under fo.config.model_zoo_dir, as a
# module named after the manifest's "name" ("@autolabel/autolabel" -> "@autolabel.autolabel";
# the name must never be plain "autolabel", which would replace the autolabel package).


def download_model(model_name: str, model_path: str) -> None:
    """Zoo hook: nothing to fetch ahead of time (the Labeler downloads weights on first use),
    so only the file that tells FiftyOne the model is downloaded is written."""
    mark_zoo_model_downloaded(model_name, model_path)


def load_model(model_name: str, model_path: str, **kwargs: Any) -> LabelerModel:
    """Zoo hook behind `foz.load_zoo_model(model_name, classes=[...], **kwargs)`.

    `classes`: class lines ("dog: puppy, hound") or a vocabulary file's path. `output`:
    "detections" (default), "segmentation" or "both". The rest go to `autolabel.Labeler`:
    recipe, model, pretrained, checkpoint, settings, background, device, max_side, min_area...
    """
    return zoo_model(model_name, **kwargs)


def resolve_input(model_name: str, ctx: Any) -> types.Property:
    """Zoo hook: the model's options in the App's "Apply zoo model" form (stored there under
    ctx.params["remote_params"]); parse_parameters turns them into load_model's arguments."""
    params = ctx.params.get("remote_params") or {}
    inputs = types.Object()
    vocabulary = inputs.str(
        "classes",
        required=True,
        label="Vocabulary",
        description=VOCAB_HELP,
        view=types.TextFieldView(multiline=True, rows=5),
    )
    _check(vocabulary, lambda: parse_vocabulary(params.get("classes") or "", "vocabulary"))
    recipes = types.AutocompleteView()
    for name in list_recipes():
        recipes.add_choice(name, label=name)
    recipe = inputs.str(
        "recipe", label="Recipe", description="A bundled recipe or a .yaml path", view=recipes
    )
    method = ZOO_MODELS.get(model_name)
    _check(recipe, lambda: resolve_method(method, params.get("recipe") or None))
    inputs.str("model", label="Model", description="Backbone name, e.g. ViT-B-16 or toy")
    inputs.str("device", default="auto", label="Device", description="auto, cpu, cuda or cuda:N")
    outputs = types.DropdownView()
    for name in OUTPUTS:
        outputs.add_choice(name, label=name)
    inputs.enum(
        "output",
        outputs.values(),
        default="detections",
        label="Output",
        description="both: <label field>_instances and _semantic, as the segment operator",
        view=outputs,
    )
    inputs.int("max_side", default=1024, label="Max side", description="Pixels processed")
    inputs.int("min_area", default=16, label="Min area", description="Smaller instances dropped")
    return types.Property(inputs)


def parse_parameters(model_name: str, ctx: Any, params: dict[str, Any]) -> None:
    """Zoo hook: the form's values, in place, as load_model's keyword arguments."""
    for key in [key for key, value in params.items() if value is None or value == ""]:
        del params[key]
    if isinstance(params.get("classes"), str):
        params["classes"] = params["classes"].splitlines()
