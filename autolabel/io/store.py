"""The run's on-disk state: one JSON line per finished image, appended and fsynced as produced.

A crash loses at most the images in flight; a torn last line is cut off on reopening. Final
outputs (annotations.json, manifest.jsonl) are assembled from these records by streaming, so
memory does not grow with the number of images (only a path and an offset per image are kept).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from autolabel.errors import UsageError
from autolabel.io.atomic import atomic_write_json
from autolabel.io.run_folder import OUTPUT_NAMES, STATE_DIR, TEMP_PREFIXES, TEMP_TREES

if TYPE_CHECKING:
    from autolabel.io.storage import Remote

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are the user's care there
    fcntl = None  # type: ignore[assignment]

# What the identity keys mean, for the message that refuses a changed run.
IDENTITY_WORDS = {
    "vocabulary": "vocabulary (classes, synonyms or background words)",
    "method": "method",
    "recipe": "recipe",
    "settings": "method settings or model",
    "max_side": "--max-side",
    "min_area": "--min-area",
}


class RunStore:
    """Append-only per-image records plus the identity of the run that wrote them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out / STATE_DIR
        self.records_path = self.dir / "records.jsonl"
        self.state_path = self.dir / "state.json"
        self._handle: IO[str] | None = None
        self._lock_fd: int | None = None

    def check(
        self, identity: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> dict[str, dict[str, Any]]:
        """Read-only: refuse a folder this run may not use; return the records a resume keeps.

        A folder written with another vocabulary/method/settings, or holding outputs autolabel
        did not write, is refused unless overwrite. Nothing is created or changed, so a run that
        then fails to start (weights offline, a bad device) leaves the folder as it was.
        """
        identity = _plain(identity)
        previous = self._read_state()
        if previous is None:
            foreign = [n for n in OUTPUT_NAMES if self._has(n)]
            if foreign and not overwrite:
                raise UsageError(
                    f"{self.out} already holds {', '.join(foreign)} that no autolabel run "
                    "recorded; use another --out folder, or --overwrite to replace them"
                )
        elif previous != identity and not overwrite:
            changed = [IDENTITY_WORDS.get(k, k) for k in identity if previous.get(k) != identity[k]]
            changed = changed or ["configuration (written by another autolabel version)"]
            raise UsageError(
                f"{self.out} holds a run made with a different {', '.join(changed)}; "
                "use another --out folder, or --overwrite to replace that run"
            )
        if overwrite or not resume or previous != identity:
            return {}
        finished: dict[str, dict[str, Any]] = {}
        for _, rec in self._scan():
            if rec["status"] == "ok":
                finished[rec["file"]] = {k: rec.get(k) for k in ("stamp", "mask")}
            else:
                finished.pop(rec["file"], None)  # a later failure replaces an earlier success
        return finished

    def open(
        self, identity: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> dict[str, dict[str, Any]]:
        """Lock and prepare the folder for this run (checks as `check` does); returns the same.

        Without resume, or with overwrite, earlier records and outputs are removed.
        """
        self._lock()
        try:
            previous = self._read_state()
            finished = self.check(identity, resume=resume, overwrite=overwrite)
            if overwrite or not resume or previous != _plain(identity):
                self.clear()
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.state_path, _plain(identity))
            self._truncate_torn_line()
            self._remove_temp_files()
            self._handle = open(self.records_path, "a", encoding="utf-8")  # noqa: SIM115
            return finished
        except BaseException:
            self.close()
            raise

    def clear(self) -> None:
        """Remove everything a previous run wrote in the folder (and only that)."""
        for name in OUTPUT_NAMES:
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def append(self, record: dict[str, Any]) -> None:
        """Persist one image's record durably before moving on."""
        assert self._handle is not None, "open() first"
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the records file and release the folder lock."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def sorted_records(self, keep: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """The latest record of each file, ordered by path, one in memory at a time."""
        latest: dict[str, int] = {}
        for offset, rec in self._scan():
            if keep is None or rec["file"] in keep:
                latest[rec["file"]] = offset
        with open(self.records_path, "rb") as handle:
            for rel in sorted(latest):
                handle.seek(latest[rel])
                yield json.loads(handle.readline())

    def _scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(byte offset, record) for every whole line of the records file."""
        for start, _, record in self._whole_lines():
            yield start, record

    def _whole_lines(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(start, end, record) of each line up to the first that a crash left torn."""
        if not self.records_path.exists():
            return
        with open(self.records_path, "rb") as handle:
            offset = 0
            for line in handle:
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if record is None:
                    return
                yield offset, offset + len(line), record
                offset += len(line)

    def _lock(self) -> None:
        """Hold an exclusive lock on the output folder so two runs never write into it at once."""
        if fcntl is None:
            return
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise UsageError(
                f"{self.out} is in use by another autolabel run; wait for it or use another --out"
            ) from exc
        self._lock_fd = fd

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _has(self, name: str) -> bool:
        return (self.out / name).exists()

    def _truncate_torn_line(self) -> None:
        """Cut a last line that a crash left without its newline (or unparseable)."""
        if not self.records_path.exists():
            return
        good = max((end for _, end, _ in self._whole_lines()), default=0)
        with open(self.records_path, "rb+") as handle:
            handle.truncate(good)

    def _remove_temp_files(self) -> None:
        """Delete the temp files of atomic writes that a killed run left half-written."""
        for name in os.listdir(self.out):
            if name.startswith(TEMP_PREFIXES) and name.endswith(".tmp"):
                os.unlink(self.out / name)
        for tree in TEMP_TREES:
            for parent, _, files in os.walk(self.out / tree):
                for name in files:
                    if name.startswith(".") and name.endswith(".tmp"):
                        os.unlink(os.path.join(parent, name))


class ObjectRunStore(RunStore):
    """The same records in an object store, which has no append: one object per image.

    `.autolabel/records/<file>.json` holds the latest record of each input file, written whole
    after the image's mask (and preview) exist, so a record always names outputs that exist.
    Object stores have no locks either: one run at a time per output prefix is the user's care.
    """

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.out = remote.url  # type: ignore[assignment]  # named in messages only
        self.records_prefix = f"{STATE_DIR}/records"
        self.state_name = f"{STATE_DIR}/state.json"

    def open(
        self, identity: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> dict[str, dict[str, Any]]:
        """Check as `check` does, clear what this run replaces, record the run's identity."""
        previous = self._read_state()
        finished = self.check(identity, resume=resume, overwrite=overwrite)
        if overwrite or not resume or previous != _plain(identity):
            self.clear()
        self.remote.write(self.state_name, json.dumps(_plain(identity)).encode("utf-8"))
        return finished

    def clear(self) -> None:
        """Remove every object a previous run wrote under the prefix (and only those)."""
        for name in OUTPUT_NAMES:
            self.remote.delete_tree(name)

    def append(self, record: dict[str, Any]) -> None:
        """Persist one image's record as its own object."""
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        self.remote.write(self._record_name(record["file"]), data)

    def close(self) -> None:
        """Nothing is held open."""

    def sorted_records(self, keep: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """The record of each file, ordered by path, one in memory at a time."""
        for rel in sorted(self._files()):
            if keep is None or rel in keep:
                yield json.loads(self.remote.read(self._record_name(rel)))

    def _scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, rel in enumerate(self._files()):
            yield i, json.loads(self.remote.read(self._record_name(rel)))

    def _files(self) -> list[str]:
        """The input files that have a record (names only: a path per image in memory)."""
        start, end = len(self.records_prefix) + 1, -len(".json")
        return [rel[start:end] for rel, _ in self.remote.listing(self.records_prefix)]

    def _record_name(self, rel: str) -> str:
        return f"{self.records_prefix}/{rel}.json"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.remote.read(self.state_name))
        except (OSError, ValueError):
            return None

    def _has(self, name: str) -> bool:
        return bool(self.remote.fs.exists(self.remote.key(name)))


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """The identity as it reads back from JSON (tuples become lists), so comparisons hold."""
    return json.loads(json.dumps(data))
