"""FiftyOne: push a run as samples, segment samples in place, score reviewed labels against ours,
and a Labeler as a FiftyOne model (the remote zoo models autolabel-fast, -car and -pnp).

The FiftyOne plugin and zoo source (integrations/fiftyone) and `autolabel push fiftyone` call
these functions; nothing here talks to the App. Images become labels in one place,
`label_images`, for the segment operator and the zoo model alike. Every field the operators
write has a custom run with the same key recording the settings that produced it
(`dataset.get_run_info(key).config`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import fiftyone.core.models as fom
import numpy as np
from fiftyone.core.collections import SampleCollection
from PIL import Image

from autolabel import __version__
from autolabel.errors import ImageError, UsageError
from autolabel.instances import Instances, class_ious
from autolabel.io.images import ImageEntry, LoadedImage, LoadError, decode_pil, load_image
from autolabel.io.resize import resize_labels
from autolabel.io.run_folder import read_run
from autolabel.provenance import package_versions

if TYPE_CHECKING:
    from autolabel.api import Labeler

INSTANCES_SUFFIX = "_instances"
SEMANTIC_SUFFIX = "_semantic"
CLASSES_SUFFIX = "_classes"
# <prefix>_priority: the image's review priority in [0, 1] (autolabel.review); sort by it.
PRIORITY_SUFFIX = "_priority"
WRITE_CHUNK = 256  # samples per database write when pushing
MISTAKE_IOU = 0.5  # classes whose two masks overlap less than this are listed for review
LABEL_TYPES = (fo.Detections, fo.Polylines, fo.Segmentation)
# The remote zoo models (integrations/fiftyone/manifest.json) and the method each one runs.
ZOO_MODELS = {"autolabel-fast": "fast", "autolabel-car": "car", "autolabel-pnp": "pnp"}
# What a LabelerModel returns per image: Detections, Segmentation, or both as
# {"instances": ..., "semantic": ...} (apply_model's label_field is then their prefix).
OUTPUTS = ("detections", "segmentation", "both")

logger = logging.getLogger(__name__)


def field_names(field_prefix: str) -> tuple[str, str]:
    """The instances and semantic field names for a prefix (the prefix is also the run key)."""
    if not field_prefix.isidentifier() or field_prefix.startswith("_"):
        raise UsageError(
            f"field {field_prefix!r}: use letters, digits and underscores, "
            "not starting with a digit or an underscore"
        )
    return field_prefix + INSTANCES_SUFFIX, field_prefix + SEMANTIC_SUFFIX


def to_detections(instances: Instances) -> fo.Detections:
    """Instances as FiftyOne detections: relative boxes, masks cropped to the box, confidence.

    The crop and box follow FiftyOne's own COCO importer, so a pushed run and an imported
    annotations.json hold identical masks.
    """
    height, width = instances.size
    detections = []
    for inst in instances:
        x, y, w, h = (round(v) for v in inst.bbox)
        detections.append(
            fo.Detection(
                label=instances.names[inst.category_id - 1],
                bounding_box=[x / width, y / height, w / width, h / height],
                mask=inst.mask[y : y + h, x : x + w],
                confidence=inst.score,
            )
        )
    return fo.Detections(detections=detections, **_priority(instances))


def detection_mask(detection: fo.Detection, size: tuple[int, int]) -> np.ndarray:
    """A detection's mask in the full H x W image; the inverse of to_detections.

    FiftyOne's own renderer truncates box corners (int(x * width)), which can move a mask by a
    pixel; rounding restores our boxes exactly. Masks of another size are resized to the box.
    """
    height, width = size
    bx, by, bw, bh = detection.bounding_box
    x, y = max(round(bx * width), 0), max(round(by * height), 0)
    box = (max(round(bh * height), 1), max(round(bw * width), 1))
    crop = np.asarray(detection.get_mask(), dtype=bool)
    if crop.shape != box:
        crop = resize_labels(crop, box)
    full = np.zeros(size, dtype=bool)
    region = full[y : y + box[0], x : x + box[1]]
    region[...] = crop[: region.shape[0], : region.shape[1]]
    return full


def to_segmentation(instances: Instances) -> fo.Segmentation:
    """The semantic label map of the instances (the run's masks/*.png), stored in the database."""
    return fo.Segmentation(mask=instances.label_map, **_priority(instances))


def _priority(instances: Instances) -> dict[str, float]:
    """The review priority as a label attribute, so that apply_model's field carries it too
    (`view.sort_by("<field>.priority", reverse=True)`); nothing when it was not computed."""
    return {} if instances.priority is None else {"priority": instances.priority}


# --- images to labels: the one path of the segment operator and the zoo model ----------------

ImageSource = str | os.PathLike | np.ndarray


@dataclass
class ImageLabels:
    """One image's result, and its FiftyOne labels (converted on first use)."""

    instances: Instances

    @cached_property
    def detections(self) -> fo.Detections:
        """What <prefix>_instances holds: one detection with a mask per instance."""
        return to_detections(self.instances)

    @cached_property
    def segmentation(self) -> fo.Segmentation:
        """What <prefix>_semantic holds: the label map, as masks/*.png of `autolabel run`."""
        return to_segmentation(self.instances)


def label_images(labeler: Labeler, images: Sequence[ImageSource]) -> list[ImageLabels | ImageError]:
    """Label one batch with the Labeler; results in input order, a failed image as ImageError.

    Images are file paths (samples' `filepath`), decoded as `autolabel run` decodes them (EXIF
    orientation, first frame, colour mode), so the masks equal the run's; or decoded RGB arrays
    (what FiftyOne passes a model without samples). The segment operator and the zoo model both
    label through here.
    """
    loaded = [_decode(index, image) for index, image in enumerate(images)]
    good = [item for item in loaded if isinstance(item, LoadedImage)]
    results = labeler.label_loaded(good) if good else {}
    labelled: list[ImageLabels | ImageError] = []
    for item in loaded:
        outcome = item if isinstance(item, ImageError) else results[item.entry.rel]
        if isinstance(outcome, ImageError):
            labelled.append(outcome)
            continue
        note = labeler.domain_note(item.size)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        labelled.append(ImageLabels(outcome))
    return labelled


def _decode(index: int, image: ImageSource) -> LoadedImage | LoadError:
    """A batch item decoded upright; its entry's rel is its position (a file may come twice)."""
    if isinstance(image, str | os.PathLike):
        return load_image(ImageEntry(index, Path(image), str(index)))
    entry = ImageEntry(index, Path("<array>"), str(index))
    try:
        return decode_pil(entry, Image.fromarray(np.asarray(image)))
    except (TypeError, ValueError) as exc:
        return LoadError(entry, f"not an image array ({exc})")


def record_run(
    dataset: fo.Dataset, run_key: str, config: dict[str, Any], results: dict[str, Any]
) -> None:
    """Store provenance as a FiftyOne custom run, replacing an earlier run with the same key."""
    dataset.register_run(run_key, dataset.init_run(**config), overwrite=True)
    dataset.save_run_results(run_key, dataset.init_run_results(run_key, **results), overwrite=True)


def _declare_fields(dataset: fo.Dataset, field_prefix: str, names: list[str]) -> None:
    """Class lists and mask targets, so the App shows names instead of pixel values."""
    instances_field, semantic_field = field_names(field_prefix)
    dataset.classes = {**dataset.classes, instances_field: list(names)}
    dataset.mask_targets = {
        **dataset.mask_targets,
        semantic_field: {i + 1: name for i, name in enumerate(names)},
    }
    dataset.save()


def _set_priorities(
    dataset: fo.Dataset, priority_field: str, values: dict[str, float | None], key_field: str
) -> None:
    """Write review priorities (a float field); nothing when none is known (an older run)."""
    if any(v is not None for v in values.values()):
        dataset.set_values(priority_field, values, key_field=key_field)


def _root(collection: SampleCollection) -> fo.Dataset:
    """The dataset a view belongs to (where fields and runs are written)."""
    if isinstance(collection, fo.Dataset):
        return collection
    return fo.load_dataset(collection.dataset_name)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_dataset(name: str, persistent: bool = False) -> fo.Dataset:
    """Load the named dataset or create it; persistent=True also makes an existing one persist."""
    if not name.strip():
        raise UsageError("--dataset: the dataset name is empty")
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name)
    if persistent and not dataset.persistent:
        dataset.persistent = True
    return dataset


