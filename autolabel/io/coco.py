"""COCO instance-segmentation JSON: written by streaming records (bounded memory), atomically;
read back by `read_coco`, the one parser of COCO files (run folders, tags, reviews)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolabel.errors import UsageError
from autolabel.instances import coco_annotation
from autolabel.io.atomic import atomic_open


def coco_categories(names: list[str]) -> list[dict[str, Any]]:
    """Categories with ids 1..K in vocabulary order."""
    return [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]


def write_coco(
    path: Path,
    names: list[str],
    records: Callable[[], Iterator[dict[str, Any]]],
    info: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """Write annotations.json from per-image records; returns (images, annotations) written.

    `records` is called twice (images, then annotations) and must yield the same successful
    image records in the same order each time: {"file", "width", "height", "instances": [...]},
    optionally "priority" (then written to the image record as it is).
    Image ids are 1..N in that order; annotation ids 1..M in image order.
    """
    counts = [0, 0]

    def images() -> Iterable[str]:
        for image_id, rec in enumerate(records(), 1):
            counts[0] = image_id
            image = {
                "id": image_id,
                "file_name": rec["file"],
                "width": rec["width"],
                "height": rec["height"],
            }
            if "priority" in rec:  # how likely the annotations need correction (autolabel.review)
                image["priority"] = rec["priority"]
            yield json.dumps(image, ensure_ascii=False)

    def annotations() -> Iterable[str]:
        ann_id = 0
        for image_id, rec in enumerate(records(), 1):
            for inst in rec["instances"]:
                ann_id += 1
                counts[1] = ann_id
                yield json.dumps(coco_annotation(inst, ann_id, image_id), ensure_ascii=False)

    with atomic_open(path, "w") as out:
        out.write("{\n")
        out.write(f'"info": {json.dumps(info or {}, ensure_ascii=False)},\n')
        out.write('"licenses": [],\n')
        out.write(f'"categories": {json.dumps(coco_categories(names), ensure_ascii=False)},\n')
        _write_array(out, "images", images())
        out.write(",\n")
        _write_array(out, "annotations", annotations())
        out.write("\n}\n")
    return counts[0], counts[1]


def _write_array(out: Any, key: str, items: Iterable[str]) -> None:
    out.write(f'"{key}": [')
    for i, item in enumerate(items):
        out.write(("\n" if i == 0 else ",\n") + item)
    out.write("\n]")


@dataclass
class CocoFile:
    """A parsed COCO file: categories by id, images in file order, annotations per image."""

    path: Path
    info: dict[str, Any]
    categories: list[dict[str, Any]]  # sorted by id; each has at least "id" and "name"
    images: list[dict[str, Any]]  # each has at least "id" and "file_name"
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its annotations, in file order

    @property
    def names(self) -> list[str]:
        """Category names in id order."""
        return [str(c["name"]) for c in self.categories]


def read_coco(path: Path, text: str | None = None, where: str | None = None) -> CocoFile:
    """Read and check a COCO file; every problem is a UsageError naming it.

    text: the file's content when the caller has read it already. where: how messages name
    the file (default: its path). Categories need "id" and "name", images "id" and
    "file_name", annotations "image_id" and "category_id" naming a listed image and category;
    a file without "annotations" has none. Other fields are kept as they are, unchecked.
    """
    where = where or str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError as exc:
            raise UsageError(f"{where}: missing") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where}: cannot read it ({exc})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: not a COCO annotation file (not JSON: {exc})") from exc
    try:
        return _parse_coco(path, data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: not a COCO annotation file ({exc})") from exc


def _parse_coco(path: Path, data: Any) -> CocoFile:
    if not isinstance(data, dict):
        raise TypeError(f"the top level is a JSON {type(data).__name__}, not an object")
    for key in ("categories", "images"):
        if key not in data:
            raise ValueError(f"no {key!r}")
    categories = _objects(data["categories"], "categories", ("id", "name"))
    categories = sorted(categories, key=lambda c: c["id"])
    category_ids = {c["id"] for c in categories}
    if len(category_ids) != len(categories):
        raise ValueError("two categories share an id")
    images = _objects(data["images"], "images", ("id", "file_name"))
    annotations: dict[int, list[dict[str, Any]]] = {}
    for image in images:
        if image["id"] in annotations:
            raise ValueError(f"image id {image['id']!r} appears twice")
        annotations[image["id"]] = []
    for ann in _objects(data.get("annotations", []), "annotations", ("image_id", "category_id")):
        if ann["image_id"] not in annotations:
            raise ValueError(f"an annotation names image id {ann['image_id']!r}, not in 'images'")
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"an annotation names category id {ann['category_id']!r}, not in 'categories'"
            )
        annotations[ann["image_id"]].append(ann)
    info = data.get("info")
    return CocoFile(path, info if isinstance(info, dict) else {}, categories, images, annotations)


def _objects(items: Any, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries of a top-level list, each an object with the given fields."""
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise TypeError(f"{key!r} is not a list of objects")
    for item in items:
        missing = [name for name in fields if name not in item]
        if missing:
            raise ValueError(f"an entry of {key!r} has no {', '.join(map(repr, missing))}")
    return items
