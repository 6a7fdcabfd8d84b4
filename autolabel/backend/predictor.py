"""The model side of the ML backend: one segmenter per process, tasks in, predictions out."""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from autolabel.backend.media import MediaError, MediaResolver
from autolabel.config import resolve_method
from autolabel.errors import AutolabelError
from autolabel.images import ImageEntry, LoadError, load_image
from autolabel.instances import Instance
from autolabel.labelstudio.config import (
    LabelTarget,
    find_target,
    parse_interface,
    vocabulary_from_target,
)
from autolabel.labelstudio.provenance import model_version
from autolabel.labelstudio.regions import check_prediction, make_prediction
from autolabel.methods.base import Segmenter, build_segmenter
from autolabel.runner import label_loaded
from autolabel.vocab import DEFAULT_BACKGROUND, Vocabulary

log = logging.getLogger("autolabel.backend")


class ConfigError(AutolabelError):
    """A labeling config the backend cannot serve (the request, not the server, is at fault)."""


@dataclass(frozen=True)
class BackendOptions:
    """What to run: the same method/recipe/model options as `autolabel run`."""

    method: str | None = None
    recipe: str | None = None
    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    max_side: int = 1024
    min_area: int = 16


@dataclass(frozen=True)
class ProjectSpec:
    """A labeling config turned into what prediction needs; cached per config text."""

    interface: LabelInterface
    target: LabelTarget
    vocab: Vocabulary
    model_version: str


class Predictor:
    """Holds the loaded segmenter; thread-safe, one image in the model at a time."""

    def __init__(
        self, options: BackendOptions, media: MediaResolver, segmenter: Segmenter | None = None
    ) -> None:
        resolved = resolve_method(
            options.method,
            options.recipe,
            model=options.model,
            pretrained=options.pretrained,
            checkpoint=options.checkpoint,
        )
        self.options = options
        self.method = resolved.method
        self.settings = resolved.settings
        self.background = tuple(resolved.background or DEFAULT_BACKGROUND)
        self.media = media
        self.segmenter = segmenter or build_segmenter(self.method, self.settings, options.device)
        self.models = self.segmenter.describe()
        self._model_lock = threading.Lock()
        self._spec = functools.lru_cache(maxsize=32)(self._build_spec)

    def spec(self, label_config: str) -> ProjectSpec:
        """The parsed config (cached); ConfigError when it has no usable BrushLabels."""
        if not isinstance(label_config, str) or not label_config.strip():
            raise ConfigError("the request has no labeling config")
        return self._spec(label_config)

    def _build_spec(self, label_config: str) -> ProjectSpec:
        try:
            interface = parse_interface(label_config, "labeling config")
            target = find_target(interface, "labeling config")
            vocab = vocabulary_from_target(target, self.background)
        except AutolabelError as exc:
            raise ConfigError(str(exc)) from exc
        version = model_version(
            self.method,
            self.settings,
            self.models,
            vocab.fingerprint(),
            self.options.max_side,
            self.options.min_area,
        )
        return ProjectSpec(interface, target, vocab, version)

    def predict(self, tasks: list[dict], label_config: str) -> list[dict]:
        """One prediction per task, in order; a task that fails gets an empty result."""
        spec = self.spec(label_config)
        return [self._predict_task(task, spec) for task in tasks]

    def _predict_task(self, task: dict, spec: ProjectSpec) -> dict:
        task_id = task.get("id")
        try:
            instances = self._instances(task, spec)
            prediction = make_prediction(
                instances, spec.vocab.names, spec.target, spec.model_version
            )
            check_prediction(spec.interface, prediction, f"task {task_id}")
            return prediction
        except (MediaError, AutolabelError, RuntimeError, ValueError, MemoryError) as exc:
            log.warning("task %s: no prediction: %s", task_id, exc)
            return {"model_version": spec.model_version, "score": 0.0, "result": []}

    def _instances(self, task: dict, spec: ProjectSpec) -> list[Instance]:
        data = task.get("data")
        if not isinstance(data, dict):
            raise MediaError("the task has no data")
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        with tempfile.TemporaryDirectory(prefix="autolabel-task-") as workdir:
            path = self.media.fetch(data.get(spec.target.value_key), task_id, Path(workdir))
            loaded = load_image(ImageEntry(0, path, path.name))
        if isinstance(loaded, LoadError):
            raise MediaError(f"image of task {task_id}: {loaded.reason}")
        # The same path as `autolabel run`: working size, segment, instances at full size.
        with self._model_lock:
            outcome = label_loaded(
                self.segmenter, [loaded], spec.vocab, self.options.max_side, self.options.min_area
            )[loaded.entry.rel]
        if isinstance(outcome, str):
            raise MediaError(f"image of task {task_id}: {outcome}")
        return outcome.instances

    def describe(self) -> dict[str, Any]:
        """Method, settings and models, for /health and the logs."""
        return {"method": self.method, "settings": self.settings, "models": self.models}