# --- push -----------------------------------------------------------------------------------


@dataclass
class PushSummary:
    """What a push did."""

    dataset: str
    added: int
    updated: int
    instances: int
    fields: tuple[str, str]
    missing: list[str] = field(default_factory=list)  # images no longer on disk, not pushed


def push_run(
    out: Path, dataset_name: str, field_prefix: str = "autolabel", persistent: bool = False
) -> PushSummary:
    """Add a run's images as samples (absolute paths) and set its instance and semantic fields.

    Samples are matched by file path, so pushing again updates the fields and adds no samples.
    """
    instances_field, semantic_field = field_names(field_prefix)
    run = read_run(out)
    root = run.images_root
    if not root.is_absolute() or not root.is_dir():
        raise UsageError(
            f"{out / 'run.json'}: images folder {str(root)!r} does not exist any more; "
            "the samples must point at the images"
        )
    dataset = open_dataset(dataset_name, persistent)
    present = []
    missing = []
    for image in run.images:
        path = os.path.normpath(root / image.file_name)
        if os.path.isfile(path):
            present.append((path, image))
        else:
            missing.append(image.file_name)
    known = set(dataset.values("filepath"))
    new = [
        fo.Sample(filepath=path, metadata=fo.ImageMetadata(width=image.width, height=image.height))
        for path, image in present
        if path not in known
    ]
    if new:
        dataset.add_samples(new)
    _declare_fields(dataset, field_prefix, run.vocabulary.names)
    instance_count = 0
    priority_field = field_prefix + PRIORITY_SUFFIX
    for start in range(0, len(present), WRITE_CHUNK):
        detections, semantic, priorities = {}, {}, {}
        for path, image in present[start : start + WRITE_CHUNK]:
            instances = image.instances
            instance_count += len(instances)
            detections[path] = to_detections(instances)
            semantic[path] = to_segmentation(instances)
            priorities[path] = image.priority
        dataset.set_values(instances_field, detections, key_field="filepath")
        dataset.set_values(semantic_field, semantic, key_field="filepath")
        _set_priorities(dataset, priority_field, priorities, "filepath")
    provenance = {
        key: run.info.get(key)
        for key in ("method", "recipe", "settings", "models", "vocabulary", "versions", "config")
    }
    record_run(
        dataset,
        field_prefix,
        {
            **provenance,
            "source": "autolabel push",
            "run_folder": os.fspath(out.resolve()),
            "images_root": os.fspath(root),
            "run_started": run.info.get("started"),
            "fields": [instances_field, semantic_field],
        },
        {"images": len(present), "instances": instance_count, "pushed": _now()},
    )
    return PushSummary(
        dataset.name,
        len(new),
        len(present) - len(new),
        instance_count,
        (instances_field, semantic_field),
        missing,
    )


