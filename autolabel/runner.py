"""The job loop: images -> segmenter -> instances -> writers, with progress, resume and errors."""

from __future__ import annotations

import errno
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel import __version__
from autolabel.config import RunConfig, check_sizes
from autolabel.errors import AutolabelError, ImageError, UsageError
from autolabel.instances import Instances
from autolabel.io.atomic import atomic_open
from autolabel.io.coco import write_coco
from autolabel.io.images import ImageEntry, LoadedImage, LoadError
from autolabel.io.report import REPORT_DIR, REPORT_NAME, write_report
from autolabel.io.run_folder import mask_name, preview_name
from autolabel.io.storage import (
    LocalImages,
    LocalOutput,
    RemoteImages,
    RemoteOutput,
    local_run,
    open_images,
    open_output,
)
from autolabel.io.store import ObjectRunStore, RunStore
from autolabel.pipeline import MAX_ASPECT, is_extreme_aspect
from autolabel.provenance import package_versions
from autolabel.vocab import Vocabulary

if TYPE_CHECKING:
    from autolabel.api import Labeler

# Write errors that will hit every following image too: stop (resumable) instead of failing all.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass
class RunSummary:
    """What a run did, for the CLI's final report and exit code."""

    out: Path | str  # a local folder, or the URL of one in object storage
    found: int = 0  # image files found under the input folder
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # labelled, with a caveat
    warnings: list[str] = field(default_factory=list)  # about the whole run, each said once
    resumed: int = 0
    per_class: Counter = field(default_factory=Counter)
    images_written: int = 0
    annotations_written: int = 0
    seconds: float = 0.0


def check_output(out: Path) -> None:
    """Refuse an output folder that cannot be written, without creating anything."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out}: a file of that name exists")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"output folder {out}: not writable ({existing} is not a folder)")
    # Effective ids: a setuid or seteuid process is judged as the user it acts for.
    effective = os.access in os.supports_effective_ids
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        raise UsageError(f"output folder {out}: not writable (Permission denied)")


def prepare_output(out: Path) -> None:
    """Create the output folder (once the run is known to be able to start)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"output folder {out}: cannot create it ({exc.strerror or exc})") from exc


def run_job(config: RunConfig, labeler: Labeler | None = None, progress: Any = None) -> RunSummary:
    """Run a labelling job end to end; nothing is written until the run is known to start.

    Options, settings, vocabulary, device, the input and output locations, the engine (a Ray
    cluster's reachability) and (when any image needs labelling) the models are checked before
    the output folder is touched. `labeler` lets a caller that already holds one (the Python
    API, a server) reuse its loaded models; `progress` is an optional
    callback(advance: int, total: int, done: int).
    """
    from autolabel.api import Labeler

    started = time.perf_counter()
    check_sizes(config.max_side, config.min_area, config.batch_size)
    engine = check_engine(config)
    if labeler is None:
        labeler = Labeler.from_config(config, lazy=True)
    source = open_images(config.images, config.storage_options)
    output = open_output(config.out, config.storage_options)
    source.check()
    vocab = labeler.vocabulary
    if isinstance(output, LocalOutput):
        check_output(output.out)
        store: RunStore = RunStore(output.out)
    else:
        output.remote.check()
        store = ObjectRunStore(output.remote)
    # The output folder (or, when it is the input folder itself, what a run writes there).
    entries, skipped = source.scan(output.inside(source))
    identity = labeler.identity()
    finished = store.check(identity, resume=config.resume, overwrite=config.overwrite)
    todo = [e for e in entries if not _is_finished(e, finished.get(e.rel), config, source, output)]
    if todo:
        labeler.load()  # offline weights, a bad checkpoint: fail here, with nothing written
        pool = engine.start(config, labeler, source, output) if engine is not None else None
    else:
        pool = None
    if isinstance(output, LocalOutput):
        prepare_output(output.out)
    try:
        finished = store.open(identity, resume=config.resume, overwrite=config.overwrite)
        summary = RunSummary(output.name, found=len(entries), skipped=skipped)
        todo = [
            e for e in entries if not _is_finished(e, finished.get(e.rel), config, source, output)
        ]
        del finished
        summary.resumed = len(entries) - len(todo)
        for note in (vocab.background_note(), labeler.precision_note()):
            if note:
                summary.warnings.append(note)
        described = labeler.describe()
        models = described["models"] if labeler.loaded else _previous_models(output)
        run_info = {
            "autolabel_version": __version__,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_root": source.resolved(),
            "config": config.to_dict(),
            "method": labeler.method,
            "recipe": labeler.recipe,
            "settings": labeler.settings,
            # --refine and SAM's settings, when given (Labeler.describe)
            **{key: described[key] for key in ("refine", "sam") if key in described},
            "precision": described["precision"],  # as run on the driver's device
            "vocabulary": vocab.to_dict(),
            "models": models,
            "versions": package_versions(),
        }
        output.write_json("run.json", run_info)
        if pool is not None:
            records = pool.process(todo, summary.warnings)
        else:
            from autolabel.engines import local

            records = local.process(todo, labeler, config, source, output, summary.warnings)
        for record in records:
            store.append(record)
            if progress is not None:
                progress(1, len(entries), summary.resumed)
        _finish(store, output, entries, vocab, summary, run_info)
        try:
            _write_report(output)
        except Exception as exc:  # the report must never cost a finished run
            summary.warnings.append(f"report.html not written: {type(exc).__name__}: {exc}")
    except OSError as exc:
        if exc.errno in FATAL_WRITE_ERRNOS:
            raise AutolabelError(
                f"cannot write to {config.out} ({exc.strerror}); finished images are saved: "
                "free space and rerun the same command to resume"
            ) from exc
        raise
    finally:
        store.close()
        if pool is not None:
            pool.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _write_report(output: LocalOutput | RemoteOutput) -> None:
    """report.html and its thumbnails; for object storage, made from a local copy of the run
    (previews included) and uploaded beside it."""
    if isinstance(output, LocalOutput):
        write_report(output.out)
        return
    with local_run(output.name, output.remote.options, previews=True) as folder:
        write_report(folder)
        output.upload(folder, (REPORT_NAME, REPORT_DIR))


