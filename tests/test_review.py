"""Review priority (autolabel.review): its signals, and that it ranks toy scenes by their error.

The quality test runs each method through the runner on toy scenes never used elsewhere, reads
each image's priority back from manifest.jsonl and scores its mask against the exact ground
truth. Floors sit slightly below the values measured (see MEASURED).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from autolabel import review
from autolabel.instances import Instance, Instances
from autolabel.methods.base import SegResult

SEED = 6161  # the design was chosen on seed 5150; neither (nor 7373) is used elsewhere
SCENES = 40
WRONG_MIOU = 0.8  # an image is wrongly labelled when its mIoU is below this
TOP = 0.2  # the share of images reviewed first
# Measured with the shipped toy.pt and the bundled toy recipes (CPU): these 40 scenes (this
# test), and more for the record: Spearman(priority, 1 - mIoU) / lift of the top 20% (wrong).
#   fast: seed 6161 100 scenes 0.82 / 3.46 (13%); 7373 100: 0.79 / 5.00 (8%);
#         5150 100: 0.77 / 4.38 (8%, the seed the design was chosen on)
#   car:  seed 6161 100 scenes 0.72 / 2.57 (37%); 7373 100: 0.86 / 2.74 (31%);
#         5150 100: 0.83 / 2.58 (31%, design seed)
# (toy scenes with the same-class twins of issue 13). Before the smallest-class signal, car's
# first 40 scenes of 6161 (its hardest slice: CaR is often confidently wrong there) gave
# 0.68 / 1.79 (before the twins); the signal's SMALL_CLASS_SHARE was chosen on seed 5150
# (0.01-0.05 all lifted it; 0.02 was the best there).
MEASURED = {
    "fast": {"spearman": 0.861, "lift": 3.33},
    "car": {"spearman": 0.710, "lift": 2.5},
}
FLOORS = {
    "fast": {"spearman": 0.75, "lift": 3.0},
    "car": {"spearman": 0.65, "lift": 2.0},
}


def image_miou(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction, background included."""
    classes = np.union1d(np.unique(truth), np.unique(predicted))
    ious = [
        ((truth == c) & (predicted == c)).sum() / ((truth == c) | (predicted == c)).sum()
        for c in classes
    ]
    return float(np.mean(ious))


def lift(priorities: np.ndarray, wrong: np.ndarray, top: float = TOP) -> float:
    """Share of wrong images among the top `top` by priority, over their share in all images."""
    count = max(1, round(top * len(priorities)))
    first = np.argsort(-priorities, kind="stable")[:count]
    return float(wrong[first].mean() / wrong.mean())


def measure(method: str, scenes: Path, out: Path) -> dict[str, float]:
    """Run a method on toy scenes; Spearman(priority, 1 - mIoU) and the top-20% lift."""
    from autolabel.toyworld.quality import score

    score(method, scenes, out)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    priorities, errors = [], []
    for row in rows:
        assert row["status"] == "ok", row
        truth = np.asarray(Image.open(scenes / "masks" / Path(row["file"]).name))
        predicted = np.asarray(Image.open(out / row["mask"]))
        priorities.append(row["priority"])
        errors.append(1.0 - image_miou(truth, predicted))
    p, e = np.array(priorities, dtype=float), np.array(errors)
    wrong = e > 1.0 - WRONG_MIOU
    return {
        "scenes": len(rows),
        "spearman": float(spearmanr(p, e)[0]),
        "lift": lift(p, wrong),
        "wrong": float(wrong.mean()),
    }


# --- the signals --------------------------------------------------------------------------


def _instances(*regions: tuple[int, float], size: tuple[int, int] = (8, 8)) -> Instances:
    """Instances of (category id, score) regions: one pixel row each."""
    items = []
    for row, (category, score) in enumerate(regions):
        mask = np.zeros(size, dtype=bool)
        mask[row] = True
        items.append(Instance.from_mask(category, mask, score))
    return Instances(size, ["a", "b", "c"], items)


def test_confident_clean_image_has_low_priority() -> None:
    probs = np.zeros((4, 8, 8), dtype=np.float32)
    probs[0] = 1.0
    result = SegResult(np.zeros((8, 8), np.int32), np.zeros(3), probs)
    signals = review.signals(result, _instances((1, 0.99), (2, 0.95)))
    assert signals.ambiguity == 0.0
    assert signals.fragments == 0.0
    assert signals.weakest == pytest.approx(0.05)
    assert review.priority(result, _instances((1, 0.99), (2, 0.95))) == pytest.approx(0.05)


def test_each_signal_raises_priority() -> None:
    calm = review.Signals(0.1, 0.1, 0.0).priority
    assert review.Signals(0.6, 0.1, 0.0).priority > calm
    assert review.Signals(0.1, 0.6, 0.0).priority > calm
    assert review.Signals(0.1, 0.1, 0.5).priority > calm
    assert review.Signals(1.0, 0.0, 0.0).priority == 1.0
    assert review.Signals().priority == 0.0


def test_ambiguity_counts_near_ties_between_best_and_second_best() -> None:
    probs = np.zeros((3, 10, 10), dtype=np.float32)
    probs[1] = 0.9
    probs[2] = 0.1
    probs[1, 0, :5] = 0.5  # five near-ties (0.5 vs 0.45) out of 100 pixels
    probs[0, 0, :5] = 0.45
    assert review.ambiguity(probs) == pytest.approx(0.05 / review.AMBIGUOUS_SHARE)
    probs[2, :3] = 0.85  # 30 % near-ties: full doubt
    assert review.ambiguity(probs) == 1.0
    assert review.ambiguity(None) == 0.0