# --- segment samples in place ---------------------------------------------------------------


@dataclass
class SegmentProgress:
    """Where a segment_samples call stands; failed holds (file path, reason)."""

    done: int
    total: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def segment_samples(
    collection: SampleCollection,
    labeler: Labeler,
    field_prefix: str = "autolabel",
    *,
    overwrite: bool = False,
    batch_size: int = 1,
) -> Iterator[SegmentProgress]:
    """Segment the collection's images with a Labeler into <prefix>_instances and _semantic.

    The Labeler brings the method, models, vocabulary and sizes. Yields progress after each
    batch, whose results are already saved, so stopping loses nothing. Samples that have the
    instances field are skipped unless overwrite; a failed image keeps no field, so a rerun
    retries it.
    """
    instances_field, semantic_field = field_names(field_prefix)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    vocab = labeler.vocabulary
    target = collection if overwrite else collection.exists(instances_field, False)
    ids, paths = target.values(["id", "filepath"])
    progress = SegmentProgress(0, len(ids))
    dataset = _root(collection)
    _declare_fields(dataset, field_prefix, vocab.names)
    for start in range(0, len(ids), batch_size):
        batch = list(
            zip(ids[start : start + batch_size], paths[start : start + batch_size], strict=True)
        )
        outcomes = label_images(labeler, [path for _, path in batch])
        detections, semantic, priorities = {}, {}, {}
        for (sample_id, path), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, ImageError):
                progress.failed.append((path, outcome.reason))
                continue
            detections[sample_id] = outcome.detections
            semantic[sample_id] = outcome.segmentation
            priorities[sample_id] = outcome.instances.priority
        if detections:
            dataset.set_values(instances_field, detections, key_field="id")
            dataset.set_values(semantic_field, semantic, key_field="id")
            _set_priorities(dataset, field_prefix + PRIORITY_SUFFIX, priorities, "id")
        progress.done += len(batch)
        yield progress
    described = labeler.describe()
    record_run(
        dataset,
        field_prefix,
        {
            "method": described["method"],
            "recipe": described["recipe"],
            "settings": described["settings"],
            "models": described["models"],
            "vocabulary": vocab.to_dict(),
            "versions": package_versions(),
            "source": "autolabel segment operator",
            "max_side": labeler.max_side,
            "min_area": labeler.min_area,
            "fields": [instances_field, semantic_field],
        },
        {
            "images": progress.done - len(progress.failed),
            "failed": [list(item) for item in progress.failed],
            "finished": _now(),
            "autolabel_version": __version__,
        },
    )