def check_engine(config: RunConfig) -> Any:
    """The engine module a run uses (None: this process); its options checked, nothing started."""
    if config.engine == "local":
        for name, value in (("--ray-address", config.ray_address), ("--workers", config.workers)):
            if value is not None:
                raise UsageError(f"{name} is an option of --engine ray")
        from autolabel.engines.local import check_workers

        check_workers(config.cpu_workers)
        return None
    if config.engine != "ray":
        raise UsageError(f"--engine must be local or ray, not {config.engine!r}")
    if config.cpu_workers is not None:
        raise UsageError("--cpu-workers is an option of --engine local")
    from autolabel.engines import ray_pool

    ray_pool.check_options(config)
    return ray_pool


def _is_finished(
    entry: ImageEntry,
    record: dict[str, Any] | None,
    config: RunConfig,
    source: LocalImages | RemoteImages,
    output: LocalOutput | RemoteOutput,
) -> bool:
    """An ok record of this very file whose outputs are where this run would put them."""
    mask = mask_name(entry.key)
    if record is None or record.get("mask") != mask or not output.exists(mask):
        return False
    if config.previews and not output.exists(preview_name(mask)):
        return False
    stamp = source.stamp(entry)
    return stamp is not None and record.get("stamp") == stamp


def _previous_models(output: LocalOutput | RemoteOutput) -> dict[str, Any]:
    try:
        if isinstance(output, LocalOutput):
            text = (output.out / "run.json").read_text(encoding="utf-8")
        else:
            text = output.remote.read("run.json").decode("utf-8")
        return json.loads(text).get("models", {})
    except (OSError, ValueError):
        return {}


def label_batch(
    batch: list[ImageEntry],
    stamps: list[list[Any] | None],
    labeler: Labeler,
    config: RunConfig,
    source: LocalImages | RemoteImages,
    output: LocalOutput | RemoteOutput,
    warnings: list[str],
) -> Iterator[dict[str, Any]]:
    """Label one batch and write each image's outputs; yield its records in order.

    The serial loop: the local engine runs it with --cpu-workers 0, Ray in its workers.
    """
    t0 = time.perf_counter()
    loaded = [source.load(e) for e in batch]
    good = [im for im in loaded if isinstance(im, LoadedImage)]
    results = labeler.label_loaded(good) if good else {}
    per_image = (time.perf_counter() - t0) / max(len(batch), 1)
    for item, stamp in zip(loaded, stamps, strict=True):
        outcome = item if isinstance(item, ImageError) else results[item.entry.rel]
        yield image_record(item, outcome, stamp, per_image, labeler, config, output, warnings)


