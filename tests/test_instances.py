"""Label map -> instances -> COCO, round-tripped through pycocotools."""

import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autolabel.instances import (
    decode_rle,
    encode_rle,
    instances_from_labels,
    semantic_from_instances,
)
from autolabel.io.coco import write_coco


def _labels() -> np.ndarray:
    labels = np.zeros((30, 50), dtype=np.int32)
    labels[2:10, 3:20] = 1  # one class-1 blob
    labels[20:28, 30:45] = 1  # a second, separate class-1 blob
    labels[12:18, 25:48] = 2
    labels[0, 49] = 2  # a 1-pixel speck
    return labels


def test_rle_round_trip_non_square() -> None:
    mask = np.zeros((7, 13), dtype=bool)
    mask[1:5, 2:11] = True
    mask[6, 0] = True
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 13]
    assert np.array_equal(decode_rle(rle), mask)


def test_components_bbox_area_score_and_min_area() -> None:
    labels = _labels()
    probs = np.zeros((3, 30, 50), dtype=np.float32)
    probs[1] = 0.8
    probs[2] = 0.6
    insts = instances_from_labels(labels, probs, labels.shape, min_area=2)
    assert sorted(i.category_id for i in insts) == [1, 1, 2]  # the speck is dropped
    first = next(i for i in insts if i.category_id == 1 and i.bbox[1] == 2)
    assert first.bbox == [3.0, 2.0, 17.0, 8.0] and first.area == 8 * 17
    assert abs(first.score - 0.8) < 1e-6
    painted = semantic_from_instances(insts, labels.shape)
    expected = labels.copy()
    expected[0, 49] = 0
    assert np.array_equal(painted, expected)


def test_upsampled_instances_tile_the_resized_label_map() -> None:
    labels = _labels()
    insts = instances_from_labels(labels, None, (60, 100), min_area=0)
    painted = semantic_from_instances(insts, (60, 100))
    assert painted.shape == (60, 100)
    assert np.array_equal(painted[::2, ::2], labels)
    assert all(i.score == 1.0 for i in insts)


def test_coco_file_loads_and_scores_ap_one_against_itself(tmp_path: Path) -> None:
    shapes = [(30, 50), (50, 30)]
    records = []
    for index, shape in enumerate(shapes):
        labels = _labels() if shape == (30, 50) else _labels().T.copy()
        insts = instances_from_labels(labels, None, shape, min_area=2)
        records.append(
            {
                "file": f"dir/img {index}.png",
                "width": shape[1],
                "height": shape[0],
                "instances": [i.to_dict() for i in insts],
            }
        )
    path = tmp_path / "annotations.json"
    images, anns = write_coco(path, ["cat", "dog"], lambda: iter(records))
    assert (images, anns) == (2, 6)
    data = json.loads(path.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2]
    assert data["images"][1] == {"id": 2, "file_name": "dir/img 1.png", "width": 30, "height": 50}
    gt = COCO(str(path))
    dt = gt.loadRes(data["annotations"])
    evaluator = COCOeval(gt, dt, iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == 1.0
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0 and 0.0 <= ann["score"] <= 1.0
        assert gt.annToMask(ann).sum() == ann["area"]
