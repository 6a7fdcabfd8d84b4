"""`autolabel push fiftyone` against a real FiftyOne database, on a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import fsspec
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.instances import decode_rle
from autolabel.io.png import read_label_png

pytest_plugins = ["fo_support"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _coco(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


def _by_filepath(dataset: object) -> dict[str, object]:
    return {sample.filepath: sample for sample in dataset}


def test_push_matches_annotations_mask_for_mask(fo: ModuleType, tiny_run: Path, dataset_name: str):
    from autolabel.sinks.fiftyone import detection_mask, push_run

    summary = push_run(tiny_run, dataset_name)
    assert (summary.added, summary.updated, summary.missing) == (3, 0, [])

    dataset = fo.load_dataset(dataset_name)
    run = json.loads((tiny_run / "run.json").read_text())
    coco = _coco(tiny_run)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert len(dataset) == len(coco["images"]) == 3
    assert dataset.mask_targets["autolabel_semantic"] == names
    assert summary.instances == len(coco["annotations"]) > 0

    samples = _by_filepath(dataset)
    compared = 0
    for image in coco["images"]:
        path = str(Path(run["images_root"]) / image["file_name"])
        sample = samples[path]
        assert sample.autolabel_priority == image["priority"]
        width, height = image["width"], image["height"]
        assert (sample.metadata.width, sample.metadata.height) == (width, height)
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        detections = sample.autolabel_instances.detections
        assert len(detections) == len(expected)
        for det, ann in zip(detections, expected, strict=True):
            assert det.label == names[ann["category_id"]]
            assert det.confidence == pytest.approx(ann["score"])
            mask = detection_mask(det, (height, width))
            assert np.array_equal(mask, decode_rle(ann["segmentation"]))
            compared += 1
        png = tiny_run / "masks" / f"{Path(image['file_name']).with_suffix('')}.png"
        assert np.array_equal(sample.autolabel_semantic.get_mask(), read_label_png(png))
    assert compared == len(coco["annotations"])

    info = dataset.get_run_info("autolabel")
    assert info.config.method == run["method"] == "fast"
    assert info.config.settings == run["settings"]
    assert info.config.vocabulary == run["vocabulary"]
    assert info.config.models == run["models"]
    assert info.config.fields == ["autolabel_instances", "autolabel_semantic"]
    assert dataset.load_run_results("autolabel").instances == len(coco["annotations"])


def test_push_again_updates_fields_without_new_samples(
    fo: ModuleType, tiny_run: Path, dataset_name: str
):
    from autolabel.sinks.fiftyone import push_run

    push_run(tiny_run, dataset_name)
    dataset = fo.load_dataset(dataset_name)
    ids = sorted(dataset.values("id"))

    # Drop the first annotation: the re-push must replace that sample's detections.
    coco = _coco(tiny_run)
    dropped = coco["annotations"].pop(0)
    (tiny_run / "annotations.json").write_text(json.dumps(coco))
    summary = push_run(tiny_run, dataset_name)

    assert (summary.added, summary.updated) == (0, 3)
    assert sorted(dataset.values("id")) == ids
    counts = {
        image["id"]: sum(a["image_id"] == image["id"] for a in coco["annotations"])
        for image in coco["images"]
    }
    root = Path(json.loads((tiny_run / "run.json").read_text())["images_root"])
    samples = _by_filepath(dataset)
    for image in coco["images"]:
        sample = samples[str(root / image["file_name"])]
        assert len(sample.autolabel_instances.detections) == counts[image["id"]]
    assert dropped["image_id"] in counts
    assert len(dataset.get_run_info("autolabel").config.fields) == 2
    assert dataset.list_runs() == ["autolabel"]


def test_coco_file_imports_losslessly_with_fiftyone_importer(
    fo: ModuleType, tiny_run: Path, dataset_name: str
):
    from autolabel.sinks.fiftyone import push_run

    push_run(tiny_run, dataset_name)
    pushed = _by_filepath(fo.load_dataset(dataset_name))
    root = json.loads((tiny_run / "run.json").read_text())["images_root"]
    imported = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=root,
        labels_path=str(tiny_run / "annotations.json"),
        label_types=["segmentations"],
        label_field="coco",
    )
    assert len(imported) == len(pushed) == 3
    compared = 0
    for sample in imported:
        ours = pushed[sample.filepath].autolabel_instances.detections
        theirs = sample.coco.detections
        assert len(theirs) == len(ours)
        for a, b in zip(theirs, ours, strict=True):
            assert a.label == b.label
            assert a.confidence == pytest.approx(b.confidence)
            assert a.bounding_box == pytest.approx(b.bounding_box)
            assert np.array_equal(a.mask, b.mask)
            compared += 1
    assert compared > 0


def test_cli_push(fo: ModuleType, tiny_run: Path, dataset_name: str, capsys) -> None:
    code = main(["push", "fiftyone", str(tiny_run), "--dataset", dataset_name, "--persistent"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "3 samples added" in text
    dataset = fo.load_dataset(dataset_name)
    assert dataset.persistent and len(dataset) == 3
    dataset.delete()


def test_cli_push_reads_a_run_in_object_storage(
    fo: ModuleType, image_folder: Path, vocab_file: Path, tiny_recipe: Path, dataset_name: str,
    capsys,
) -> None:  # fmt: skip
    from autolabel.runner import run_job

    memory = fsspec.filesystem("memory")  # an object store: no rename, no append
    url = f"memory://{dataset_name}"
    try:
        summary = run_job(tiny_config(image_folder, vocab_file, url, tiny_recipe))
        assert summary.ok == 3
        code = main(["push", "fiftyone", url, "--dataset", dataset_name])
        text = capsys.readouterr().out
        assert code == 0, text
        assert "3 samples added" in text
        coco = json.loads(memory.cat_file(f"/{dataset_name}/annotations.json"))
        dataset = fo.load_dataset(dataset_name)
        assert sorted(Path(p).name for p in dataset.values("filepath")) == [
            "a.png",
            "b.jpg",
            "c.png",
        ]
        assert dataset.count("autolabel_instances.detections") == len(coco["annotations"]) > 0
        dataset.delete()
    finally:
        memory.rm(f"/{dataset_name}", recursive=True)


def test_cli_push_reports_usage_errors(fo: ModuleType, tmp_path: Path, tiny_run: Path, capsys):
    code = main(["push", "fiftyone", str(tmp_path / "nothing"), "--dataset", "x"])
    assert code == 2
    assert "run.json: missing" in " ".join(capsys.readouterr().err.split())

    code = main(["push", "fiftyone", str(tiny_run), "--dataset", "x", "--field", "bad-name"])
    assert code == 2
    assert "'bad-name'" in capsys.readouterr().err
    assert "x" not in fo.list_datasets()


def test_field_prefix_is_validated_before_anything_is_written(fo: ModuleType, tiny_run: Path):
    from autolabel.sinks.fiftyone import push_run

    with pytest.raises(UsageError, match="letters, digits and underscores"):
        push_run(tiny_run, "never-created", field_prefix="1st")
    assert "never-created" not in fo.list_datasets()


def test_masks_round_trip_where_fiftyone_rendering_would_shift_them(
    fo: ModuleType, tmp_path: Path, dataset_name: str
) -> None:
    from autolabel.instances import Instance, Instances, encode_rle
    from autolabel.sinks.fiftyone import (
        detection_mask,
        score_disagreement,
        to_detections,
        to_segmentation,
    )

    # x=3, w=4 on a 96-wide image: int((3/96 + 4/96) * 96) == 6, so FiftyOne's renderer would
    # draw this box one pixel narrower than it is.
    size = (64, 96)
    mask = np.zeros(size, dtype=bool)
    mask[10:20, 3:7] = True
    instance = Instance(1, encode_rle(mask), int(mask.sum()), [3.0, 10.0, 4.0, 10.0], 0.9)
    instances = Instances(size, ["cat"], [instance])
    detections = to_detections(instances)
    assert detections.detections[0].label == "cat"
    assert np.array_equal(detection_mask(detections.detections[0], size), mask)

    path = tmp_path / "blank.png"
    Image.new("RGB", (size[1], size[0])).save(path)
    dataset = fo.Dataset(dataset_name)
    dataset.add_sample(
        fo.Sample(
            filepath=str(path),
            reviewed=to_segmentation(instances),
            predicted=detections,
        )
    )
    dataset.mask_targets = {"reviewed": {1: "cat"}}
    dataset.save()
    score_disagreement(dataset, "reviewed", "predicted", "score")
    assert dataset.values("score") == [0.0]


def test_segment_samples_with_a_labeler_keeps_going_past_a_broken_image(
    fo: ModuleType,
    image_folder: Path,
    vocab_file: Path,
    tiny_recipe: Path,
    tmp_path: Path,
    dataset_name: str,
) -> None:
    from autolabel.api import Labeler
    from autolabel.sinks.fiftyone import segment_samples

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = sorted(str(p) for p in image_folder.rglob("*.png"))[0]
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=good), fo.Sample(filepath=str(broken))])
    labeler = Labeler(vocab_file, recipe=str(tiny_recipe), device="cpu", min_area=0, lazy=True)
    expected = labeler.label(good)

    (progress,) = list(segment_samples(dataset, labeler, "auto", batch_size=2))
    assert (progress.done, progress.total) == (2, 2)
    ((path, reason),) = progress.failed
    assert path == str(broken) and "not an image" in reason
    sample = dataset.match({"filepath": good}).first()
    assert len(sample.auto_instances.detections) == len(expected)
    assert np.array_equal(sample.auto_semantic.get_mask(), expected.label_map)
    assert sample.auto_priority == expected.priority is not None
    assert dataset.match({"filepath": str(broken)}).first().auto_instances is None
    config = dataset.get_run_info("auto").config
    assert (config.method, config.min_area) == ("fast", 0)
    assert config.models == labeler.describe()["models"] != {}
    assert config.vocabulary == labeler.vocabulary.to_dict()


def test_each_sam_instance_is_one_detection(
    fo: ModuleType, tmp_path: Path, dataset_name: str
) -> None:
    from autolabel.api import Labeler
    from autolabel.sinks.fiftyone import segment_samples
    from autolabel.toyworld.export import write_dataset

    scenes = tmp_path / "scenes"
    write_dataset(scenes, 4, 4243, 128)  # a seed no toy model was trained on
    files = sorted(str(p) for p in (scenes / "images").glob("*.png"))
    labeler = Labeler(
        scenes / "vocab.txt", model="toy", method="fast", refine="crf+sam", device="cpu"
    )
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=f) for f in files])
    list(segment_samples(dataset, labeler, "auto", batch_size=2))
    total = 0
    for path in files:
        expected = labeler.label(path)
        detections = dataset.match({"filepath": path}).first().auto_instances.detections
        assert sorted(d.label for d in detections) == sorted(i.name for i in expected)
        assert sorted(round(d.confidence, 6) for d in detections) == sorted(
            round(i.score, 6) for i in expected
        )
        total += len(detections)
    assert total > 0
    assert labeler.describe()["models"]["sam_class"] == "SamModel"