def image_record(
    item: LoadedImage | LoadError,
    outcome: Instances | ImageError,
    stamp: list[Any] | None,
    seconds: float,
    labeler: Labeler,
    config: RunConfig,
    output: LocalOutput | RemoteOutput,
    warnings: list[str],
) -> dict[str, Any]:
    """Write one labelled image's outputs and return its record (a failed record when it could
    not be labelled or written; write errors that will hit every image raise)."""
    if isinstance(item, LoadError):
        return failed_record(item.entry, item.reason, seconds, stamp, output)
    if isinstance(outcome, ImageError):
        return failed_record(item.entry, outcome.reason, seconds, stamp, output, item.size)
    note = labeler.domain_note(item.size)
    if note:
        warnings.append(note)
    try:
        return _write_image(item, outcome, config, output, seconds, stamp)
    except OSError as exc:
        if exc.errno in FATAL_WRITE_ERRNOS:
            raise
        reason = f"could not write outputs: {exc}"
        return failed_record(item.entry, reason, seconds, stamp, output, item.size)
    except Exception as exc:  # one image's post-processing must not end a long run
        reason = f"post-processing failed: {type(exc).__name__}: {exc}"
        return failed_record(item.entry, reason, seconds, stamp, output, item.size)


def _write_image(
    item: LoadedImage,
    instances: Instances,
    config: RunConfig,
    output: LocalOutput | RemoteOutput,
    seconds: float,
    stamp: list[Any] | None,
) -> dict[str, Any]:
    mask = mask_name(item.entry.key)
    output.write_labels(mask, instances.label_map)
    if config.previews:
        output.write_preview(preview_name(mask), item.rgb, instances)
    note = item.note
    h, w = item.size
    if is_extreme_aspect(item.size):
        note = "; ".join(filter(None, [note, f"extreme aspect ratio, padded to {MAX_ASPECT}:1"]))
    scores = [] if instances.scores is None else instances.scores
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
        "scores": [round(float(s), 6) for s in scores],
        "priority": instances.priority,
    }


def failed_record(
    entry: ImageEntry,
    reason: str,
    seconds: float,
    stamp: list[Any] | None,
    output: LocalOutput | RemoteOutput,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The record of an image that could not be labelled; its stale outputs are removed."""
    # Outputs an earlier run made from a previous version of this file would now be stale.
    mask = mask_name(entry.key)
    for stale in (mask, preview_name(mask)):
        output.remove(stale)
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
    output: LocalOutput | RemoteOutput,
    entries: list[ImageEntry],
    vocab: Vocabulary,
    summary: RunSummary,
    run_info: dict[str, Any],
) -> None:
    """Assemble annotations.json and manifest.jsonl from the records, streaming."""
    current = {e.rel for e in entries}
    _remove_outputs_of_removed_files(store, output, current)

    def ok_records() -> Iterator[dict[str, Any]]:
        return (r for r in store.sorted_records(current) if r["status"] == "ok")

    info = {
        "description": "autolabel pre-annotations",
        "version": __version__,
        "method": run_info["method"],
        "recipe": run_info["recipe"],
    }
    with output.staged("annotations.json") as path:
        summary.images_written, summary.annotations_written = write_coco(
            path, vocab.names, ok_records, info
        )
    with output.staged("manifest.jsonl") as path, atomic_open(path, "w") as manifest:
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


def _remove_outputs_of_removed_files(
    store: RunStore, output: LocalOutput | RemoteOutput, current: set[str]
) -> None:
    """Delete masks and previews of images that left the input folder since an earlier run."""
    live = {r["mask"] for r in store.sorted_records(current) if r["status"] == "ok"}
    for rec in store.sorted_records():
        mask = rec.get("mask")
        if rec["file"] not in current and mask and mask not in live:
            for stale in (mask, preview_name(mask)):
                output.remove(stale)


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
                # Review priority (autolabel.review); None when failed or from an older version.
                "priority": rec.get("priority"),
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
        "priority": None,
    }
