"""`autolabel push labelstudio`: a run's masks become LS tasks with brush predictions.

Idempotent: tasks are keyed by their image URL and predictions by model_version, so pushing the
same run again sends nothing, and pushing a newer run adds its predictions to the same tasks and
sets their review priority to the newer run's (the Data Manager sorts on the task's data).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from label_studio_sdk import LabelStudio

from autolabel.errors import UsageError
from autolabel.io.run_folder import RunFolder, read_run
from autolabel.provenance import model_version
from autolabel.sinks.labelstudio.client import (
    Project,
    api_errors,
    connect,
    find_project_by_title,
    get_project,
    list_tasks,
)
from autolabel.sinks.labelstudio.config import make_label_config, match_vocabulary, parse_interface
from autolabel.sinks.labelstudio.regions import check_prediction, make_prediction
from autolabel.vocab import Vocabulary

LOCAL_FILES_URL = "/data/local-files/?d="
# Well under LS's 200 MB per request and Django's upload limits, yet few requests per run.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
# Task data key holding where the image came from; pull uses it to name COCO images.
META_KEY = "autolabel"
# Task data key of the image's review priority (autolabel.review), sortable in the Data Manager.
PRIORITY_KEY = "priority"


@dataclass(frozen=True)
class ImageUrls:
    """How Label Studio reaches a run's images: Local Storage under its document root, or URLs.

    document_root: the server's LOCAL_FILES_DOCUMENT_ROOT; images_root must lie under it.
    url_prefix: a URL under which the images folder is already served.
    """

    images_root: Path
    document_root: Path | None = None
    url_prefix: str | None = None

    @classmethod
    def checked(
        cls, images_root: Path, document_root: Path | None, url_prefix: str | None
    ) -> ImageUrls:
        """Validate the options against the run's images folder."""
        if (document_root is None) == (url_prefix is None):
            raise UsageError(
                "give exactly one of --document-root DIR (Label Studio serves the images from "
                "its LOCAL_FILES_DOCUMENT_ROOT) or --url-prefix URL (images served elsewhere)"
            )
        if url_prefix is not None:
            if not url_prefix.startswith(("http://", "https://", "/")):
                raise UsageError(
                    f"--url-prefix {url_prefix!r}: expected an http(s) URL or a path on the server"
                )
            return cls(images_root, None, url_prefix.rstrip("/"))
        root = Path(document_root).resolve()
        images = images_root.resolve()
        if not root.is_dir():
            raise UsageError(f"--document-root {root}: not a folder")
        if images == root or root not in images.parents:
            raise UsageError(
                f"--document-root {root}: the run's images folder {images} must be inside it "
                "(and not the root itself: Label Studio refuses a storage at its document root); "
                "use a parent folder of the images as LOCAL_FILES_DOCUMENT_ROOT"
            )
        return cls(images, root, None)

    def url(self, file_name: str) -> str:
        """The task URL of an image given by its path relative to the images folder."""
        if self.url_prefix is not None:
            return f"{self.url_prefix}/{quote(file_name, safe='/')}"
        assert self.document_root is not None
        rel = (self.images_root / file_name).relative_to(self.document_root).as_posix()
        return LOCAL_FILES_URL + quote(rel, safe="/")


@dataclass
class PushSummary:
    """What a push did."""

    project_id: int
    project_title: str
    model_version: str
    project_created: bool = False
    storage_created: bool = False
    tasks_created: int = 0
    predictions_created: int = 0
    regions: int = 0
    unchanged: int = 0  # images whose task already had this model_version
    priorities_updated: int = 0  # existing tasks whose review priority the newer run changed
    requests: int = 0


@dataclass(frozen=True)
class ExistingTask:
    """A task already in the project: its id, its data and its predictions' model versions."""

    id: int
    data: dict
    versions: frozenset[str]