# --- a Labeler as a FiftyOne model: apply_model and the remote zoo models --------------------


@dataclass(frozen=True)
class LabelerModelConfig:
    """What a LabelerModel runs (FiftyOne reads `model.config`)."""

    method: str
    recipe: str | None
    settings: dict[str, Any]
    classes: list[str]
    output: str


class LabelerModel(fom.SamplesMixin, fom.Model):
    """A Labeler as a FiftyOne image model: `collection.apply_model(model, label_field=...)`.

    Batched (`apply_model(..., batch_size=N)` labels N images per `predict_all`). With samples,
    the images are read from their file paths, as `autolabel run` reads them, so the masks equal
    the run's; without (`model.predict(array)`), from the arrays. Each image gives `output`:
    "detections" (fo.Detections with instance masks and confidence), "segmentation" (the label
    map; set `dataset.mask_targets[field] = model.mask_targets`) or "both"
    ({"instances": ..., "semantic": ...}, stored as <label_field>_instances and _semantic, the
    fields of the segment operator). An image that cannot be labelled gets no label and a
    logged warning. The weights load when apply_model starts (`with model:`), or on first use.
    """

    def __init__(self, labeler: Labeler, output: str = "detections") -> None:
        fom.SamplesMixin.__init__(self)
        if output not in OUTPUTS:
            raise UsageError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")
        self.labeler = labeler
        self.output = output
        self._preprocess = True

    @property
    def config(self) -> LabelerModelConfig:
        return LabelerModelConfig(
            self.labeler.method,
            self.labeler.recipe,
            self.labeler.settings,
            self.classes,
            self.output,
        )

    @property
    def classes(self) -> list[str]:
        """The vocabulary's class names, in category id order."""
        return list(self.labeler.vocabulary.names)

    @property
    def mask_targets(self) -> dict[int, str]:
        """Pixel value -> class name of the "segmentation" output (0 is background)."""
        return {i + 1: name for i, name in enumerate(self.classes)}

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False  # images of any sizes batch together: predict_all takes them as they are

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def __enter__(self) -> LabelerModel:
        self.labeler.load()  # a bad model fails here, once, not in every batch
        return self

    def predict(self, arg: Any, sample: Any = None) -> Any:
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args: Any, samples: Any = None) -> list[Any]:
        images = list(args)
        samples = [None] * len(images) if samples is None else list(samples)
        sources = [
            _image_source(image, sample) for image, sample in zip(images, samples, strict=True)
        ]
        predictions = []
        for source, outcome in zip(sources, label_images(self.labeler, sources), strict=True):
            if isinstance(outcome, ImageError):
                where = source if isinstance(source, str | os.PathLike) else "image array"
                logger.warning("autolabel: %s: %s", where, outcome.reason)
                predictions.append(None)
            elif self.output == "detections":
                predictions.append(outcome.detections)
            elif self.output == "segmentation":
                predictions.append(outcome.segmentation)
            else:
                predictions.append(
                    {"instances": outcome.detections, "semantic": outcome.segmentation}
                )
        return predictions


