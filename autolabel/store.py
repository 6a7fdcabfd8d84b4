"""The run's on-disk state: one JSON line per finished image, appended and fsynced as produced.

A crash loses at most the images in flight; a torn last line is cut off on reopening. Final
outputs (annotations.json, manifest.jsonl) are assembled from these records by streaming, so
memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autolabel.errors import UsageError
from autolabel.writers.atomic import atomic_write_json

STATE_DIR = ".autolabel"
# Files and folders a run writes; --overwrite removes exactly these and nothing else.
OUTPUT_NAMES = ("annotations.json", "manifest.jsonl", "run.json", "masks", "previews", STATE_DIR)


class RunStore:
    """Append-only per-image records plus the identity of the run that wrote them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out / STATE_DIR
        self.records_path = self.dir / "records.jsonl"
        self.state_path = self.dir / "state.json"
        self._handle = None

    def open(self, identity: dict[str, Any], *, resume: bool, overwrite: bool) -> set[str]:
        """Prepare the folder for this run; returns the relative paths already finished.

        A folder written with another vocabulary/method/settings is refused unless overwrite.
        """
        previous = self._read_state()
        if previous is not None and previous != identity and not overwrite:
            changed = sorted(k for k in identity if previous.get(k) != identity.get(k))
            raise UsageError(
                f"{self.out} holds a run with a different {', '.join(changed)}; "
                "use another --out folder, or --overwrite to replace that run"
            )
        if overwrite or not resume or (previous is not None and previous != identity):
            self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.state_path, identity)
        self._truncate_torn_line()
        done = {rec["file"] for rec in self._scan()}
        self._handle = open(self.records_path, "a", encoding="utf-8")  # noqa: SIM115
        return done

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
        """Close the records file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def sorted_records(self, keep: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """Records ordered by relative path, one in memory at a time (offsets are indexed)."""
        index = sorted(
            (rec["file"], offset)
            for offset, rec in self._scan(with_offsets=True)
            if keep is None or rec["file"] in keep
        )
        seen: set[str] = set()
        with open(self.records_path, encoding="utf-8") as handle:
            for rel, offset in index:
                if rel in seen:  # an image redone after a crash: the first record wins
                    continue
                seen.add(rel)
                handle.seek(offset)
                yield json.loads(handle.readline())

    def _scan(self, with_offsets: bool = False) -> Iterator[Any]:
        if not self.records_path.exists():
            return
        with open(self.records_path, "rb") as handle:
            offset = handle.tell()
            for line in iter(handle.readline, b""):
                rec = json.loads(line)
                yield (offset, rec) if with_offsets else rec
                offset = handle.tell()

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _truncate_torn_line(self) -> None:
        """Cut a last line that a crash left without its newline (or unparseable)."""
        if not self.records_path.exists():
            return
        with open(self.records_path, "rb+") as handle:
            good = 0
            for line in iter(handle.readline, b""):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn line")
                    json.loads(line)
                except ValueError:
                    break
                good += len(line)
            handle.truncate(good)
