"""Write toy scenes as a dataset folder: images/, masks/ (class-id PNGs), instances.json (COCO
instance ground truth, RLE, category ids as the lines of vocab.txt) and vocab.txt."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from autolabel.errors import UsageError
from autolabel.instances import Instance
from autolabel.io.atomic import atomic_write_bytes, atomic_write_text
from autolabel.io.coco import write_coco
from autolabel.io.png import write_label_png
from autolabel.toyworld.scenes import BACKGROUND_WORDS, CLASSES, make_scene
from autolabel.vocab import BACKGROUND_DIRECTIVE

MAX_SCENES = 1_000_000


def vocab_text() -> str:
    """The toy vocabulary file: one class a line in class-id order, then the background words."""
    return "\n".join([*CLASSES, f"{BACKGROUND_DIRECTIVE} {', '.join(BACKGROUND_WORDS)}"]) + "\n"


def write_dataset(out: Path, count: int, seed: int, size: int, overwrite: bool = False) -> int:
    """Generate scenes 0..count-1 of `seed` into out/; returns the number written."""
    if not 1 <= count <= MAX_SCENES:
        raise UsageError(f"--n {count}: give between 1 and {MAX_SCENES} scenes")
    if not 32 <= size <= 4096:
        raise UsageError(f"--size {size}: give a side between 32 and 4096 pixels")
    for sub in ("images", "masks"):
        folder = out / sub
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise UsageError(f"{folder} is not empty; choose another folder or pass --overwrite")
    width = max(5, len(str(count - 1)))
    records = []
    for index in range(count):
        scene = make_scene(seed, index, size)
        name = f"{index:0{width}d}.png"
        buffer = io.BytesIO()
        Image.fromarray(scene.image).save(buffer, format="PNG")
        atomic_write_bytes(out / "images" / name, buffer.getvalue())
        write_label_png(out / "masks" / name, scene.labels)
        instances = [
            Instance.from_mask(obj.class_id, mask).to_dict()
            for obj, mask in zip(scene.objects, scene.masks, strict=True)
        ]
        records.append({"file": name, "width": size, "height": size, "instances": instances})
    write_coco(out / "instances.json", list(CLASSES), lambda: iter(records), {"seed": seed})
    atomic_write_text(out / "vocab.txt", vocab_text())
    return count
