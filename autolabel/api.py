"""The Python API: a `Labeler` validates everything once, loads its method once, and labels images,
arrays or whole folders (`label_folder` is exactly `autolabel run`).

    from autolabel import Labeler
    labeler = Labeler(["cat", "dog: puppy"], model="toy")
    result = labeler.label("photo.jpg")          # Instances: label_map, items, to_coco()
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from autolabel.config import JobConfig, RunConfig, check_sizes, resolve_method
from autolabel.errors import ImageError, UsageError
from autolabel.instances import Instances
from autolabel.io.images import ImageEntry, LoadedImage, LoadError, decode_pil, load_image
from autolabel.methods.base import Segmenter, SegResult, build_segmenter, validate_settings
from autolabel.pipeline import Staged, label_loaded, run_model, to_instances
from autolabel.toyworld import TOY_NAME
from autolabel.vocab import Vocabulary, load_vocabulary, parse_vocabulary

if TYPE_CHECKING:
    from autolabel.refine.sam import SamRefiner
    from autolabel.runner import RunSummary

VocabularyLike = Vocabulary | str | os.PathLike | Sequence[str]
ImageLike = str | os.PathLike | Image.Image | np.ndarray
# Settings keys that name a CLIP backbone: the toy model in any of them gets the domain warning.
BACKBONE_KEYS = ("model", "classifier_model", "clip_model")
TOY_WARNING = (
    "the toy model only knows the toy world (coloured shapes on textures); on real photos its "
    "labels are meaningless: use a real backbone (the default) for real images"
)


class Labeler:
    """A method with its models, a vocabulary and the run's sizes, ready to label images.

    Every option is checked when the Labeler is made (method settings, vocabulary, device,
    model names), so a bad one fails before anything is loaded or written. Weights load then
    too, unless `lazy` (they load on first use, once).
    """

    def __init__(
        self,
        vocabulary: VocabularyLike,
        *,
        method: str | None = None,
        recipe: str | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        classifier_model: str | None = None,
        classifier_pretrained: str | None = None,
        classifier_checkpoint: str | os.PathLike | None = None,
        parity: bool = False,
        background: Sequence[str] | None = None,
        settings: dict[str, Any] | None = None,
        refine: str | None = None,
        sam_model: str | os.PathLike | None = None,
        precision: str | None = None,
        device: str = "auto",
        max_side: int = 1024,
        min_area: int = 16,
        lazy: bool = False,
    ) -> None:
        check_sizes(max_side, min_area)
        models = {
            "model": model,
            "pretrained": pretrained,
            "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
            "classifier_model": classifier_model,
            "classifier_pretrained": classifier_pretrained,
            "classifier_checkpoint": (
                None if classifier_checkpoint is None else os.fspath(classifier_checkpoint)
            ),
        }
        resolved = resolve_method(
            method,
            recipe,
            parity=parity,
            background=None if background is None else list(background),
            settings=settings,
            refine=refine,
            sam_model=None if sam_model is None else os.fspath(sam_model),
            precision=precision,
            **models,
        )
        self.method = resolved.method
        self.precision = resolved.precision  # as asked (auto...); precision_used: as resolved
        self.refine = resolved.refine
        self.sam = resolved.sam
        self.recipe = resolved.recipe
        self.settings = resolved.settings
        self.vocabulary = _vocabulary(vocabulary, resolved.background, resolved.background_user)
        self._validated = validate_settings(self.method, self.settings)
        # A vocabulary file's path, recorded in run.json by label_folder.
        self.vocabulary_file = (
            Path(vocabulary) if isinstance(vocabulary, str | os.PathLike) else None
        )
        from autolabel.models.clip import resolve_device
        from autolabel.models.precision import resolve_precision

        self.device = device
        # Resolved once, here: a device this machine lacks and a precision it cannot run are
        # refused before anything loads.
        self._torch_device = resolve_device(device)
        parity = bool(getattr(self._validated, "parity", False))
        self.precision_used = resolve_precision(self.precision, self._torch_device, parity)
        self.max_side = max_side
        self.min_area = min_area
        self._segmenter: Segmenter | None = None
        self._refiner: SamRefiner | None = None
        self._load_lock = threading.Lock()
        self._warned = False
        if not lazy:
            self.load()

    @classmethod
    def from_config(cls, config: JobConfig, *, lazy: bool = True) -> Labeler:
        """The Labeler of a CLI job config (run or tune options)."""
        return cls(
            config.vocab,
            method=config.method,
            recipe=config.recipe,
            model=config.model,
            pretrained=config.pretrained,
            checkpoint=config.checkpoint,
            classifier_model=config.classifier_model,
            classifier_pretrained=config.classifier_pretrained,
            classifier_checkpoint=config.classifier_checkpoint,
            parity=config.parity,
            background=config.background,
            refine=config.refine,
            sam_model=config.sam_model,
            precision=config.precision,
            device=config.device,
            max_side=config.max_side,
            min_area=getattr(config, "min_area", 16),
            lazy=lazy,
        )

    def with_vocabulary(self, vocabulary: VocabularyLike) -> Labeler:
        """The same method and loaded models with another vocabulary (e.g. one per project)."""
        other = object.__new__(Labeler)
        other.__dict__.update(self.__dict__)
        other.vocabulary = _vocabulary(vocabulary, None, False)
        other.vocabulary_file = (
            Path(vocabulary) if isinstance(vocabulary, str | os.PathLike) else None
        )
        other._warned = False
        return other

    def load(self) -> Segmenter:
        """Load the method's models and SAM, if the run has a SAM stage (once; later calls return
        the same segmenter)."""
        with self._load_lock:
            if self._segmenter is None:
                self._segmenter = build_segmenter(self.method, self._validated, self.device)
            if self.sam is not None and self._refiner is None:
                from autolabel.refine.sam import SamRefiner

                self._refiner = SamRefiner.load(self.sam, self.device)
            return self._segmenter

    @property
    def device_type(self) -> str:
        """ "cpu", "cuda", "mps"...: the kind of device the models run on."""
        return self._torch_device.type

    @property
    def loaded(self) -> bool:
        """Whether the models are in memory."""
        return self._segmenter is not None

    def describe(self) -> dict[str, Any]:
        """Method, recipe, settings and (once loaded) model provenance, JSON-ready."""
        models = self._segmenter.describe() if self._segmenter is not None else {}
        if self._refiner is not None:
            models = {**models, **self._refiner.sam.describe()}
        return {
            "method": self.method,
            "recipe": self.recipe,
            "settings": self.settings,
            **self._refine_record(),
            "precision": self.precision_used,
            "models": models,
        }

    def _refine_record(self) -> dict[str, Any]:
        """--refine and SAM's settings as run.json records them (nothing without --refine)."""
        if self.refine.refine is None:
            return {}
        sam = None if self.sam is None else self.sam.model_dump()
        return {"refine": self.refine.refine, "sam": sam}

    def identity(self) -> dict[str, Any]:
        """What must match for a run folder to be resumed with this Labeler."""
        return {
            "vocabulary": self.vocabulary.fingerprint(),
            "method": self.method,
            "recipe": self.recipe,
            "settings": self.settings,
            **self._refine_record(),
            "max_side": self.max_side,
            "min_area": self.min_area,
        }

    def label(self, image: ImageLike) -> Instances:
        """Label one image: a file path, a Pillow image, or an H x W x 3 uint8 RGB array.

        Raises ImageError when the image cannot be decoded or segmented.
        """
        loaded = _load(image)
        outcome = self.label_loaded([loaded])[loaded.entry.rel]
        if isinstance(outcome, ImageError):
            raise outcome
        note = self.domain_note(loaded.size)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        return outcome

    def label_loaded(self, images: list[LoadedImage]) -> dict[str, Instances | ImageError]:
        """Label decoded images as one batch; results keyed by entry.rel, failures as values."""
        segmenter = self.load()
        with self._autocast():
            return label_loaded(
                segmenter, images, self.vocabulary, self.max_side, self.min_area, self._refiner
            )

    def run_model(self, images: list[LoadedImage]) -> dict[str, Staged | ImageError]:
        """label_loaded's model part alone (the local engine overlaps the rest with it)."""
        segmenter = self.load()
        with self._autocast():
            return run_model(segmenter, images, self.vocabulary, self.max_side)

    def to_instances(
        self, staged: Staged, result: SegResult | ImageError
    ) -> Instances | ImageError:
        """label_loaded's last part: SAM (if the run has it) and the instances of one image."""
        with self._autocast():
            return to_instances(staged, result, self.vocabulary, self.min_area, self._refiner)

    def _autocast(self) -> AbstractContextManager:
        """The run's precision around the method and SAM (autocast is per thread, so each thread
        that runs either enters it); the methods keep their fragile parts in fp32."""
        from autolabel.models.precision import autocast

        return autocast(self._torch_device, self.precision_used)

    def label_folder(
        self,
        images: str | os.PathLike,
        out: str | os.PathLike,
        *,
        previews: bool = False,
        resume: bool = True,
        overwrite: bool = False,
        batch_size: int = 1,
        cpu_workers: int | None = 0,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> RunSummary:
        """Label a folder into `out` exactly as `autolabel run` does; returns the run summary.

        `cpu_workers`: processes running the CRFs beside the model, as `autolabel run
        --cpu-workers` (None: its default, one per spare core). 0 by default here, as torch's
        DataLoader has no workers by default: spawned workers re-run the calling script, which
        then needs the `if __name__ == "__main__":` guard. The outputs are the same either way.
        """
        from autolabel.io.storage import location
        from autolabel.runner import run_job

        config = RunConfig(
            images=location(images),
            vocab=self.vocabulary_file,
            out=location(out),
            method=self.method,
            recipe=self.recipe,
            device=self.device,
            batch_size=batch_size,
            cpu_workers=cpu_workers,
            max_side=self.max_side,
            refine=self.refine.refine,
            sam_model=None if self.sam is None else self.sam.model,
            precision=self.precision,
            min_area=self.min_area,
            previews=previews,
            resume=resume,
            overwrite=overwrite,
        )
        return run_job(config, labeler=self, progress=progress)

    def precision_note(self) -> str:
        """A warning when the run's precision is emulated on this device ("" otherwise)."""
        from autolabel.models.precision import slow_precision_note

        return slow_precision_note(self.precision_used, self._torch_device)

    def domain_note(self, size: tuple[int, int]) -> str:
        """A warning, the first time only, when the toy model is asked about a real photo."""
        uses_toy = any(self.settings.get(key) == TOY_NAME for key in BACKBONE_KEYS)
        # Toy scenes are squares; photos almost never are.
        if self._warned or not uses_toy or size[0] == size[1]:
            return ""
        self._warned = True
        return TOY_WARNING


def _vocabulary(
    vocabulary: VocabularyLike, background: list[str] | None, background_user: bool
) -> Vocabulary:
    """A Vocabulary from a file path, lines of the vocabulary format, or a Vocabulary."""
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
    elif isinstance(vocabulary, str | os.PathLike):
        return load_vocabulary(Path(vocabulary), background, user=background_user)
    elif isinstance(vocabulary, Sequence) and all(isinstance(v, str) for v in vocabulary):
        vocab = parse_vocabulary("\n".join(vocabulary), "vocabulary")
    else:
        raise UsageError(
            "vocabulary: give a file path, a list of class lines ('dog: puppy, pup') or a "
            f"Vocabulary, not {type(vocabulary).__name__}"
        )
    if background is not None:
        vocab = vocab.with_background(tuple(background), user=background_user)
    return vocab


def _load(image: ImageLike) -> LoadedImage:
    """A decoded image from a path, a Pillow image or an RGB array; LoadError when unusable."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        loaded = load_image(ImageEntry(0, path, path.name))
    elif isinstance(image, Image.Image):
        loaded = decode_pil(ImageEntry(0, Path("<image>"), "<image>"), image)
    elif isinstance(image, np.ndarray):
        loaded = LoadedImage(ImageEntry(0, Path("<array>"), "<array>"), _rgb_array(image))
    else:
        raise UsageError(
            f"image: give a file path, a PIL image or an HxWx3 uint8 array, "
            f"not {type(image).__name__}"
        )
    if isinstance(loaded, LoadError):
        raise loaded
    return loaded


def _rgb_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise UsageError(
            f"image array: expected H x W x 3 uint8 RGB, got shape {array.shape} {array.dtype}"
        )
    return np.ascontiguousarray(array)
