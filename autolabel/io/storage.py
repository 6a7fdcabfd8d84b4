"""Where a run reads its images and writes its outputs: a local folder or an fsspec URL.

Local folders keep the behaviour of a plain run (atomic renames, the records file, the lock).
Object stores (s3://, gs://, az://...) have no rename and no append: every object is written
once, whole, under its final key after it is complete, so a reader (or a resumed run) only ever
sees objects that exist in full. Credentials and endpoints reach fsspec as its filesystems take
them: the environment, profiles, or `storage_options` (the CLI's --storage-options JSON).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from autolabel.errors import UsageError
from autolabel.instances import Instances
from autolabel.io.atomic import atomic_write_json, json_text
from autolabel.io.images import (
    EXTENSIONS,
    ImageEntry,
    LoadedImage,
    LoadError,
    load_image,
    scan_images,
    stamp,
    unique_keys,
)
from autolabel.io.png import label_png_bytes, preview_bytes, write_label_png, write_preview
from autolabel.io.run_folder import STATE_DIR

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The extra that brings each protocol's fsspec filesystem, for the message when it is missing.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}
# Stores whose first path component is a bucket (a container) that must exist already.
BUCKET_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
# Object metadata that changes when an object is replaced, in the order the stores offer it.
VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "mtime")


def is_url(location: str | Path) -> bool:
    """Whether a location names an fsspec URL (s3://bucket/prefix) rather than a local path."""
    return isinstance(location, str) and bool(_URL.match(location))


def location(text: str | Path) -> str | Path:
    """A local path as a Path (file:// URLs included), any other URL as text without a final /."""
    if not is_url(text):
        return Path(text)
    text = str(text)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    return text.rstrip("/")


@dataclass
class Remote:
    """A prefix in an object store, reached through fsspec; pickled without its filesystem."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (made on first use); a UsageError when it is not installed."""
        return self._connect()[0]

    def _connect(self) -> tuple[Any, str]:
        """The filesystem and the prefix's path in it."""
        if self._fs is None:
            import fsspec

            protocol = self.url.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol)
            except ImportError as exc:
                extra = EXTRAS.get(protocol)
                hint = f"pip install 'autolabel[{extra}]'" if extra else "install its package"
                raise UsageError(f"{self.url}: no filesystem for {protocol}:// ({hint})") from exc
            except ValueError as exc:
                raise UsageError(f"{self.url}: unknown protocol {protocol}://") from exc
            try:
                self._fs, root = fsspec.core.url_to_fs(self.url, **self.options)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{self.url}: bad storage options ({exc})") from exc
            self._root = root.rstrip("/")
        return self._fs, self._root

    def key(self, rel: str) -> str:
        """The filesystem path of an object under the prefix."""
        root = self._connect()[1]
        return f"{root}/{rel}" if rel else root

    def write(self, rel: str, data: bytes) -> None:
        """Write one object whole, under its final key."""
        self.fs.pipe_file(self.key(rel), data)

    def read(self, rel: str) -> bytes:
        """The bytes of one object."""
        return self.fs.cat_file(self.key(rel))

    def exists(self, rel: str) -> bool:
        """Whether an object exists."""
        return self.fs.isfile(self.key(rel))

    def delete(self, rel: str) -> None:
        """Remove one object, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(rel))

    def delete_tree(self, rel: str) -> None:
        """Remove every object under a prefix (or the one object of that name)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(rel), recursive=True)

    def listing(self, rel: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
        """(path relative to the prefix, metadata) of every object under `rel`, in key order."""
        base = self.key(rel)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path in sorted(found):
            info = found[path]
            if info.get("type", "file") != "directory":
                yield path[len(self._root) + 1 :], info

    def check(self) -> None:
        """A UsageError naming the URL and the cause when its bucket cannot be reached."""
        fs, root = self._connect()
        bucket = root.split("/", 1)[0]
        try:
            if self.url.split("://", 1)[0] in BUCKET_STORES:
                fs.info(bucket)
            else:
                fs.exists(root)
        except FileNotFoundError as exc:
            raise UsageError(f"{self.url}: bucket {bucket!r} does not exist") from exc
        except PermissionError as exc:
            raise UsageError(f"{self.url}: access denied; check the credentials ({exc})") from exc
        except Exception as exc:  # endpoints, DNS, TLS: each filesystem raises its own
            cause = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(f"{self.url}: cannot reach the store ({cause})") from exc


def object_version(info: dict[str, Any]) -> list[Any]:
    """Size and a version tag of an object: a replaced object is labelled again."""
    tag = next((info[k] for k in VERSION_KEYS if info.get(k) is not None), None)
    return [info.get("size"), None if tag is None else str(tag)]


# --- the input folder ------------------------------------------------------------------------


class LocalImages:
    """A local folder of images (scan_images and load_image, unchanged)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        """Refuse a path that is not a folder."""
        if not self.root.is_dir():
            raise UsageError(f"{self.root}: not a folder of images")

    def scan(self, exclude: Iterable[Path]) -> tuple[list[ImageEntry], list[tuple[str, str]]]:
        """Entries and passed-over files, as scan_images gives them."""
        return scan_images(self.root, exclude=exclude)

    def stamp(self, entry: ImageEntry) -> list[Any] | None:
        """Size and modification time, or None when the file cannot be read."""
        try:
            return stamp(entry.path)
        except OSError:
            return None

    def load(self, entry: ImageEntry) -> LoadedImage | LoadError:
        """Decode one file."""
        return load_image(entry)

    def resolved(self) -> str:
        """What run.json records as images_root."""
        return str(self.root.resolve())


class RemoteImages:
    """Images under a prefix of an object store."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._stamps: dict[str, list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Workers get each image's stamp with its batch, not the whole listing.
        return {"remote": self.remote, "_stamps": {}}

    def check(self) -> None:
        """Refuse an unreachable store or an empty prefix."""
        self.remote.check()
        try:
            found = self.remote.fs.isdir(self.remote.key(""))
        except Exception as exc:
            raise UsageError(f"{self.remote.url}: cannot list it ({exc})") from exc
        if not found:
            raise UsageError(f"{self.remote.url}: not a folder of images (no objects under it)")

    def scan(self, exclude: Iterable[str]) -> tuple[list[ImageEntry], list[tuple[str, str]]]:
        """Objects under the prefix in key order, as scan_images lists a folder."""
        skip = tuple(f"{p}/" for p in exclude)
        found: list[tuple[str, dict[str, Any]]] = []
        problems: list[tuple[str, str]] = []
        runs: list[str] = []  # folders holding another run's outputs
        try:
            listing = list(self.remote.listing())
        except Exception as exc:
            raise UsageError(f"{self.remote.url}: cannot list it ({exc})") from exc
        for rel, _ in listing:
            if rel.endswith(f"/{STATE_DIR}/state.json") and not rel.startswith(skip):
                runs.append(rel[: -len(f"/{STATE_DIR}/state.json")] + "/")
        for folder in runs:
            problems.append((folder[:-1], "output folder of another autolabel run (not scanned)"))
        for rel, info in listing:
            parts = PurePosixPath(rel).parts
            if rel.startswith(skip) or rel.startswith(tuple(runs)):
                continue
            if any(part.startswith(".") for part in parts):
                continue
            suffix = PurePosixPath(rel).suffix.lower()
            if suffix not in EXTENSIONS:
                problems.append((rel, f"not a supported image type ({suffix or 'no extension'})"))
                continue
            found.append((rel, info))
        keys = unique_keys([rel for rel, _ in found])
        entries = []
        for i, ((rel, info), key) in enumerate(zip(found, keys, strict=True)):
            entries.append(ImageEntry(i + 1, PurePosixPath(self.remote.key(rel)), rel, key))
            self._stamps[rel] = object_version(info)
        problems.sort()
        return entries, problems

    def stamp(self, entry: ImageEntry) -> list[Any] | None:
        """The object's size and version tag from the listing."""
        return self._stamps.get(entry.rel)

    def load(self, entry: ImageEntry) -> LoadedImage | LoadError:
        """Fetch and decode one object."""
        try:
            data = self.remote.read(entry.rel)
        except Exception as exc:
            return LoadError(entry, f"cannot read object: {type(exc).__name__}: {exc}")
        return load_image(entry, data)

    def resolved(self) -> str:
        """What run.json records as images_root."""
        return self.remote.url


def open_images(images: str | Path, options: dict[str, Any] | None) -> LocalImages | RemoteImages:
    """The input folder a run reads."""
    where = location(images)
    if isinstance(where, Path):
        return LocalImages(where)
    return RemoteImages(Remote(where, dict(options or {})))


# --- the output folder -----------------------------------------------------------------------


class LocalOutput:
    """A local output folder: atomic renames, as a plain run writes."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.name: str | Path = out

    def write_labels(self, rel: str, labels: np.ndarray) -> None:
        """Write a label PNG atomically."""
        write_label_png(self.out / rel, labels)

    def write_preview(self, rel: str, rgb: np.ndarray, instances: Instances) -> None:
        """Write a preview JPEG atomically."""
        write_preview(self.out / rel, rgb, instances, instances.names)

    def write_json(self, rel: str, data: Any) -> None:
        """Write one JSON file atomically."""
        atomic_write_json(self.out / rel, data)

    def exists(self, rel: str) -> bool:
        """Whether the file is there."""
        return (self.out / rel).is_file()

    def remove(self, rel: str) -> None:
        """Delete one file, if it is there."""
        (self.out / rel).unlink(missing_ok=True)

    @contextlib.contextmanager
    def staged(self, rel: str) -> Iterator[Path]:
        """Where a writer that makes its own atomic file puts `rel`: the final path itself."""
        yield self.out / rel

    def inside(self, images: LocalImages | RemoteImages) -> list[Any]:
        """What a scan of the input folder leaves out: this folder and what a run writes."""
        from autolabel.io.run_folder import OUTPUT_NAMES

        return [self.out, *(self.out / name for name in OUTPUT_NAMES)]


class RemoteOutput:
    """An output prefix in an object store: each object written once, whole."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.name: str | Path = remote.url

    def write_labels(self, rel: str, labels: np.ndarray) -> None:
        """Write a label PNG as one object."""
        self.remote.write(rel, label_png_bytes(labels))

    def write_preview(self, rel: str, rgb: np.ndarray, instances: Instances) -> None:
        """Write a preview JPEG as one object."""
        self.remote.write(rel, preview_bytes(rgb, instances, instances.names))

    def write_json(self, rel: str, data: Any) -> None:
        """Write one JSON object whole."""
        self.remote.write(rel, json_text(data).encode("utf-8"))

    def exists(self, rel: str) -> bool:
        """Whether the object is there."""
        return self.remote.exists(rel)

    def remove(self, rel: str) -> None:
        """Delete one object, if it is there."""
        self.remote.delete(rel)

    @contextlib.contextmanager
    def staged(self, rel: str) -> Iterator[Path]:
        """A local file to write `rel` into; uploaded whole once the writer has finished."""
        with tempfile.TemporaryDirectory(prefix="autolabel-") as tmp:
            path = Path(tmp) / PurePosixPath(rel).name
            yield path
            self.remote.fs.put_file(str(path), self.remote.key(rel))

    def upload(self, folder: Path, names: Iterable[str]) -> None:
        """Copy files and folders of a local folder to the same names under this prefix, each
        file as one whole object."""
        for name in names:
            path = folder / name
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                self.remote.fs.put_file(
                    str(file), self.remote.key(file.relative_to(folder).as_posix())
                )

    def inside(self, images: LocalImages | RemoteImages) -> list[str]:
        """The prefix of this folder relative to the input prefix, when it lies inside it."""
        if isinstance(images, RemoteImages) and self.remote.url.startswith(images.remote.url + "/"):
            return [self.remote.url[len(images.remote.url) + 1 :]]
        return []


def open_output(out: str | Path, options: dict[str, Any] | None) -> LocalOutput | RemoteOutput:
    """The output folder a run writes."""
    where = location(out)
    if isinstance(where, Path):
        return LocalOutput(where)
    return RemoteOutput(Remote(where, dict(options or {})))


@contextlib.contextmanager
def local_run(
    out: str | Path, options: dict[str, Any] | None = None, previews: bool = False
) -> Iterator[Path]:
    """A run folder to read: the folder itself, or a temporary local copy of a run in object
    storage (run.json, annotations.json, manifest.jsonl, masks/ and, if asked, previews/) for as
    long as it is used."""
    where = location(out)
    if isinstance(where, Path):
        yield where
        return
    remote = Remote(where, dict(options or {}))
    remote.check()
    folders = ("masks/", "previews/") if previews else ("masks/",)
    with tempfile.TemporaryDirectory(prefix="autolabel-run-") as tmp:
        for rel, _ in remote.listing():
            if rel in ("run.json", "annotations.json", "manifest.jsonl") or rel.startswith(folders):
                target = Path(tmp, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                remote.fs.get_file(remote.key(rel), str(target))
        yield Path(tmp)
