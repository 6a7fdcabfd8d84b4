"""What the SAM stage (--refine sam) costs per image on CPU: the image embedding (once per
image), the point-grid decoding with the generator's filters and NMS, and CaR's matching.

Two cases:
- toy: the bundled toy SAM on a 128 px toy scene, with the toy recipes' SAM settings (16 x 16 grid);
- photo: a random SamModel with SAM ViT-B's architecture (transformers' default SamConfig:
  12 blocks, width 768, 1024 px input) on a photo, with the official generator settings
  (64 x 64 grid, CaR's configs); random weights cost what trained ones cost.

    python benchmarks/sam_cost.py [--photo /work/shared/data/real/coco10/imgs/5.jpg]
        [--photo-points 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autolabel.config import load_recipe
from autolabel.methods.base import SegResult
from autolabel.models.sam import LoadedSam, load_sam
from autolabel.refine.sam import automatic_masks, refine_with_sam
from autolabel.refine.settings import SamSettings
from autolabel.toyworld.scenes import make_scene


def measure(sam: LoadedSam, image: np.ndarray, settings: SamSettings, labels: np.ndarray) -> None:
    """Print the stage's cost on one image, split into embedding, decoding and matching."""
    calls: list[float] = []
    embed = sam.model.get_image_embeddings

    def timed(*args, **kwargs):  # time the embedding inside the whole stage
        start = time.perf_counter()
        out = embed(*args, **kwargs)
        calls.append(time.perf_counter() - start)
        return out

    sam.model.get_image_embeddings = timed
    start = time.perf_counter()
    masks, predicted = automatic_masks(sam, image, settings)
    generated = time.perf_counter() - start
    sam.model.get_image_embeddings = embed
    scores = np.ones(int(labels.max()), np.float32)
    start = time.perf_counter()
    refine_with_sam(SegResult(labels, scores), masks, predicted, settings)
    matched = time.perf_counter() - start
    points = settings.points_per_side**2
    print(
        f"  {image.shape[1]}x{image.shape[0]}, {points} points: "
        f"embedding {calls[0]:.2f} s ({len(calls)} call), "
        f"decoding + filters + NMS {generated - calls[0]:.2f} s, matching {matched:.3f} s, "
        f"total {generated + matched:.2f} s per image; {len(masks)} masks kept"
    )


def main() -> None:
    """Run both cases and print their costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--photo", type=Path, default=Path("/work/shared/data/real/coco10/imgs/5.jpg")
    )
    parser.add_argument(
        "--photo-points", type=int, default=64, help="points_per_side for the photo"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"toy SAM on a toy scene (threads {args.threads}):")
    scene = make_scene(4243, 0)
    toy = SamSettings(**load_recipe("toy").sam)
    measure(load_sam("toy", "cpu"), scene.image, toy, scene.labels.astype(np.int32))

    if not args.photo.is_file():
        print(f"photo case skipped: {args.photo} not found")
        return
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    photo = np.asarray(Image.open(args.photo).convert("RGB"))
    print(f"random ViT-B-sized SAM on {args.photo} (threads {args.threads}):")
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        SamModel(SamConfig()).save_pretrained(folder)
        SamProcessor(SamImageProcessor()).save_pretrained(folder)
        sam = load_sam(folder, "cpu")
        settings = SamSettings(
            model=folder,
            points_per_side=args.photo_points,
            # Random weights predict low IoUs: keep every mask so the matching sees a full set.
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
        labels = np.zeros(photo.shape[:2], np.int32)
        labels[
            photo.shape[0] // 4 : photo.shape[0] // 2, photo.shape[1] // 4 : -photo.shape[1] // 4
        ] = 1
        measure(sam, photo, settings, labels)


if __name__ == "__main__":
    main()
