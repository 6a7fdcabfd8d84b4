"""The model side of the ML backend: one Labeler per process, tasks in, predictions out."""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from autolabel.api import Labeler
from autolabel.errors import AutolabelError, ImageError, MediaError, UsageError
from autolabel.instances import Instances
from autolabel.io.images import ImageEntry, LoadError, load_image
from autolabel.provenance import model_version
from autolabel.sinks.labelstudio.backend.media import MediaResolver
from autolabel.sinks.labelstudio.config import (
    LabelTarget,
    find_target,
    parse_interface,
    vocabulary_from_target,
)
from autolabel.sinks.labelstudio.regions import check_prediction, make_prediction
from autolabel.vocab import VocabClass, Vocabulary

log = logging.getLogger("autolabel.sinks.labelstudio.backend")

# The backend's classes come from each project's labeling config. Its Labeler is made with this
# stand-in, which carries only the background words (a recipe's, else the default list).
SERVE_VOCABULARY = Vocabulary((VocabClass("(the labels of each project's labeling config)"),))


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
        version = model_version(labeler.identity(), labeler.describe()["models"])
        return ProjectSpec(interface, target, labeler, version)

    def predict(self, tasks: list[dict], label_config: str) -> list[dict]:
        """One prediction per task, in order; a task that fails gets an empty result."""
        spec = self.spec(label_config)
        return [self._predict_task(task, spec) for task in tasks]

    def _predict_task(self, task: dict, spec: ProjectSpec) -> dict:
        task_id = task.get("id")
        try:
            instances = self._instances(task, spec)
            prediction = make_prediction(instances, spec.target, spec.model_version)
            check_prediction(spec.interface, prediction, f"task {task_id}")
            return prediction
        except (AutolabelError, RuntimeError, ValueError, MemoryError) as exc:
            log.warning("task %s: no prediction: %s", task_id, exc)
            return {"model_version": spec.model_version, "score": 0.0, "result": []}

    def _instances(self, task: dict, spec: ProjectSpec) -> Instances:
        """The task image's instances, named with the project's labels; AutolabelError if not."""
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
            outcome = spec.labeler.label_loaded([loaded])[loaded.entry.rel]
        if isinstance(outcome, ImageError):
            raise outcome
        return outcome

    def describe(self) -> dict[str, Any]:
        """Method, recipe, settings and models, for /metrics and the logs."""
        return self.labeler.describe()
