"""Evaluation against ground-truth PNGs: hand-computed IoU, presence, ignore index, pairing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.evaluate import SegmentationScores, evaluate_run
from autolabel.io.png import write_label_png

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 0, 0],
        [2, 2, 0, 255],
    ]
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 1],
        [0, 2, 0, 0],
        [3, 3, 0, 1],
    ]
)


def test_iou_and_accuracy_match_a_hand_count() -> None:
    scores = SegmentationScores(num_classes=4, ignore_index=255)
    scores.add(PRED, GT)
    # 15 valid pixels (one is ignored).
    # background: gt 7 px, pred 7 px, both 6 -> 6 / 8
    # class 1:    gt 4, pred 5 (the ignored pixel does not count), both 4 -> 4 / 5
    # class 2:    gt 4, pred 1, both 1 -> 1 / 4
    # class 3:    gt 0, pred 2 -> 0 / 2
    iou = scores.iou()
    assert iou == pytest.approx([6 / 8, 4 / 5, 1 / 4, 0.0])
    summary = scores.summary(["one", "two", "three"])
    assert summary["miou"] == pytest.approx((6 / 8 + 4 / 5 + 1 / 4 + 0) / 4)
    assert summary["pixel_accuracy"] == pytest.approx(11 / 15)
    # Presence: truth {1, 2}, said {1, 2, 3} -> tp 2, fp 1, fn 0.
    presence = summary["presence"]
    assert (presence["tp"], presence["fp"], presence["fn"]) == (2, 1, 0)
    assert presence["precision"] == pytest.approx(2 / 3)
    assert presence["recall"] == 1.0
    assert presence["f1"] == pytest.approx(0.8)
    assert summary["classes"][3]["iou"] == 0.0 and summary["classes"][3]["fp"] == 1


def test_classes_absent_everywhere_do_not_count_in_miou() -> None:
    scores = SegmentationScores(num_classes=5, ignore_index=None)
    scores.add(np.array([[0, 1]]), np.array([[0, 1]]))
    assert scores.summary()["miou"] == 1.0
    assert scores.summary()["classes"][4]["iou"] is None


def test_accumulates_over_images_and_counts_missed_classes() -> None:
    scores = SegmentationScores(num_classes=3, ignore_index=255)
    scores.add(np.array([[1, 1]]), np.array([[1, 1]]))
    scores.add(np.array([[0, 0]]), np.array([[2, 0]]))
    summary = scores.summary()
    assert summary["images"] == 2
    assert summary["presence"]["fn"] == 1 and summary["presence"]["recall"] == 0.5
    assert summary["classes"][2]["iou"] == 0.0


def test_out_of_range_ids_are_reported() -> None:
    scores = SegmentationScores(num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match="class id 7"):
        scores.add(np.zeros((1, 2), int), np.array([[0, 7]]))


def _write_run(root: Path, masks: dict[str, np.ndarray], names: list[str]) -> Path:
    run = root / "run"
    for rel, labels in masks.items():
        write_label_png(run / "masks" / rel, labels)
    vocab = {"classes": [{"name": n, "synonyms": []} for n in names], "background": []}
    (run / "run.json").write_text(json.dumps({"vocabulary": vocab}))
    return run


def test_evaluate_run_pairs_relative_names_and_reports_the_rest(tmp_path: Path) -> None:
    run = _write_run(
        tmp_path,
        {"a.png": PRED, "sub/b.png": GT, "extra.png": GT},
        ["one", "two", "three"],
    )
    gt_dir = tmp_path / "gt"
    write_label_png(gt_dir / "a.png", GT)
    write_label_png(gt_dir / "sub" / "b.png", GT)
    write_label_png(gt_dir / "missing.png", GT)
    report = evaluate_run(run, gt_dir)
    assert report.metrics["images"] == 2
    assert report.missing_gt == ["extra.png"]
    assert report.missing_pred == ["missing.png"]
    assert report.metrics["classes"][1]["name"] == "one"
    direct = SegmentationScores(4, 255)
    direct.add(PRED, GT)
    direct.add(GT, GT)
    assert report.metrics["miou"] == pytest.approx(direct.summary()["miou"])


def test_evaluate_run_rescales_masks_of_another_size(tmp_path: Path) -> None:
    run = _write_run(tmp_path, {"a.png": GT.repeat(2, 0).repeat(2, 1)}, ["one", "two", "three"])
    write_label_png(tmp_path / "gt" / "a.png", GT)
    report = evaluate_run(run, tmp_path / "gt")
    assert report.resized == ["a.png"]
    assert report.metrics["pixel_accuracy"] == 1.0


def test_colour_ground_truth_and_bad_folders_are_usage_errors(tmp_path: Path) -> None:
    run = _write_run(tmp_path, {"a.png": PRED}, ["one", "two", "three"])
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    Image.new("RGB", (4, 4)).save(gt_dir / "a.png")
    with pytest.raises(UsageError, match="single-channel"):
        evaluate_run(run, gt_dir)
    with pytest.raises(UsageError, match="no such folder"):
        evaluate_run(run, tmp_path / "nowhere")
    with pytest.raises(UsageError, match="no masks"):
        evaluate_run(tmp_path, gt_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="same relative name"):
        evaluate_run(run, tmp_path / "empty")


def test_eval_command_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _write_run(tmp_path, {"a.png": PRED}, ["one", "two", "three"])
    write_label_png(tmp_path / "gt" / "a.png", GT)
    assert main(["eval", str(run), "--gt-masks", str(tmp_path / "gt")]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "two" in text
    assert main(["eval", str(run), "--gt-masks", str(tmp_path / "gt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["miou"] == pytest.approx((6 / 8 + 4 / 5 + 1 / 4 + 0) / 4)
    # Without an ignore index, 255 is an out-of-range class id: a usage error (exit 2).
    assert main(["eval", str(run), "--gt-masks", str(tmp_path / "gt"), "--ignore-index", "-1"]) == 2


# --- instance metrics against a COCO file ---------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real run of the toy model on 4 toy scenes, and the scenes' ground-truth folder."""
    from autolabel import Labeler
    from autolabel.toyworld.export import write_dataset

    root = tmp_path_factory.mktemp("toyeval")
    write_dataset(root / "scenes", 4, 909, 128)
    labeler = Labeler(root / "scenes" / "vocab.txt", method="fast", model="toy", device="cpu")
    labeler.label_folder(root / "scenes" / "images", root / "run", resume=False)
    return root / "run", root / "scenes"


