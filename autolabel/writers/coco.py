"""COCO instance-segmentation JSON, written by streaming records (bounded memory), atomically."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from autolabel.writers.atomic import atomic_open


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
    image records in the same order each time: {"file", "width", "height", "instances": [...]}.
    Image ids are 1..N in that order; annotation ids 1..M in image order.
    """
    counts = [0, 0]

    def images() -> Iterable[str]:
        for image_id, rec in enumerate(records(), 1):
            counts[0] = image_id
            yield json.dumps(
                {
                    "id": image_id,
                    "file_name": rec["file"],
                    "width": rec["width"],
                    "height": rec["height"],
                },
                ensure_ascii=False,
            )

    def annotations() -> Iterable[str]:
        ann_id = 0
        for image_id, rec in enumerate(records(), 1):
            for inst in rec["instances"]:
                ann_id += 1
                counts[1] = ann_id
                yield json.dumps(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": inst["category_id"],
                        "segmentation": inst["segmentation"],
                        "area": inst["area"],
                        "bbox": inst["bbox"],
                        "iscrowd": 0,
                        "score": round(float(inst["score"]), 6),
                    },
                    ensure_ascii=False,
                )

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
