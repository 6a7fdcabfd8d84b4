"""The model side of the ML backend: one Labeler per process, tasks in, predictions out.

Two kinds of request reach `Predictor.predict`: pre-annotation (no context: every instance of
the project's labels) and interactive labelling (a `context` with what the annotator clicked,
boxed or typed: the one object it points at, as a brush region). Interactive masks are the
method's own instances (the backend runs no SAM stage): the connected instance under a click, the
instances a box overlaps most (clipped to the box), every instance of a typed phrase.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk.label_interface import LabelInterface

from autolabel.api import Labeler
from autolabel.errors import AutolabelError, ImageError, MediaError, UsageError
from autolabel.instances import Instance, Instances
from autolabel.io.images import ImageEntry, LoadError, load_image
from autolabel.provenance import model_version
from autolabel.sinks.labelstudio.backend.logsafe import safe
from autolabel.sinks.labelstudio.backend.media import MediaResolver
from autolabel.sinks.labelstudio.config import (
    LabelTarget,
    find_target,
    label_for,
    parse_interface,
    prompt_vocabulary,
    vocabulary_from_target,
)
from autolabel.sinks.labelstudio.regions import (
    Interaction,
    check_prediction,
    make_prediction,
    masks_prediction,
    parse_context,
    point_pixel,
    rectangle_mask,
)
from autolabel.vocab import VocabClass, Vocabulary

log = logging.getLogger("autolabel.sinks.labelstudio.backend")

# The backend's classes come from each project's labeling config. Its Labeler is made with this
# stand-in, which carries only the background words (a recipe's, else the default list).
SERVE_VOCABULARY = Vocabulary((VocabClass("(the labels of each project's labeling config)"),))
# Interactive requests come in bursts on one image (click, click, box): its segmentation is
# kept for the next ones, per vocabulary, for this many images.
INTERACTIVE_CACHE_SIZE = 8
# A box takes, besides the instance it overlaps most, every instance of the label with at
# least this share of its area inside the box.
BOX_INSIDE_SHARE = 0.5


class ConfigError(UsageError):
    """A labeling config the backend cannot serve (the request, not the server, is at fault)."""


@dataclass(frozen=True)
class ProjectSpec:
    """A labeling config turned into what prediction needs; cached per config text."""

    interface: LabelInterface
    target: LabelTarget
    labeler: Labeler  # the backend's Labeler with the config's labels as its vocabulary
    model_version: str


class Predictor:
    """Holds the loaded Labeler; thread-safe, one image in the model at a time.

    The Labeler's models load here, once; each labeling config gets the same models with its
    own vocabulary (`Labeler.with_vocabulary`).
    """

    def __init__(self, labeler: Labeler, media: MediaResolver) -> None:
        labeler.load()  # model_version covers the loaded weights; fail at start, not per task
        self.labeler = labeler
        self.media = media
        self._model_lock = threading.Lock()
        self._spec = functools.lru_cache(maxsize=32)(self._build_spec)
        self._recent: OrderedDict[tuple, Instances] = OrderedDict()
        self._recent_lock = threading.Lock()

    @property
    def method(self) -> str:
        """The labelling method's name."""
        return self.labeler.method

    def spec(self, label_config: str) -> ProjectSpec:
        """The parsed config (cached); ConfigError when it has no usable BrushLabels."""
        if not isinstance(label_config, str) or not label_config.strip():
            raise ConfigError("the request has no labeling config")
        return self._spec(label_config)

    def _build_spec(self, label_config: str) -> ProjectSpec:
        try:
            interface = parse_interface(label_config, "labeling config")
            target = find_target(interface, "labeling config")
            vocab = vocabulary_from_target(target, self.labeler.vocabulary.background)
            labeler = self.labeler.with_vocabulary(vocab)
        except AutolabelError as exc:
            raise ConfigError(str(exc)) from exc
        identity = labeler.identity()
        if target.score_threshold > 0:  # fewer regions than `autolabel run` makes: not its version
            threshold = {"model_score_threshold": target.score_threshold}
            identity["settings"] = {**(identity.get("settings") or {}), **threshold}
        version = model_version(identity, labeler.describe()["models"])
        return ProjectSpec(interface, target, labeler, version)

    def predict(
        self,
        tasks: list[dict],
        label_config: str,
        context: dict | None = None,
        params: dict | None = None,
    ) -> list[dict]:
        """One prediction per task, in order; a task that fails gets an empty result.

        context: the interactive request's regions ({"result": [...]}); when None, LS's
        `params["context"]` is used. Without regions in it, every task is pre-annotated.
        The config's `model_skip` gives empty results; its `model_score_threshold` drops the
        instances scoring below it.
        """
        spec = self.spec(label_config)
        if context is None and isinstance(params, dict):
            context = params.get("context")
        if spec.target.skip:
            log.info("model_skip is set on <%s>: no predictions", spec.target.from_name)
            return [_empty(spec) for _ in tasks]
        try:
            interactions = parse_context(context)
        except UsageError as exc:
            log.warning("interactive request refused: %s", exc)
            return [_empty(spec) for _ in tasks]
        if not interactions:
            return [self._predict_task(task, spec) for task in tasks]
        # Text from a TextArea that is not on the target image (a comment box) is no prompt.
        prompts = spec.target.prompts
        interactions = [
            i for i in interactions if i.kind != "text" or not i.from_name or i.from_name in prompts
        ]
        return [self._interactive_task(task, spec, interactions) for task in tasks]

    def _predict_task(self, task: dict, spec: ProjectSpec) -> dict:
        def predict() -> dict:
            instances = _above(self._instances(task, spec), spec.target.score_threshold)
            return make_prediction(instances, spec.target, spec.model_version)

        return self._checked(task, spec, predict, "prediction")

    def _interactive_task(
        self, task: dict, spec: ProjectSpec, interactions: list[Interaction]
    ) -> dict:
        def predict() -> dict:
            masks = self._interact(task, spec, interactions)
            return masks_prediction(masks, spec.target, spec.model_version)

        return self._checked(task, spec, predict, "interactive prediction")

    def _checked(
        self, task: dict, spec: ProjectSpec, predict: Callable[[], dict], what: str
    ) -> dict:
        """The task's prediction, checked against the config; an empty one if it fails."""
        task_id = task.get("id")
        try:
            prediction = predict()
            check_prediction(spec.interface, prediction, f"task {task_id}")
            return prediction
        except (AutolabelError, RuntimeError, ValueError, MemoryError) as exc:
            log.warning("task %s: no %s: %s", safe(task_id), what, safe(exc))
            return _empty(spec)

    def _interact(
        self, task: dict, spec: ProjectSpec, interactions: list[Interaction]
    ) -> list[tuple[str, np.ndarray, float]]:
        """(label, mask, score) per label the interactions ask for.

        With typed text, its phrase is segmented (a one-class vocabulary) and labelled with the
        label it names (else the first); clicks and boxes then pick among its instances, and
        without them every instance is kept. Without text, each click or box picks among the
        instances of the label chosen on it, from the project's own vocabulary.
        """
        threshold = spec.target.score_threshold
        if not interactions:
            return []
        text = ", ".join(i.text for i in interactions if i.kind == "text")
        # (interaction, category id in `found`, label of its region) per click or box
        picks: list[tuple[Interaction, int, str]] = []
        if text:
            label, vocab = prompt_vocabulary(text, spec.target, self.labeler.vocabulary.background)
            found = _above(self._recent_instances(task, spec, vocab), threshold)
            picks = [(i, 1, label) for i in interactions if i.kind != "text"]
            if not picks:
                return _merged({label: list(found)}, found.size)
        else:
            found = _above(self._recent_instances(task, spec, None), threshold)
            for i in interactions:
                chosen = label_for(spec.target, i.label) if i.label else None
                if chosen is None and len(spec.target.labels) == 1:
                    chosen = next(iter(spec.target.labels))
                if chosen is None:
                    log.warning("task %s: %s label %r is not a project label", task.get("id"),
                                i.kind, i.label)  # fmt: skip
                    continue
                picks.append((i, found.names.index(chosen) + 1, chosen))
        height, width = found.size
        chosen_by_label: dict[str, list[Instance]] = {}
        removed: list[np.ndarray] = []
        for i, category, label in picks:
            if i.kind == "point":
                row, col = point_pixel(i.value, height, width)
                hit = [inst for inst in found if inst.mask[row, col]]
                if not i.positive:  # a negative click removes what it hits, of any label
                    removed.extend(inst.mask for inst in hit)
                    continue
                hit = [inst for inst in hit if inst.category_id == category]
                chosen_by_label.setdefault(label, []).extend(hit)
            elif i.kind == "box" and i.positive:  # LS has no negative boxes; ignore one
                box = rectangle_mask(i.value, height, width)
                picked = _box_instances(found, category, box)
                chosen_by_label.setdefault(label, []).extend(_clipped(x, box) for x in picked)
        return _merged(chosen_by_label, found.size, removed)

    def _recent_instances(
        self, task: dict, spec: ProjectSpec, vocab: Vocabulary | None
    ) -> Instances:
        """The task image's instances for a vocabulary (the project's when None), remembered
        for the next interactive requests on the same image."""
        labeler = spec.labeler if vocab is None else spec.labeler.with_vocabulary(vocab)
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        key = (
            labeler.vocabulary.fingerprint(),
            spec.model_version,
            str(data.get(spec.target.value_key)),
        )
        with self._recent_lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                return self._recent[key]
        instances = self._instances(task, spec, labeler)
        with self._recent_lock:
            self._recent[key] = instances
            while len(self._recent) > INTERACTIVE_CACHE_SIZE:
                self._recent.popitem(last=False)
        return instances

    def _instances(
        self, task: dict, spec: ProjectSpec, labeler: Labeler | None = None
    ) -> Instances:
        """The task image's instances, named with the project's labels (or those of another
        vocabulary's labeler); AutolabelError if not."""
        labeler = spec.labeler if labeler is None else labeler
        data = task.get("data")
        if not isinstance(data, dict):
            raise MediaError("the task has no data")
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        with tempfile.TemporaryDirectory(prefix="autolabel-task-") as workdir:
            path = self.media.fetch(data.get(spec.target.value_key), task_id, Path(workdir))
            loaded = load_image(ImageEntry(0, path, f"image of task {task_id}"))
        if isinstance(loaded, LoadError):
            raise loaded
        # The same path as `autolabel run`: working size, segment, instances at full size.
        with self._model_lock:
            outcome = labeler.label_loaded([loaded])[loaded.entry.rel]
        if isinstance(outcome, ImageError):
            raise outcome
        return outcome

    def describe(self) -> dict[str, Any]:
        """Method, recipe, settings and models, for /metrics and the logs."""
        return self.labeler.describe()


