"""Quality floors of the bundled toy model and of each method on toy scenes never trained on.

The scenes are exact ground truth and everything is deterministic, so these tests pin what the
methods achieve with real (toy) weights rather than shapes alone. Floors sit slightly below
the values measured when the weights were trained (see MEASURED); a change that breaks
localisation, presence or the runner/eval plumbing drops below them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autolabel.models.clip import load_clip
from autolabel.toyworld.quality import make_scenes, score
from autolabel.toyworld.readout import presence_scores, toy_vocabulary
from autolabel.toyworld.scenes import make_scene

SEED = 4242  # the toy model was trained on seed 0
SCENES = 24
# Measured on these 24 scenes (CPU, torch 2.15, the shipped toy.pt, bundled toy recipes), and
# the floors pinned a little below them. The targets: car mIoU >= 0.6 and presence
# F1 >= 0.9, fast mIoU >= 0.5; both floors sit at or above them. car does not beat fast on
# presence here (the README's toy-world section says why). Re-measured when scenes gained
# touching same-class twins (issue 13; before: raw 0.840 / 1.000, raw-naclip 0.864 / 1.000,
# fast 0.861 / 1.000, car 0.830 / 0.952).
MEASURED = {
    "raw": {"miou": 0.839, "f1": 0.985},
    "raw-naclip": {"miou": 0.857, "f1": 0.992},
    "fast": {"miou": 0.855, "f1": 0.985},
    "car": {"miou": 0.838, "f1": 0.961},
}
FLOORS = {
    "raw": {"miou": 0.80, "f1": 0.95},
    "raw-naclip": {"miou": 0.82, "f1": 0.95},
    "fast": {"miou": 0.82, "f1": 0.95},
    "car": {"miou": 0.78, "f1": 0.90},
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("toy") / "scenes", SCENES, SEED)


def test_toy_weights_load_through_open_clip_and_know_the_classes() -> None:
    """load_clip('toy') is open_clip's own path; image-level scores rank present classes first."""
    clip = load_clip("toy")
    vocab = toy_vocabulary()
    scenes = [make_scene(SEED, i) for i in range(SCENES)]
    scores = presence_scores(clip, [s.image for s in scenes], vocab)
    hits = 0
    for s, row in zip(scenes, scores, strict=True):
        top = set((np.argsort(-row)[: len(s.present)] + 1).tolist())
        hits += len(top & set(s.present)) / len(s.present)
    # Measured 0.806 with the shipped weights (0.78 on 300 scenes of seed 999): the image-level
    # ranking is weaker than the dense read-out (presence F1 1.0); the cause was not measured.
    assert hits / SCENES > 0.75


def test_load_clip_returns_exactly_the_shipped_fp16_weights() -> None:
    from autolabel.models.clip import TOY_DIR

    path = TOY_DIR / "toy.pt"
    assert path.stat().st_size < 12_000_000
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    model = load_clip("toy").model
    assert set(model.state_dict()) == set(state)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name].float()), name


@pytest.mark.parametrize("method", list(FLOORS))
def test_method_quality_on_unseen_scenes(method: str, scenes: Path, tmp_path: Path) -> None:
    result = score(method, scenes, tmp_path / method)
    floor = FLOORS[method]
    assert result["miou"] >= floor["miou"], (method, result["miou"])
    assert result["presence"]["f1"] >= floor["f1"], (method, result["presence"])


# CaR + SAM with the toy SAM (issue 13), on scenes of a seed no toy model was trained on. SAM
# splits touching same-class pairs and raises mask AP, and keeps mIoU within 0.01 of the CRF.
# These floors pin what the SAM stage gives today, a little below the measured values.
SAM_SEED = 4243
SAM_SCENES = 8
# Share of ground-truth objects with a toy-SAM automatic mask at IoU >= 0.7 (toy recipes'
# generator settings), measured on these 8 scenes: 21 of 21 (11 of 21 with the SAM trained with
# a frozen image encoder).
SAM_RECALL = {"measured": 21 / 21, "floor": 0.9}
# The first 12 scenes of SAM_SEED (6 touching same-class pairs), --refine crf+sam: mask AP
# against the connected components of the same run's label map, pairs split, and mIoU against
# --refine crf. Measured: car AP 0.721 vs 0.644, 5 of 6 split, mIoU 0.780 vs 0.787; fast AP
# 0.849 vs 0.773, 4 of 6, mIoU 0.946 vs 0.943. Before the method's label decided the pixels two
# classes' masks claim (and with car's iom_thres 0.7): car mIoU 0.766; with the coarse toy SAM,
# before it was sharpened: car AP 0.667 vs 0.600, 5 of 6, mIoU 0.747. The 40-scene figures are
# in the README.
SAM_RUN_SCENES = 12
SAM_RUN = {
    "car": {"ap_gain": 0.06, "split": 0.8, "miou_loss": 0.015},
    "fast": {"ap_gain": 0.06, "split": 0.6, "miou_loss": 0.01},
}


@pytest.fixture(scope="module")
def sam_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("toy-sam") / "scenes", SAM_SCENES, SAM_SEED)


def test_toy_sam_masks_find_the_objects(sam_scenes: Path) -> None:
    from autolabel.config import load_recipe
    from autolabel.models.sam import load_sam
    from autolabel.refine.sam import automatic_masks
    from autolabel.refine.settings import SamSettings

    sam = load_sam("toy", "cpu")
    assert sam.kind == "sam" and type(sam.model).__name__ == "SamModel"
    settings = SamSettings(**load_recipe("toy-fast").sam)
    found = total = 0
    for index in range(SAM_SCENES):
        scene = make_scene(SAM_SEED, index)
        masks, _ = automatic_masks(sam, scene.image, settings)
        for truth in scene.masks:
            ious = [(m & truth).sum() / (m | truth).sum() for m in masks]
            found += max(ious, default=0.0) >= 0.7
            total += 1
    assert found / total >= SAM_RECALL["floor"], (found, total)


@pytest.mark.parametrize("method", sorted(SAM_RUN))
def test_crf_sam_splits_touching_pairs_and_raises_mask_ap(method: str, tmp_path: Path) -> None:
    floors = SAM_RUN[method]
    scenes = make_scenes(tmp_path / "scenes", SAM_RUN_SCENES, SAM_SEED)
    crf = score(method, scenes, tmp_path / "crf", refine="crf")
    sam = score(method, scenes, tmp_path / "sam", refine="crf+sam")
    assert sam["split"]["pairs"] == 6 and crf["split"]["split"] == 0
    assert sam["split"]["fraction"] >= floors["split"], sam["split"]
    gain = sam["instances"]["ap"] - sam["components"]["ap"]
    assert gain >= floors["ap_gain"], (sam["instances"]["ap"], sam["components"]["ap"])
    assert sam["miou"] >= crf["miou"] - floors["miou_loss"], (sam["miou"], crf["miou"])
