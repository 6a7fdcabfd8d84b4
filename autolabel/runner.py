"""The job loop: images -> segmenter -> instances -> writers, with progress, resume and errors."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from autolabel import __version__
from autolabel.config import RunConfig
from autolabel.errors import AutolabelError, UsageError
from autolabel.images import ImageEntry, LoadedImage, LoadError, load_image, scan_images
from autolabel.instances import Instance, instances_from_labels, semantic_from_instances
from autolabel.methods.base import Segmenter, SegResult, build_segmenter
from autolabel.resize import fit_max_side
from autolabel.store import OUTPUT_NAMES, RunStore
from autolabel.vocab import Vocabulary, load_vocabulary
from autolabel.writers.atomic import atomic_open, atomic_write_json
from autolabel.writers.coco import write_coco
from autolabel.writers.png import write_label_png, write_preview

VERSIONED_PACKAGES = ("torch", "open_clip_torch", "numpy", "pillow", "pycocotools", "transformers")
# Images longer than this ratio are padded before segmentation: methods scale the short side to
# a fixed size, so a 1000:1 strip would otherwise cost (and allocate) like 1000 square images.
MAX_ASPECT = 8
# CLIP's mean colour: padding that normalises to about zero, i.e. no signal for the model.
PAD_COLOUR = (123, 117, 104)
# Write errors that will hit every following image too: stop (resumable) instead of failing all.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass
class RunSummary:
    """What a run did, for the CLI's final report and exit code."""

    out: Path
    found: int = 0  # image files found under the input folder
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # labelled, with a caveat
    resumed: int = 0
    per_class: Counter = field(default_factory=Counter)
    images_written: int = 0
    annotations_written: int = 0
    seconds: float = 0.0