def push_run(
    out: Path,
    url: str,
    api_key: str,
    *,
    project_id: int | None = None,
    title: str | None = None,
    document_root: Path | None = None,
    url_prefix: str | None = None,
    polygons: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> PushSummary:
    """Push a run folder's masks as pre-annotations; `progress(done, total)` after each image."""
    if (project_id is None) == (title is None):
        raise UsageError("give exactly one of --project ID or --title T")
    if chunk_bytes < 1024:
        raise UsageError("--chunk-mb is too small")
    run = read_run(out)
    version = run_model_version(run)
    urls = ImageUrls.checked(run.images_root, document_root, url_prefix)
    client = connect(url, api_key)
    project, created = _open_project(client, project_id, title, run.vocabulary, polygons)
    summary = PushSummary(project.id, project.title, version, project_created=created)
    labels = match_vocabulary(project.target, run.vocabulary, project.where)
    interface = parse_interface(project.label_config, project.where)
    if urls.document_root is not None:
        summary.storage_created = _ensure_local_storage(client, project.id, urls.images_root)
    existing = _existing_tasks(client, project)

    sender = _Sender(client, project.id, chunk_bytes, summary)
    for done, image in enumerate(run.images, 1):
        image_url = urls.url(image.file_name)
        task = existing.get(image_url)
        if task is not None and version in task.versions:
            summary.unchanged += 1
        else:
            # The run's instances, named with the project's labels for its classes.
            instances = replace(image.instances, names=labels)
            prediction = make_prediction(instances, project.target, version)
            check_prediction(interface, prediction, f"{project.where}, image {image.file_name}")
            if task is None:
                meta = {"file": image.file_name, "width": image.width, "height": image.height}
                data = {project.target.value_key: image_url, META_KEY: meta}
                if image.priority is not None and PRIORITY_KEY not in data:
                    data[PRIORITY_KEY] = image.priority  # a column to sort by in the Data Manager
                sender.add("tasks", {"data": data, "predictions": [prediction]})
            else:
                sender.add("predictions", {"task": task.id, **prediction})
                _update_priority(client, task, image.priority, summary)
        if progress is not None:
            progress(done, len(run.images))
    sender.flush("tasks")
    sender.flush("predictions")
    if summary.tasks_created or summary.predictions_created:
        # The labeling UI shows the predictions of the project's model_version: the newest run.
        with api_errors(project.where):
            client.projects.update(id=project.id, model_version=version)
    return summary


def run_model_version(run: RunFolder) -> str:
    """The model_version of a run folder's predictions (the backend's for the same setup)."""
    return model_version(run.identity(), run.models)


def _open_project(
    client: LabelStudio,
    project_id: int | None,
    title: str | None,
    vocab: Vocabulary,
    polygons: bool,
) -> tuple[Project, bool]:
    """The project by id, or by title (created with a generated config when absent)."""
    if project_id is None:
        assert title is not None
        project_id = find_project_by_title(client, title)
        if project_id is None:
            with api_errors(f"creating project {title!r}"):
                created = client.projects.create(
                    title=title, label_config=make_label_config(vocab, polygons)
                )
            return get_project(client, int(created.id)), True
    return get_project(client, project_id), False


def _ensure_local_storage(client: LabelStudio, project_id: int, images_root: Path) -> bool:
    """Make sure a Local Storage covers the images folder (no sync: push creates the tasks).

    LS serves /data/local-files/ only under a storage's path; syncing it would add one task per
    file without predictions, so the storage is created and never synced.
    """
    where = f"Local Storage of project {project_id}"
    with api_errors(where):
        storages = list(client.import_storage.local.list(project=project_id))
    for storage in storages:
        path = Path(storage.path or "/nonexistent")
        if path == images_root or path in images_root.parents:
            return False
    hint = (
        "start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to the --document-root folder"
    )
    with api_errors(f"{where} at {images_root}", hints={400: hint}):
        client.import_storage.local.create(
            project=project_id,
            path=str(images_root),
            title=f"autolabel: {images_root.name}",
            use_blob_urls=True,
            recursive_scan=True,
        )
    return True


def _existing_tasks(client: LabelStudio, project: Project) -> dict[str, ExistingTask]:
    """image URL -> the task showing it."""
    key = project.target.value_key
    found: dict[str, ExistingTask] = {}
    for task in list_tasks(client, project.id, include="id,data,predictions_model_versions"):
        data = task.get("data") or {}
        image_url = data.get(key)
        if isinstance(image_url, str) and image_url not in found:
            versions = str(task.get("predictions_model_versions") or "")
            names = frozenset(v.strip() for v in versions.split(",")) - {""}
            found[image_url] = ExistingTask(int(task["id"]), data, names)
    return found


def _update_priority(
    client: LabelStudio, task: ExistingTask, priority: float | None, summary: PushSummary
) -> None:
    """Give an existing task the newer run's review priority, if it changed."""
    if priority is None or task.data.get(PRIORITY_KEY) == priority:
        return
    with api_errors(f"task {task.id}"):
        # Task data is replaced whole: keep every key the task already had.
        client.tasks.update(id=task.id, data={**task.data, PRIORITY_KEY: priority})
    summary.priorities_updated += 1
    summary.requests += 1


class _Sender:
    """Queues new tasks and new predictions, sending each queue in chunks of bounded JSON size."""

    def __init__(self, client: LabelStudio, project_id: int, limit: int, summary: PushSummary):
        self.client = client
        self.project_id = project_id
        self.limit = limit
        self.summary = summary
        self.queues: dict[str, list[dict]] = {"tasks": [], "predictions": []}
        self.sizes = {"tasks": 0, "predictions": 0}

    def add(self, kind: str, item: dict) -> None:
        """Queue an item; first send the queue if the item would take it past the limit."""
        size = len(json.dumps(item, separators=(",", ":")))
        if self.queues[kind] and self.sizes[kind] + size > self.limit:
            self.flush(kind)
        self.queues[kind].append(item)
        self.sizes[kind] += size
        self.summary.regions += sum(len(p["result"]) for p in item.get("predictions", [item]))

    def flush(self, kind: str) -> None:
        """Send what is queued of one kind."""
        items = self.queues[kind]
        if not items:
            return
        where = f"importing {len(items)} {kind} into project {self.project_id}"
        with api_errors(where):
            if kind == "tasks":
                response = self.client.projects.import_tasks(id=self.project_id, request=items)
                self.summary.tasks_created += int(response.task_count or 0)
                self.summary.predictions_created += int(response.prediction_count or 0)
            else:
                response = self.client.projects.import_predictions(
                    id=self.project_id, request=items
                )
                self.summary.predictions_created += int(response.created or 0)
        self.summary.requests += 1
        self.queues[kind], self.sizes[kind] = [], 0


def iter_summary_lines(summary: PushSummary, url: str) -> Iterator[str]:
    """Human-readable lines for the CLI."""
    verb = "created" if summary.project_created else "found"
    yield (
        f"project {summary.project_id} ({summary.project_title!r}) {verb}: {url.rstrip('/')}"
        f"/projects/{summary.project_id}"
    )
    yield f"model_version {summary.model_version}"
    yield (
        f"{summary.tasks_created} tasks and {summary.predictions_created} predictions created "
        f"({summary.regions} regions, {summary.requests} requests); "
        f"{summary.unchanged} images already had this version"
    )
    if summary.priorities_updated:
        yield f"review priority updated on {summary.priorities_updated} existing tasks"
    if summary.storage_created:
        yield "a Local Storage was added for the images folder (not synced)"
