"""The job loop: images -> segmenter -> instances -> writers, with progress, resume and errors."""

from __future__ import annotations

import json
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

from autolabel import __version__
from autolabel.config import RunConfig
from autolabel.errors import UsageError
from autolabel.images import ImageEntry, LoadedImage, LoadError, load_image, scan_images
from autolabel.instances import instances_from_labels, semantic_from_instances
from autolabel.methods.base import Segmenter, SegResult, build_segmenter
from autolabel.resize import fit_max_side
from autolabel.store import RunStore
from autolabel.vocab import Vocabulary, load_vocabulary
from autolabel.writers.atomic import atomic_open, atomic_write_json
from autolabel.writers.coco import write_coco
from autolabel.writers.png import write_label_png, write_preview

VERSIONED_PACKAGES = ("torch", "open_clip_torch", "numpy", "pillow", "pycocotools", "transformers")


@dataclass
class RunSummary:
    """What a run did, for the CLI's final report and exit code."""

    out: Path
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0
    per_class: Counter = field(default_factory=Counter)
    images_written: int = 0
    annotations_written: int = 0
    seconds: float = 0.0


def prepare_output(out: Path) -> None:
    """Create the output folder and prove it is writable, before any model is loaded."""
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
    entries, skipped = scan_images(config.images, exclude=config.out)
    identity = {
        "vocabulary": vocab.fingerprint(),
        "method": resolved.method,
        "recipe": resolved.recipe,
        "settings": resolved.settings,
        "max_side": config.max_side,
        "min_area": config.min_area,
    }
    store = RunStore(config.out)
    done = store.open(identity, resume=config.resume, overwrite=config.overwrite)
    summary = RunSummary(config.out, skipped=skipped)
    todo = [e for e in entries if e.rel not in done]
    summary.resumed = len(entries) - len(todo)
    if todo and segmenter is None:
        segmenter = build_segmenter(resolved.method, resolved.settings, config.device)
    run_info = {
        "autolabel_version": __version__,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_root": os.fspath(config.images.resolve()),
        "config": config.to_dict(),
        "method": resolved.method,
        "recipe": resolved.recipe,
        "settings": resolved.settings,
        "vocabulary": vocab.to_dict(),
        "models": segmenter.describe() if segmenter is not None else _previous_models(config.out),
        "versions": package_versions(),
    }
    atomic_write_json(config.out / "run.json", run_info)
    try:
        for record in _process(todo, segmenter, vocab, config):
            store.append(record)
            if progress is not None:
                progress(1, len(entries), summary.resumed)
    finally:
        store.close()
    _finish(store, entries, vocab, summary, run_info)
    summary.seconds = time.perf_counter() - started
    return summary


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
        loaded = [load_image(e) for e in batch]
        good = [im for im in loaded if isinstance(im, LoadedImage)]
        results = _segment(segmenter, good, vocab, config.max_side) if good else {}
        per_image = (time.perf_counter() - t0) / max(len(batch), 1)
        for item in loaded:
            if isinstance(item, LoadError):
                yield _failed(item.entry, item.reason, per_image)
                continue
            outcome = results[item.entry.rel]
            if isinstance(outcome, str):
                yield _failed(item.entry, outcome, per_image, item.size)
                continue
            try:
                yield _write_image(item, outcome, vocab, config, per_image)
            except OSError as exc:
                yield _failed(item.entry, f"could not write outputs: {exc}", per_image, item.size)


def _segment(
    segmenter: Segmenter | None, images: list[LoadedImage], vocab: Vocabulary, max_side: int
) -> dict[str, SegResult | str]:
    """Segment a batch; if the batch fails, retry image by image so one bad image fails alone."""
    assert segmenter is not None
    arrays = [fit_max_side(im.rgb, max_side) for im in images]
    try:
        return {
            im.entry.rel: res
            for im, res in zip(images, segmenter.segment_batch(arrays, vocab), strict=True)
        }
    except (RuntimeError, ValueError, MemoryError) as exc:
        if len(images) == 1:
            return {images[0].entry.rel: f"segmentation failed: {type(exc).__name__}: {exc}"}
    out: dict[str, SegResult | str] = {}
    for im in images:
        out.update(_segment(segmenter, [im], vocab, max_side))
    return out


def _write_image(
    item: LoadedImage, result: SegResult, vocab: Vocabulary, config: RunConfig, seconds: float
) -> dict[str, Any]:
    size = item.size
    instances = instances_from_labels(result.labels, result.probs, size, config.min_area)
    write_label_png(config.out / "masks" / f"{item.entry.key}.png", semantic_from_instances(
        instances, size
    ))
    if config.previews:
        write_preview(
            config.out / "previews" / f"{item.entry.key}.jpg", item.rgb, instances, vocab.names
        )
    return {
        "file": item.entry.rel,
        "status": "ok",
        "reason": item.note,
        "seconds": round(seconds, 3),
        "width": size[1],
        "height": size[0],
        "instances": [inst.to_dict() for inst in instances],
        "scores": [round(float(s), 6) for s in result.scores],
    }


def _failed(
    entry: ImageEntry, reason: str, seconds: float, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    record = {"file": entry.rel, "status": "failed", "reason": reason, "seconds": round(seconds, 3)}
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
        for row in _manifest_rows(store, current, summary.skipped):
            if row["status"] == "ok":
                summary.ok += 1
                for inst in row["_instances"]:
                    summary.per_class[vocab.names[inst["category_id"] - 1]] += 1
            elif row["status"] == "failed":
                summary.failed.append((row["file"], row["reason"]))
            row.pop("_instances", None)
            manifest.write(json.dumps(row, ensure_ascii=False) + "\n")


def _manifest_rows(
    store: RunStore, current: set[str], skipped: list[tuple[str, str]]
) -> Iterator[dict[str, Any]]:
    """Records and skipped files merged in path order, as manifest rows."""
    skipped_rows = iter(sorted(skipped))
    pending = next(skipped_rows, None)
    for rec in store.sorted_records(current):
        while pending is not None and pending[0] < rec["file"]:
            yield _skip_row(pending)
            pending = next(skipped_rows, None)
        yield {
            "file": rec["file"],
            "status": rec["status"],
            "reason": rec.get("reason", ""),
            "seconds": rec.get("seconds", 0.0),
            "instances": len(rec.get("instances", [])),
            "_instances": rec.get("instances", []),
        }
    while pending is not None:
        yield _skip_row(pending)
        pending = next(skipped_rows, None)


def _skip_row(item: tuple[str, str]) -> dict[str, Any]:
    return {"file": item[0], "status": "skipped", "reason": item[1], "seconds": 0.0, "instances": 0}
