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


# CaR + SAM with the toy SAM (issue 13), on scenes of a seed neither toy model was trained on:
# instance mask AP of crf+sam against the connected-component instances of the CRF alone, the
# semantic mIoU cost of SAM, and the share of touching same-class pairs split into two
# instances. MEASURED_SAM on these SAM_SCENES scenes; the README has the 40-scene figures.
SAM_SEED = 4243
SAM_SCENES = 16
MEASURED_SAM = {
    "car": {"ap_crf": None, "ap_sam": None, "miou_crf": None, "miou_sam": None, "split": None},
    "fast": {"ap_crf": None, "ap_sam": None, "miou_crf": None, "miou_sam": None, "split": None},
}
SAM_FLOORS = {
    "car": {"ap_gain": None, "miou_drop": None, "split": None},
    "fast": {"ap_gain": None, "miou_drop": None, "split": None},
}


@pytest.fixture(scope="module")
def sam_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("toy-sam") / "scenes", SAM_SCENES, SAM_SEED)


@pytest.mark.parametrize("method", list(SAM_FLOORS))
def test_sam_splits_touching_objects_and_lifts_instance_ap(
    method: str, sam_scenes: Path, tmp_path: Path
) -> None:
    crf = score(method, sam_scenes, tmp_path / "crf", refine="crf")
    sam = score(method, sam_scenes, tmp_path / "sam", refine="crf+sam")
    floor = SAM_FLOORS[method]
    gain = sam["instances"]["ap"] - crf["instances"]["ap"]
    assert gain >= floor["ap_gain"], (method, crf["instances"]["ap"], sam["instances"]["ap"])
    assert sam["miou"] >= crf["miou"] - floor["miou_drop"], (method, crf["miou"], sam["miou"])
    assert sam["split"]["pairs"] > 0
    assert sam["split"]["fraction"] >= floor["split"], (method, sam["split"])