def _image_source(image: Any, sample: Any) -> ImageSource:
    """The sample's local file when there is one (decoded as a run decodes it), else the array
    FiftyOne read (media in the cloud, or no sample)."""
    path = getattr(sample, "filepath", None)
    if path and os.path.isfile(path):
        return path
    return image


def zoo_model(
    model_name: str,
    classes: Any = None,
    *,
    output: str = "detections",
    **options: Any,
) -> LabelerModel:
    """The zoo model `model_name` (a ZOO_MODELS key): a LabelerModel running that method.

    `classes` is what Labeler takes as its vocabulary (class lines such as "dog: puppy", or a
    vocabulary file's path); `options` are Labeler's (recipe, model, settings, device, ...).
    Everything is checked now; the weights load on first use.
    """
    if model_name not in ZOO_MODELS:
        raise UsageError(
            f"unknown autolabel zoo model {model_name!r}; choose one of {', '.join(ZOO_MODELS)}"
        )
    method = ZOO_MODELS[model_name]
    if classes is None:
        raise UsageError(
            f"{model_name}: give the classes to segment, "
            "e.g. load_zoo_model(..., classes=['cat', 'dog: puppy'])"
        )
    if options.get("method") not in (None, method):
        raise UsageError(
            f"{model_name} runs method {method!r}, not {options['method']!r}; "
            f"load autolabel-{options['method']} instead"
        )
    options["method"] = method
    options.setdefault("lazy", True)
    from autolabel.api import Labeler

    return LabelerModel(Labeler(classes, **options), output)


def mark_zoo_model_downloaded(model_name: str, model_path: str | os.PathLike) -> None:
    """Write the file that tells FiftyOne a zoo model is downloaded.

    autolabel's models need nothing ahead of time: the Labeler fetches (and caches) its
    weights on first use. The file says so, for whoever looks in the model zoo folder.
    """
    if model_name not in ZOO_MODELS:
        raise UsageError(f"unknown autolabel zoo model {model_name!r}")
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = {
        "model": model_name,
        "method": ZOO_MODELS[model_name],
        "autolabel": __version__,
        "weights": "downloaded and cached by autolabel on first use, not stored here",
    }
    path.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")


# --- disagreement between a reviewed field and autolabel's predictions ----------------------


def label_classes(collection: SampleCollection, label_field: str) -> list[str]:
    """Class names of a label field: its mask targets, else its distinct labels."""
    kind = _label_type(collection, label_field)
    if kind is fo.Segmentation:
        return sorted(set(_mask_targets(collection, label_field).values()))
    path = f"{label_field}.{'detections' if kind is fo.Detections else 'polylines'}.label"
    return sorted(name for name in collection.distinct(path) if name)


@dataclass
class ScoreSummary:
    """What score_disagreement wrote."""

    score_field: str
    scored: int
    skipped: int  # samples lacking one of the two fields
    top: list[tuple[str, float]]  # (file path, score) of the highest scores, best first


