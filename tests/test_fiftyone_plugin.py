"""The FiftyOne plugin: discovery by FiftyOne's CLI, and both operators run through FiftyOne's
operator execution API (immediate and delegated) on a real database with the real segmenter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from autolabel.instances import decode_rle

pytest_plugins = ["fo_support"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

PLUGIN_YML = Path(__file__).resolve().parent.parent / "integrations" / "fiftyone" / "fiftyone.yml"
PLUGIN_NAME = yaml.safe_load(PLUGIN_YML.read_text())["name"]
SEGMENT = f"{PLUGIN_NAME}/segment"
MISTAKES = f"{PLUGIN_NAME}/find_label_mistakes"


@pytest.fixture
def image_dataset(fo: ModuleType, image_folder: Path, dataset_name: str) -> object:
    """The conftest images as a FiftyOne dataset, in file order."""
    paths = sorted(str(p) for p in image_folder.rglob("*") if p.is_file())
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    return dataset


def _segment_params(vocab_file: Path, tiny_recipe: Path, **extra: object) -> dict:
    return {
        "vocabulary": vocab_file.read_text(),
        "recipe": str(tiny_recipe),
        "device": "cpu",
        "min_area": 0,
        **extra,
    }


def _execute(fo: ModuleType, uri: str, **ctx: object) -> object:
    import fiftyone.operators as foo

    result = foo.execute_operator(uri, ctx=ctx)
    assert result.error is None, result.error
    return result


def test_fiftyone_cli_lists_plugin_and_operators(fo: ModuleType, fiftyone_env: dict) -> None:
    cli = Path(sys.executable).with_name("fiftyone")
    env = {**os.environ, **fiftyone_env}
    plugins = subprocess.run(
        [str(cli), "plugins", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert plugins.returncode == 0, plugins.stderr
    assert PLUGIN_NAME in plugins.stdout
    operators = subprocess.run(
        [str(cli), "operators", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert operators.returncode == 0, operators.stderr
    assert SEGMENT in operators.stdout and MISTAKES in operators.stdout


def test_segment_operator_writes_the_same_masks_as_autolabel_run(
    fo: ModuleType,
    image_dataset: object,
    tiny_run: Path,
    vocab_file: Path,
    tiny_recipe: Path,
) -> None:
    from autolabel.sinks.fiftyone import detection_mask

    params = _segment_params(vocab_file, tiny_recipe)
    _execute(fo, SEGMENT, view=image_dataset.view(), params=params)

    coco = json.loads((tiny_run / "annotations.json").read_text())
    root = Path(json.loads((tiny_run / "run.json").read_text())["images_root"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    samples = {s.filepath: s for s in image_dataset}
    compared = 0
    for image in coco["images"]:
        sample = samples[str(root / image["file_name"])]
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        detections = sample.autolabel_instances.detections
        assert len(detections) == len(expected)
        for det, ann in zip(detections, expected, strict=True):
            assert det.label == names[ann["category_id"]]
            mask = detection_mask(det, (image["height"], image["width"]))
            assert np.array_equal(mask, decode_rle(ann["segmentation"]))
            compared += 1
        assert sample.autolabel_semantic.mask.shape == (image["height"], image["width"])
    assert compared == len(coco["annotations"]) > 0

    info = image_dataset.get_run_info("autolabel").config
    assert info.method == "fast"
    assert [c["name"] for c in info.vocabulary["classes"]] == list(names.values())
    assert image_dataset.mask_targets["autolabel_semantic"] == names


def test_segment_form_rejects_a_bad_vocabulary_before_running(
    fo: ModuleType, image_dataset: object, vocab_file: Path, tiny_recipe: Path
) -> None:
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, ExecutionError
    from fiftyone.operators.registry import OperatorRegistry

    params = _segment_params(vocab_file, tiny_recipe, vocabulary="cat\nkitten\ncat")
    context = ExecutionContext(
        request_params={"dataset_name": image_dataset.name, "params": params}
    )
    form = OperatorRegistry().get_operator(SEGMENT).resolve_type(context, "inputs")
    vocabulary = form.type.properties["vocabulary"]
    assert vocabulary.invalid and "'cat' appears twice" in vocabulary.error_message
    assert form.type.properties["delegate"].default is False  # 3 images: run immediately

    with pytest.raises(ExecutionError, match="appears twice"):
        foo.execute_operator(SEGMENT, ctx={"dataset": image_dataset, "params": params})
    assert not image_dataset.has_field("autolabel_instances")


def test_segment_operator_targets_selection_and_skips_existing(
    fo: ModuleType, image_dataset: object, vocab_file: Path, tiny_recipe: Path
) -> None:
    params = _segment_params(vocab_file, tiny_recipe)
    first = image_dataset.first()
    _execute(
        fo,
        SEGMENT,
        dataset=image_dataset,
        selected=[first.id],
        params={**params, "view_target": "SELECTED_SAMPLES"},
    )
    assert image_dataset.count("autolabel_instances") == 1
    first.reload()
    kept_ids = [d.id for d in first.autolabel_instances.detections]

    _execute(fo, SEGMENT, dataset=image_dataset, params=params)
    assert image_dataset.count("autolabel_instances") == len(image_dataset) == 3
    first.reload()
    assert [d.id for d in first.autolabel_instances.detections] == kept_ids

    _execute(fo, SEGMENT, dataset=image_dataset, params={**params, "overwrite": True})
    first.reload()
    redone = [d.id for d in first.autolabel_instances.detections]
    assert len(redone) == len(kept_ids) and not set(redone) & set(kept_ids)


def test_segment_operator_delegated_run(
    fo: ModuleType, image_dataset: object, vocab_file: Path, tiny_recipe: Path
) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    params = _segment_params(vocab_file, tiny_recipe, field="queued", delegate=True)
    queued = _execute(fo, SEGMENT, dataset=image_dataset, params=params)
    assert queued.delegated
    assert not image_dataset.has_field("queued_instances")

    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=image_dataset.name)
    (operation,) = service.list_operations(dataset_name=image_dataset.name)
    assert operation.run_state == ExecutionRunState.COMPLETED, operation.result
    assert image_dataset.count("queued_instances") == 3
    assert operation.status.progress == pytest.approx(1.0)


def _rotate_labels(detections: object, names: list[str]) -> object:
    """Every detection relabelled as the next vocabulary class: a wrong ground truth."""
    for det in detections.detections:
        det.label = names[(names.index(det.label) + 1) % len(names)]
    return detections


def test_find_label_mistakes_ranks_the_wrong_ground_truth_first(
    fo: ModuleType, image_dataset: object, vocab_file: Path, tiny_recipe: Path
) -> None:
    _execute(fo, SEGMENT, dataset=image_dataset, params=_segment_params(vocab_file, tiny_recipe))
    image_dataset.clone_sample_field("autolabel_instances", "ground_truth")
    names = image_dataset.classes["autolabel_instances"]
    wrong = max(image_dataset, key=lambda s: len(s.ground_truth.detections))
    assert len(wrong.ground_truth.detections) > 0
    wrong.ground_truth = _rotate_labels(wrong.ground_truth, names)
    wrong.save()

    _execute(
        fo,
        MISTAKES,
        dataset=image_dataset,
        params={"reviewed_field": "ground_truth", "score_field": "mistakes"},
    )
    scores = dict(zip(*image_dataset.values(["id", "mistakes"]), strict=True))
    assert scores[wrong.id] == pytest.approx(1.0)
    assert all(s == pytest.approx(0.0) for i, s in scores.items() if i != wrong.id)
    ranked = image_dataset.sort_by("mistakes", reverse=True).first()
    assert ranked.id == wrong.id and ranked.mistakes_classes
    config = image_dataset.get_run_info("mistakes").config
    assert (config.reviewed_field, config.predicted_field) == ("ground_truth", "autolabel_semantic")


def _drawn_ground_truth(fo: ModuleType, path: str) -> object:
    """Masks of the shapes conftest.draw_scene paints, as a Segmentation label map."""
    with Image.open(path) as im:
        width, height = im.size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([width * 0.1, height * 0.1, width * 0.4, height * 0.45], fill=1)
    draw.ellipse([width * 0.55, height * 0.5, width * 0.9, height * 0.9], fill=2)
    draw.rectangle([width * 0.05, height * 0.7, width * 0.45, height * 0.8], fill=3)
    return fo.Segmentation(mask=np.asarray(canvas))


def test_find_label_mistakes_segments_missing_predictions_with_the_reviewed_classes(
    fo: ModuleType, image_dataset: object, tiny_recipe: Path
) -> None:
    for sample in image_dataset:
        sample["reviewed"] = _drawn_ground_truth(fo, sample.filepath)
        sample.save()
    image_dataset.mask_targets = {"reviewed": {1: "red square", 2: "blue disc", 3: "green bar"}}
    image_dataset.save()

    params = {"reviewed_field": "reviewed", "recipe": str(tiny_recipe), "device": "cpu"}
    _execute(fo, MISTAKES, dataset=image_dataset, params=params)

    assert image_dataset.count("autolabel_semantic") == 3
    assert sorted(image_dataset.classes["autolabel_instances"]) == [
        "blue disc",
        "green bar",
        "red square",
    ]
    scores = image_dataset.values("autolabel_disagreement")
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)


def test_disagreement_score_across_label_types(fo: ModuleType, tmp_path: Path, dataset_name: str):
    from autolabel.sinks.fiftyone import score_disagreement

    path = tmp_path / "blank.png"
    Image.new("RGB", (10, 10)).save(path)
    reviewed = np.zeros((10, 10), dtype=np.uint8)
    reviewed[:, :5] = 1  # "cat" is the left half: 50 pixels
    predicted = np.zeros((10, 10), dtype=bool)
    predicted[:, :5] = True
    predicted[:5, 5:] = True  # the prediction spills 25 pixels over: IoU 50 / 75
    dataset = fo.Dataset(dataset_name)
    dataset.add_sample(
        fo.Sample(
            filepath=str(path),
            reviewed=fo.Segmentation(mask=reviewed),
            predicted=fo.Detections(detections=[fo.Detection.from_mask(predicted, label="cat")]),
        )
    )
    dataset.add_sample(fo.Sample(filepath=str(path), reviewed=fo.Segmentation(mask=reviewed)))
    dataset.mask_targets = {"reviewed": {1: "cat"}}
    dataset.save()

    summary = score_disagreement(dataset, "reviewed", "predicted", "score")
    assert (summary.scored, summary.skipped) == (1, 1)
    assert dataset.values("score") == [pytest.approx(1 - 50 / 75), None]
    assert dataset.values("score_classes") == [[], None]