def prepare_output(out: Path) -> None:
    """Create the output folder and prove it is writable, before any model is loaded."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out}: a file of that name exists")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"output folder {out}: not writable ({exc.strerror or exc})") from exc


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the outputs, for run.json."""
    versions = {"autolabel": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_job(
    config: RunConfig, segmenter: Segmenter | None = None, progress: Any = None
) -> RunSummary:
    """Run a labelling job end to end; every usage problem is raised before a model loads.

    `segmenter` lets a caller that already holds a loaded method (a server, a plugin) reuse it;
    `progress` is an optional callback(advance: int, total: int, done: int).
    """
    started = time.perf_counter()
    if not config.images.is_dir():
        raise UsageError(f"{config.images}: not a folder of images")
    resolved = config.resolve()
    vocab = load_vocabulary(config.vocab, resolved.background)
    prepare_output(config.out)
    # The output folder (or, when it is the input folder itself, what a run writes there).
    exclude = [config.out, *(config.out / name for name in OUTPUT_NAMES)]
    entries, skipped = scan_images(config.images, exclude=exclude)
    identity = {
        "vocabulary": vocab.fingerprint(),
        "method": resolved.method,
        "recipe": resolved.recipe,
        "settings": resolved.settings,
        "max_side": config.max_side,
        "min_area": config.min_area,
    }
    store = RunStore(config.out)
    finished = store.open(identity, resume=config.resume, overwrite=config.overwrite)
    try:
        summary = RunSummary(config.out, found=len(entries), skipped=skipped)
        todo = [e for e in entries if not _is_finished(e, finished.get(e.rel), config)]
        del finished
        summary.resumed = len(entries) - len(todo)
        if todo and segmenter is None:
            segmenter = build_segmenter(resolved.method, resolved.settings, config.device)
        models = segmenter.describe() if segmenter is not None else _previous_models(config.out)
        run_info = {
            "autolabel_version": __version__,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_root": os.fspath(config.images.resolve()),
            "config": config.to_dict(),
            "method": resolved.method,
            "recipe": resolved.recipe,
            "settings": resolved.settings,
            "vocabulary": vocab.to_dict(),
            "models": models,
            "versions": package_versions(),
        }
        atomic_write_json(config.out / "run.json", run_info)
        for record in _process(todo, segmenter, vocab, config):
            store.append(record)
            if progress is not None:
                progress(1, len(entries), summary.resumed)
        _finish(store, entries, vocab, summary, run_info)
    except OSError as exc:
        if exc.errno in FATAL_WRITE_ERRNOS:
            raise AutolabelError(
                f"cannot write to {config.out} ({exc.strerror}); finished images are saved: "
                "free space and rerun the same command to resume"
            ) from exc
        raise
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _stamp(path: Path) -> list[int]:
    """Size and modification time: a file replaced under the same name is labelled again."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _mask_name(entry: ImageEntry) -> str:
    return f"masks/{entry.key}.png"


def _preview_name(mask: str) -> str:
    return f"previews/{mask[len('masks/') : -len('.png')]}.jpg"


def _is_finished(entry: ImageEntry, record: dict[str, Any] | None, config: RunConfig) -> bool:
    """An ok record of this very file whose outputs are where this run would put them."""
    mask = _mask_name(entry)
    if record is None or record.get("mask") != mask or not (config.out / mask).is_file():
        return False
    if config.previews and not (config.out / _preview_name(mask)).is_file():
        return False
    try:
        return record.get("stamp") == _stamp(entry.path)
    except OSError:
        return False


def _previous_models(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8")).get("models", {})
    except (OSError, ValueError):
        return {}


def _process(
    todo: list[ImageEntry], segmenter: Segmenter | None, vocab: Vocabulary, config: RunConfig
) -> Iterator[dict[str, Any]]:
    """Yield one finished record per entry, in order, decoding one batch at a time."""
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        t0 = time.perf_counter()
        stamps = {}
        for entry in batch:
            try:
                stamps[entry.rel] = _stamp(entry.path)
            except OSError:
                stamps[entry.rel] = None  # load_image reports why
        loaded = [load_image(e) for e in batch]
        good = [im for im in loaded if isinstance(im, LoadedImage)]
        results = (
            label_loaded(segmenter, good, vocab, config.max_side, config.min_area) if good else {}
        )
        per_image = (time.perf_counter() - t0) / max(len(batch), 1)
        for item in loaded:
            stamp = stamps[item.entry.rel]
            if isinstance(item, LoadError):
                yield _failed(item.entry, item.reason, per_image, stamp, config.out)
                continue
            outcome = results[item.entry.rel]
            if isinstance(outcome, str):
                yield _failed(item.entry, outcome, per_image, stamp, config.out, item.size)
                continue
            try:
                yield _write_image(item, outcome, vocab, config, per_image, stamp)
            except OSError as exc:
                if exc.errno in FATAL_WRITE_ERRNOS:
                    raise
                reason = f"could not write outputs: {exc}"
                yield _failed(item.entry, reason, per_image, stamp, config.out, item.size)
            except Exception as exc:  # one image's post-processing must not end a long run
                reason = f"post-processing failed: {type(exc).__name__}: {exc}"
                yield _failed(item.entry, reason, per_image, stamp, config.out, item.size)


@dataclass
class Labelled:
    """One image's segmentation and its instances at the upright original size."""

    result: SegResult
    instances: list[Instance]


def label_loaded(
    segmenter: Segmenter | None,
    images: list[LoadedImage],
    vocab: Vocabulary,
    max_side: int,
    min_area: int,
) -> dict[str, Labelled | str]:
    """Segment decoded images and turn each label map into instances; errors become reasons.

    The one path from pixels to instances shared by runs, the Label Studio backend and the
    FiftyOne plugin. Results are keyed by entry.rel.
    """
    labelled: dict[str, Labelled | str] = {}
    for rel, outcome in segment_loaded(segmenter, images, vocab, max_side).items():
        if isinstance(outcome, str):
            labelled[rel] = outcome
            continue
        size = next(im.size for im in images if im.entry.rel == rel)
        try:
            instances = instances_from_labels(outcome.labels, outcome.probs, size, min_area)
        except Exception as exc:  # one image's post-processing must not end a long run
            labelled[rel] = f"post-processing failed: {type(exc).__name__}: {exc}"
            continue
        labelled[rel] = Labelled(outcome, instances)
    return labelled


def segment_loaded(
    segmenter: Segmenter | None, images: list[LoadedImage], vocab: Vocabulary, max_side: int
) -> dict[str, SegResult | str]:
    """Segment decoded images; if the batch fails, retry one by one so a bad image fails alone.

    Results are keyed by entry.rel and sized like fit_max_side(image, max_side).
    """
    assert segmenter is not None
    arrays = [fit_max_side(im.rgb, max_side) for im in images]
    padded = [_pad_to_aspect(a) for a in arrays]
    try:
        results = segmenter.segment_batch([p for p, _ in padded], vocab)
        return {
            im.entry.rel: _crop_result(res, box)
            for im, res, (_, box) in zip(images, results, padded, strict=True)
        }
    except Exception as exc:  # a method's error on one image must not end the run
        if len(images) == 1:
            return {images[0].entry.rel: f"segmentation failed: {type(exc).__name__}: {exc}"}
    out: dict[str, SegResult | str] = {}
    for im in images:
        out.update(segment_loaded(segmenter, [im], vocab, max_side))
    return out


def _pad_to_aspect(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Centre an extreme strip on a MAX_ASPECT canvas; returns it and the strip's box."""
    h, w = rgb.shape[:2]
    height, width = max(h, math.ceil(w / MAX_ASPECT)), max(w, math.ceil(h / MAX_ASPECT))
    if (height, width) == (h, w):
        return rgb, (0, 0, h, w)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = PAD_COLOUR
    y0, x0 = (height - h) // 2, (width - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = rgb
    return canvas, (y0, x0, y0 + h, x0 + w)


def _crop_result(result: SegResult, box: tuple[int, int, int, int]) -> SegResult:
    y0, x0, y1, x1 = box
    if (y0, x0) == (0, 0) and result.labels.shape == (y1, x1):
        return result
    probs = None if result.probs is None else result.probs[:, y0:y1, x0:x1]
    return SegResult(result.labels[y0:y1, x0:x1], result.scores, probs, result.extras)


def _write_image(
    item: LoadedImage,
    labelled: Labelled,
    vocab: Vocabulary,
    config: RunConfig,
    seconds: float,
    stamp: list[int] | None,
) -> dict[str, Any]:
    size = item.size
    instances = labelled.instances
    mask = _mask_name(item.entry)
    write_label_png(config.out / mask, semantic_from_instances(instances, size))
    if config.previews:
        write_preview(config.out / _preview_name(mask), item.rgb, instances, vocab.names)
    note = item.note
    h, w = size
    if max(h, w) > MAX_ASPECT * min(h, w):
        note = "; ".join(filter(None, [note, f"extreme aspect ratio, padded to {MAX_ASPECT}:1"]))
    return {
        "file": item.entry.rel,
        "status": "ok",
        "reason": note,
        "seconds": round(seconds, 3),
        "width": w,
        "height": h,
        "mask": mask,
        "stamp": stamp,
        "instances": [inst.to_dict() for inst in instances],
        "scores": [round(float(s), 6) for s in labelled.result.scores],
    }


def _failed(
    entry: ImageEntry,
    reason: str,
    seconds: float,
    stamp: list[int] | None,
    out: Path,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    # Outputs an earlier run made from a previous version of this file would now be stale.
    mask = _mask_name(entry)
    for stale in (out / mask, out / _preview_name(mask)):
        stale.unlink(missing_ok=True)
    record = {
        "file": entry.rel,
        "status": "failed",
        "reason": reason,
        "seconds": round(seconds, 3),
        "stamp": stamp,
    }
    if size is not None:
        record.update(height=size[0], width=size[1])
    return record


def _finish(
    store: RunStore,
    entries: list[ImageEntry],
    vocab: Vocabulary,
    summary: RunSummary,
    run_info: dict[str, Any],
) -> None:
    """Assemble annotations.json and manifest.jsonl from the records, streaming."""
    current = {e.rel for e in entries}
    _remove_outputs_of_removed_files(store, current)

    def ok_records() -> Iterator[dict[str, Any]]:
        return (r for r in store.sorted_records(current) if r["status"] == "ok")

    info = {
        "description": "autolabel pre-annotations",
        "version": __version__,
        "method": run_info["method"],
        "recipe": run_info["recipe"],
    }
    summary.images_written, summary.annotations_written = write_coco(
        store.out / "annotations.json", vocab.names, ok_records, info
    )
    with atomic_open(store.out / "manifest.jsonl", "w") as manifest:
        for rec, row in _manifest_rows(store, current, summary.skipped):
            if row["status"] == "ok":
                summary.ok += 1
                if row["reason"]:
                    summary.notes.append((row["file"], row["reason"]))
                for inst in rec["instances"]:
                    summary.per_class[vocab.names[inst["category_id"] - 1]] += 1
            elif row["status"] == "failed":
                summary.failed.append((row["file"], row["reason"]))
            manifest.write(json.dumps(row, ensure_ascii=False) + "\n")


def _remove_outputs_of_removed_files(store: RunStore, current: set[str]) -> None:
    """Delete masks and previews of images that left the input folder since an earlier run."""
    live = {r["mask"] for r in store.sorted_records(current) if r["status"] == "ok"}
    for rec in store.sorted_records():
        mask = rec.get("mask")
        if rec["file"] not in current and mask and mask not in live:
            for stale in (store.out / mask, store.out / _preview_name(mask)):
                stale.unlink(missing_ok=True)


def _manifest_rows(
    store: RunStore, current: set[str], skipped: list[tuple[str, str]]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(record, manifest row) for records and skipped files, merged in path order."""
    skipped_rows = iter(sorted(skipped))
    pending = next(skipped_rows, None)
    for rec in store.sorted_records(current):
        while pending is not None and pending[0] < rec["file"]:
            yield {}, _skip_row(pending)
            pending = next(skipped_rows, None)
        yield (
            rec,
            {
                "file": rec["file"],
                "status": rec["status"],
                "reason": rec.get("reason", ""),
                "seconds": rec.get("seconds", 0.0),
                "instances": len(rec.get("instances", [])),
                "mask": rec.get("mask"),
            },
        )
    while pending is not None:
        yield {}, _skip_row(pending)
        pending = next(skipped_rows, None)


def _skip_row(item: tuple[str, str]) -> dict[str, Any]:
    return {
        "file": item[0],
        "status": "skipped",
        "reason": item[1],
        "seconds": 0.0,
        "instances": 0,
        "mask": None,
    }