def _empty(spec: ProjectSpec) -> dict:
    return {"model_version": spec.model_version, "score": 0.0, "result": []}


def _above(instances: Instances, threshold: float) -> Instances:
    """The instances scoring at least the threshold (all of them at 0)."""
    if threshold <= 0.0:
        return instances
    kept = [inst for inst in instances if inst.score >= threshold]
    return replace(instances, items=kept)


def _box_instances(found: Instances, category: int, box: np.ndarray) -> list[Instance]:
    """The instances of a class a box selects: the one it overlaps most, and every one with at
    least BOX_INSIDE_SHARE of its area inside it."""
    overlaps = [
        (int(np.count_nonzero(inst.mask & box)), inst)
        for inst in found
        if inst.category_id == category
    ]
    overlaps = [(n, inst) for n, inst in overlaps if n > 0]
    if not overlaps:
        return []
    most = max(overlaps, key=lambda pair: pair[0])[1]
    return [
        inst for n, inst in overlaps if inst is most or n >= BOX_INSIDE_SHARE * max(inst.area, 1)
    ]


def _clipped(inst: Instance, box: np.ndarray) -> Instance:
    return Instance.from_mask(inst.category_id, inst.mask & box, inst.score)


def _merged(
    by_label: dict[str, list[Instance]],
    size: tuple[int, int],
    removed: list[np.ndarray] | None = None,
) -> list[tuple[str, np.ndarray, float]]:
    """One (label, mask, score) per label: the union of its instances less the removed pixels;
    the score is the instances' area-weighted mean. Labels left empty are dropped."""
    out = []
    for label, picked in by_label.items():
        instances = list({id(inst): inst for inst in picked}.values())  # a click twice: once
        mask = np.zeros(size, dtype=bool)
        weighted = 0.0
        for inst in instances:
            mask |= inst.mask
            weighted += inst.score * inst.area
        for gone in removed or ():
            mask &= ~gone
        area = sum(inst.area for inst in instances)
        if mask.any() and area:
            out.append((label, mask, weighted / area))
    return out
