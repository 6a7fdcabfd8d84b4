"""The layout of a run's output folder: what `autolabel run` writes where, in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import UsageError
from autolabel.instances import Instances
from autolabel.io.coco import read_coco
from autolabel.vocab import Vocabulary

STATE_DIR = ".autolabel"
# Files and folders a run writes; --overwrite removes exactly these and nothing else.
OUTPUT_NAMES = (
    "annotations.json", "manifest.jsonl", "run.json", "report.html",
    "masks", "previews", "report", STATE_DIR,
)  # fmt: skip
# Where a killed run can leave the temp files of atomic writes (".<name>.<random>.tmp") behind.
TEMP_TREES = ("masks", "previews", "report")
TEMP_PREFIXES = tuple(
    f".{n}." for n in ("annotations.json", "manifest.jsonl", "run.json", "report.html")
)


def mask_name(key: str) -> str:
    """Where the semantic PNG of the image with this output key goes, relative to the folder."""
    return f"masks/{key}.png"


def preview_name(mask: str) -> str:
    """Where the preview JPEG that goes with a mask goes, relative to the folder."""
    return f"previews/{mask[len('masks/') : -len('.png')]}.jpg"


# --- reading a finished run back (push to Label Studio and FiftyOne) ------------------------


@dataclass(frozen=True)
class RunImage:
    """One labelled image of a run folder: its file (relative to images_root), size, instances."""

    file_name: str
    width: int
    height: int
    names: list[str] = field(repr=False)
    annotations: list[dict[str, Any]] = field(repr=False)  # its COCO annotations
    priority: float | None = None  # its review priority (autolabel.review), when the run wrote one

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    @property
    def instances(self) -> Instances:
        """Its instances, made afresh on each access: decoded masks go when the caller is done
        with them, so pushing a long run does not keep every mask in memory."""
        instances = Instances.from_coco(self.annotations, self.size, self.names)
        instances.priority = self.priority
        return instances


@dataclass
class RunFolder:
    """What `autolabel run` left in an output folder: run.json and annotations.json."""

    out: Path
    info: dict[str, Any]  # run.json as written
    vocabulary: Vocabulary
    images_root: Path  # the labelled folder (absolute when the run wrote it)
    images: list[RunImage]

    @property
    def models(self) -> dict[str, Any]:
        """The loaded models' provenance (the segmenter's describe())."""
        models = self.info.get("models")
        return models if isinstance(models, dict) else {}

    def identity(self) -> dict[str, Any]:
        """The run's Labeler.identity(): the settings that shaped its masks."""
        config = self.info.get("config")
        config = config if isinstance(config, dict) else {}
        return {
            "vocabulary": self.vocabulary.fingerprint(),
            "method": self.info["method"],
            "recipe": self.info.get("recipe"),
            "settings": self.info.get("settings") or {},
            "max_side": config.get("max_side"),
            "min_area": config.get("min_area"),
        }


def read_run_info(out: Path) -> tuple[dict[str, Any], Vocabulary]:
    """run.json of an output folder and its vocabulary; problems are UsageErrors naming it."""
    path = out / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"{path}: missing; is {out} the output folder of `autolabel run`?"
        ) from exc
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 or not JSON
        raise UsageError(f"{path}: cannot read it as JSON ({exc})") from exc
    try:
        if not isinstance(info, dict):
            raise TypeError(f"a JSON {type(info).__name__}, not an object")
        for key in ("method", "vocabulary", "images_root"):
            if key not in info:
                raise KeyError(key)
        vocabulary = Vocabulary.from_dict(info["vocabulary"])
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UsageError(
            f"{path}: not the run.json of an `autolabel run` output folder ({reason})"
        ) from exc
    return info, vocabulary


def read_run(out: Path) -> RunFolder:
    """Read a run folder (run.json, annotations.json); problems are UsageErrors naming the file.

    The annotations must be those of the run's vocabulary (category k = class k), as the run
    writes them; every image's instances are checked here, so a push fails before it sends.
    """
    info, vocabulary = read_run_info(out)
    coco = read_coco(out / "annotations.json")
    names = vocabulary.names
    if coco.names != names or [c["id"] for c in coco.categories] != list(range(1, len(names) + 1)):
        raise UsageError(
            f"{coco.path}: its categories {coco.names} are not the classes of the vocabulary in "
            f"run.json {names}; is it the annotations.json the run wrote?"
        )
    images = []
    try:
        for record in coco.images:
            size = (int(record["height"]), int(record["width"]))
            annotations = coco.annotations[record["id"]]
            # Checked now, so that a broken annotation fails before anything is pushed.
            Instances.from_coco(annotations, size, names)
            priority = record.get("priority")
            if not isinstance(priority, int | float) or isinstance(priority, bool):
                priority = None  # absent (an older run), or not a number: no priority
            else:
                priority = float(priority)
            images.append(
                RunImage(str(record["file_name"]), size[1], size[0], names, annotations, priority)
            )
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise UsageError(
            f"{coco.path}: not the annotations.json of an `autolabel run` ({reason})"
        ) from exc
    return RunFolder(out, info, vocabulary, Path(str(info["images_root"])), images)