def test_weakest_instance_and_fragments() -> None:
    assert review.weakest(_instances((1, 0.9), (2, 0.4))) == pytest.approx(0.6)
    assert review.weakest(_instances()) == 1.0  # nothing found: look at it
    assert review.fragments(_instances((1, 0.9), (1, 0.9), (2, 0.9), (3, 0.9))) == 0.25
    assert review.fragments(_instances()) == 0.0


def test_smallest_class_share_raises_doubt() -> None:
    def region(category: int, rows: slice, size: tuple[int, int] = (100, 100)) -> Instance:
        mask = np.zeros(size, dtype=bool)
        mask[rows, :10] = True
        return Instance.from_mask(category, mask, 0.9)

    names = ["a", "b", "c"]
    # 10 rows x 10 columns = 1 % of the image: half the SMALL_CLASS_SHARE (2 %).
    half = Instances((100, 100), names, [region(1, slice(0, 50)), region(2, slice(60, 70))])
    assert review.smallest_class(half) == pytest.approx(0.5)
    # A class's regions count together: two 1 % regions of class 2 make 2 %, no doubt left.
    whole = Instances((100, 100), names, [*half.items, region(2, slice(80, 90))])
    assert review.smallest_class(whole) == 0.0
    speck = np.zeros((100, 100), dtype=bool)
    speck[5, 5] = True  # one pixel: 0.01 % of the image, almost full doubt
    one_pixel = Instances((100, 100), names, [Instance.from_mask(3, speck, 0.9)])
    assert review.smallest_class(one_pixel) == pytest.approx(1 - 0.0001 / review.SMALL_CLASS_SHARE)
    assert review.smallest_class(Instances((100, 100), names)) == 0.0
    assert review.Signals(smallest=0.5).priority == 0.5


def test_broken_probabilities_count_as_doubt() -> None:
    probs = np.full((3, 4, 4), np.nan, dtype=np.float32)
    result = SegResult(np.zeros((4, 4), np.int32), np.zeros(2), probs)
    priority = review.priority(result, _instances((1, 0.9), size=(4, 4)))
    assert 0.0 <= priority <= 1.0


def test_image_miou_and_lift_helpers() -> None:
    truth = np.array([[0, 1], [1, 1]])
    assert image_miou(truth, truth) == 1.0
    assert image_miou(truth, np.array([[0, 1], [2, 1]])) == pytest.approx((1 + 2 / 3 + 0) / 3)
    wrong = np.array([True, False, False, False, False, True, False, False, False, False])
    assert lift(np.arange(10.0)[::-1], wrong) == pytest.approx(0.5 / 0.2)


# --- where it travels ------------------------------------------------------------------------


def test_run_writes_priority_to_manifest_and_coco_images(tiny_run: Path) -> None:
    from autolabel.io.run_folder import read_run

    coco = json.loads((tiny_run / "annotations.json").read_text())
    rows = [json.loads(line) for line in (tiny_run / "manifest.jsonl").read_text().splitlines()]
    by_file = {row["file"]: row["priority"] for row in rows}
    assert len(coco["images"]) == 3
    for image in coco["images"]:
        assert set(image) == {"id", "file_name", "width", "height", "priority"}
        assert 0.0 <= image["priority"] <= 1.0
        assert by_file[image["file_name"]] == image["priority"]
    run = read_run(tiny_run)
    assert [im.priority for im in run.images] == [im["priority"] for im in coco["images"]]
    # The instances read back carry it too, as Labeler results do (push, export use them).
    assert [im.instances.priority for im in run.images] == [im.priority for im in run.images]


def test_older_runs_without_priority_read_back_as_none(tiny_run: Path) -> None:
    from autolabel.io.run_folder import read_run

    path = tiny_run / "annotations.json"
    coco = json.loads(path.read_text())
    for image in coco["images"]:
        del image["priority"]
    coco["images"][0]["priority"] = "high"  # hand-edited: not a number, so no priority
    path.write_text(json.dumps(coco))
    assert [im.priority for im in read_run(tiny_run).images] == [None, None, None]


def test_coco_records_without_priority_keep_the_image_fields(tmp_path: Path) -> None:
    from autolabel.io.coco import write_coco

    records = [{"file": "a.png", "width": 4, "height": 3, "instances": []}]
    write_coco(tmp_path / "a.json", ["x"], lambda: iter(records))
    (image,) = json.loads((tmp_path / "a.json").read_text())["images"]
    assert image == {"id": 1, "file_name": "a.png", "width": 4, "height": 3}


def test_labeler_result_carries_priority(image_folder: Path, vocab_file: Path, tiny_recipe: Path):
    from autolabel.api import Labeler

    labeler = Labeler(vocab_file, recipe=str(tiny_recipe), device="cpu", min_area=0)
    image = sorted(image_folder.rglob("*.png"))[0]
    instances = labeler.label(image)
    assert instances.priority is not None and 0.0 <= instances.priority <= 1.0
    assert labeler.label(image).priority == instances.priority  # deterministic


# --- on the toy world ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autolabel.toyworld.quality import make_scenes

    return make_scenes(tmp_path_factory.mktemp("toy") / "scenes", SCENES, SEED)


@pytest.mark.parametrize("method", list(FLOORS))
def test_priority_ranks_toy_scenes_by_error(method: str, scenes: Path, tmp_path: Path) -> None:
    result = measure(method, scenes, tmp_path / method)
    floor = FLOORS[method]
    assert result["spearman"] >= floor["spearman"], (method, result)
    assert result["lift"] >= floor["lift"], (method, result)