def score_disagreement(
    collection: SampleCollection,
    reviewed_field: str,
    predicted_field: str,
    score_field: str = "autolabel_disagreement",
) -> ScoreSummary:
    """Per sample, 1 - mean IoU over the classes in either field, and the disagreeing classes.

    Writes the score to `score_field` (0 = the masks agree, 1 = nothing overlaps) and the
    classes with IoU below MISTAKE_IOU, worst first, to `<score_field>_classes`. Fields may be
    Detections with masks, Polylines or Segmentation with mask targets; classes match by name.
    """
    for name in (score_field, score_field + CLASSES_SUFFIX):
        if not name.isidentifier():
            raise UsageError(f"score field {name!r}: use letters, digits and underscores")
    fields = (reviewed_field, predicted_field)
    kinds = {f: _label_type(collection, f) for f in fields}
    targets = {f: _mask_targets(collection, f) for f in fields if kinds[f] is fo.Segmentation}
    collection.compute_metadata()
    scores: dict[str, float] = {}
    classes: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    skipped = 0
    for sample in collection.select_fields(list(fields)).iter_samples():
        pairs = [(sample[f], targets.get(f)) for f in fields]
        if any(label is None for label, _ in pairs) or sample.metadata is None:
            skipped += 1
            continue
        names = sorted(set().union(*(_names(label, known) for label, known in pairs)))
        ids = {name: i + 1 for i, name in enumerate(names)}
        size = (sample.metadata.height, sample.metadata.width)
        maps = [_render(label, known, ids, size) for label, known in pairs]
        ious = class_ious(*maps)
        scores[sample.id] = 1.0 - float(np.mean(list(ious.values()))) if ious else 0.0
        worst = sorted((iou, names[cls - 1]) for cls, iou in ious.items() if iou < MISTAKE_IOU)
        classes[sample.id] = [name for _, name in worst]
        paths[sample.id] = sample.filepath
    dataset = _root(collection)
    if scores:
        dataset.set_values(score_field, scores, key_field="id")
        dataset.set_values(score_field + CLASSES_SUFFIX, classes, key_field="id")
    record_run(
        dataset,
        score_field,
        {
            "method": "autolabel-disagreement",
            "reviewed_field": reviewed_field,
            "predicted_field": predicted_field,
            "score": "1 - mean per-class mask IoU",
            "classes_below_iou": MISTAKE_IOU,
            "fields": [score_field, score_field + CLASSES_SUFFIX],
        },
        {"scored": len(scores), "skipped": skipped, "finished": _now()},
    )
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:10]
    return ScoreSummary(score_field, len(scores), skipped, [(paths[i], s) for i, s in top])


def _label_type(collection: SampleCollection, label_field: str) -> type:
    schema = collection.get_field_schema()
    if label_field not in schema:
        raise UsageError(f"dataset {_root(collection).name!r} has no field {label_field!r}")
    kind = getattr(schema[label_field], "document_type", None)
    if kind not in LABEL_TYPES:
        raise UsageError(
            f"field {label_field!r} holds {getattr(kind, '__name__', 'non-label values')}; "
            "compare Detections (with masks), Polylines or Segmentation fields"
        )
    return kind


def _mask_targets(collection: SampleCollection, label_field: str) -> dict[int, str]:
    targets = collection.mask_targets.get(label_field) or collection.default_mask_targets
    if not targets or not all(isinstance(k, int) for k in targets):
        raise UsageError(
            f"segmentation field {label_field!r} has no integer mask targets naming its classes; "
            f"set dataset.mask_targets[{label_field!r}] = {{1: 'cat', ...}}"
        )
    return {int(k): str(v) for k, v in targets.items()}


def _names(label: fo.Label, targets: dict[int, str] | None) -> set[str]:
    if isinstance(label, fo.Segmentation):
        return set(targets.values())
    items = label.detections if isinstance(label, fo.Detections) else label.polylines
    return {item.label for item in items if item.label}


def _render(
    label: fo.Label, targets: dict[int, str] | None, ids: dict[str, int], size: tuple[int, int]
) -> np.ndarray:
    """A label as an H x W map of the sample's class ids (later objects win on overlap)."""
    if isinstance(label, fo.Segmentation):
        mask = label.get_mask()
        if mask is None or mask.ndim != 2:
            raise UsageError("only single-channel segmentation masks can be compared")
        lut = np.zeros(max(int(mask.max()), *targets) + 1, dtype=np.int64)
        for value, name in targets.items():
            lut[value] = ids[name]
        return resize_labels(lut[mask], size)
    if isinstance(label, fo.Detections):
        labels = np.zeros(size, dtype=np.int64)
        for det in label.detections:
            if det.label and det.has_mask:
                labels[detection_mask(det, size)] = ids[det.label]
        return labels
    mask_targets = {i: name for name, i in ids.items()}
    rendered = label.to_segmentation(frame_size=(size[1], size[0]), mask_targets=mask_targets)
    return rendered.get_mask().astype(np.int64)