def _gt_coco(scenes: Path, path: Path, polygons: bool = False) -> Path:
    """The scenes' exact ground truth as a COCO file with ids of its own: image ids from 101,
    category ids reversed, one extra category and one extra image."""
    from autolabel.instances import Instances
    from autolabel.io.png import read_label_png
    from autolabel.toyworld.scenes import CLASSES

    categories = [{"id": 500 - i, "name": name} for i, name in enumerate(CLASSES)]
    categories.append({"id": 7, "name": "purple hexagon"})
    images, annotations = [], []
    for index, mask in enumerate(sorted((scenes / "masks").glob("*.png"))):
        labels = read_label_png(mask)
        image_id = 101 + index
        images.append({"id": image_id, "file_name": mask.name, "height": 128, "width": 128})
        truth = Instances.from_label_map(labels, list(CLASSES))
        for inst, ann in zip(truth, truth.to_coco(image_id, len(annotations) + 1), strict=True):
            ann["category_id"] = 500 - (ann["category_id"] - 1)
            if polygons:
                ann["segmentation"] = _polygons(inst.mask)
            annotations.append(ann)
    images.append({"id": 999, "file_name": "not-in-the-run.png", "height": 8, "width": 8})
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return path


def _polygons(mask: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def test_a_run_scores_ap_one_against_its_own_annotations(toy_run: tuple[Path, Path]) -> None:
    from autolabel.evaluate import evaluate_instances

    run, _ = toy_run
    report = evaluate_instances(run, run / "annotations.json")
    assert report.metrics["ap"] == pytest.approx(1.0) and report.metrics["ap50"] == pytest.approx(1)
    assert all(row["ap"] == pytest.approx(1.0) for row in report.metrics["classes"] if row["gt"])
    assert report.missing_gt == [] and report.missing_pred == []


def test_ground_truth_keeps_its_own_ids_and_is_matched_by_name(
    toy_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from autolabel.evaluate import evaluate_instances
    from autolabel.io.coco import read_coco

    run, scenes = toy_run
    report = evaluate_instances(run, _gt_coco(scenes, tmp_path / "gt.json"))
    ap = report.metrics["ap"]
    assert 0.2 < ap < 1.0  # the toy model is good, not perfect
    assert report.unmatched_classes == ["purple hexagon"]
    assert report.missing_pred == ["not-in-the-run.png"]
    # The same ground truth in the run's own ids scores the same: ids and order do not matter.
    gt = read_coco(tmp_path / "gt.json")
    names = {c["id"]: c["name"] for c in gt.categories}
    run_ids = {n: i + 1 for i, n in enumerate(read_coco(run / "annotations.json").names)}
    plain = json.loads((tmp_path / "gt.json").read_text())
    for ann in plain["annotations"]:
        ann["category_id"] = run_ids[names[ann["category_id"]]]
    plain["categories"] = [{"id": i, "name": n} for n, i in run_ids.items()]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert evaluate_instances(run, tmp_path / "plain.json").metrics["ap"] == pytest.approx(ap)
    # Polygon ground truth (what many tools export) gives about the same AP.
    polygons = evaluate_instances(run, _gt_coco(scenes, tmp_path / "poly.json", polygons=True))
    assert polygons.metrics["ap"] == pytest.approx(ap, abs=0.1)


def test_eval_command_reports_mask_ap(
    toy_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, scenes = toy_run
    gt = _gt_coco(scenes, tmp_path / "gt.json")
    assert main(["eval", str(run), "--gt-coco", str(gt), "--gt-masks", str(scenes / "masks")]) == 0
    text = capsys.readouterr().out
    assert "mask AP" in text and "mIoU" in text and "purple hexagon" in text
    assert main(["eval", str(run), "--gt-coco", str(gt), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 0 < data["instances"]["ap"] < 1
    assert main(["eval", str(run)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "x.png"}], "categories": []}')
    assert main(["eval", str(run), "--gt-coco", str(bad)]) == 2
