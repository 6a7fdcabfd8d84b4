"""Label Studio parts that need no server: configs, brush RLE, predictions, versions, review."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from autolabel.errors import UsageError
from autolabel.instances import Instance, Instances, encode_rle
from autolabel.io.coco import read_coco
from autolabel.io.run_folder import read_run
from autolabel.provenance import model_version
from autolabel.sinks.labelstudio.config import (
    find_target,
    label_for,
    make_label_config,
    match_vocabulary,
    parse_interface,
    prompt_vocabulary,
    vocabulary_from_target,
)
from autolabel.sinks.labelstudio.pull import PullSummary, review_task
from autolabel.sinks.labelstudio.push import ImageUrls, run_model_version
from autolabel.sinks.labelstudio.regions import (
    Interaction,
    brush_region,
    check_prediction,
    make_prediction,
    parse_context,
    point_pixel,
    polygon_mask,
    rectangle_mask,
    region_mask,
)
from autolabel.vocab import parse_vocabulary

VOCAB = parse_vocabulary('cat: kitty, feline\ndog: puppy\nfish & <chips> "x"\n')


def _target(vocab=VOCAB, polygons=False):
    config = make_label_config(vocab, polygons)
    return find_target(parse_interface(config, "test"), "test"), config


def _instance(category_id: int, mask: np.ndarray, score: float = 0.5) -> Instance:
    rows, cols = np.nonzero(mask)
    bbox = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    return Instance(category_id, encode_rle(mask), int(mask.sum()), [float(v) for v in bbox], score)


def test_generated_config_has_every_class_with_synonyms_as_predicted_values() -> None:
    target, config = _target(polygons=True)
    assert (target.from_name, target.to_name, target.value_key) == ("brush", "image", "image")
    assert list(target.labels) == VOCAB.names  # vocabulary order, odd characters escaped
    assert target.labels["cat"] == ("kitty", "feline")
    assert target.labels["dog"] == ("puppy",)
    assert target.polygon == "polygon"
    assert 'predicted_values="kitty,feline"' in config


def test_config_without_polygons_has_no_polygon_control() -> None:
    target, config = _target()
    assert target.polygon is None
    assert "PolygonLabels" not in config


def test_existing_config_matches_by_name_synonym_and_case() -> None:
    config = """<View><Image name="img" value="$photo"/>
      <BrushLabels name="masks" toName="img">
        <Label value="Cat"/><Label value="Hound" predicted_values="dog, doggo"/>
        <Label value="FISH &amp; &lt;chips&gt; &quot;x&quot;"/><Label value="extra"/>
      </BrushLabels></View>"""
    target = find_target(parse_interface(config, "p"), "p")
    assert (target.from_name, target.to_name, target.value_key) == ("masks", "img", "photo")
    assert match_vocabulary(target, VOCAB, "p") == ["Cat", "Hound", 'FISH & <chips> "x"']


def test_mismatching_config_names_the_missing_classes() -> None:
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="b" toName="image"><Label value="cat"/><Label value="horse"/></BrushLabels>
      </View>"""
    target = find_target(parse_interface(config, "project 7"), "project 7")
    with pytest.raises(UsageError, match=r"project 7: .*'dog'.*'fish.*labels are 'cat', 'horse'"):
        match_vocabulary(target, VOCAB, "project 7")


def test_two_classes_on_one_label_are_refused() -> None:
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="b" toName="image"><Label value="pet" predicted_values="cat,dog"/>
      <Label value="fish &amp; &lt;chips&gt; &quot;x&quot;"/></BrushLabels></View>"""
    target = find_target(parse_interface(config, "p"), "p")
    with pytest.raises(UsageError, match="same label"):
        match_vocabulary(target, VOCAB, "p")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="i">'
         '<Choice value="a"/></Choices></View>', "no <BrushLabels>"),
        ("<View><Image name='i' value='$i'/><BrushLabels name='b' toName='i'>", "cannot be parsed"),
        ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"/></View>',
         "no labels"),
    ],
)  # fmt: skip
def test_unusable_configs_are_usage_errors(config: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        find_target(parse_interface(config, "p"), "p")


def test_vocabulary_from_config_drops_clashing_background_words() -> None:
    config = """<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image">
      <Label value="tree" predicted_values="tree,shrub,car"/><Label value="car"/>
      </BrushLabels></View>"""
    target = find_target(parse_interface(config, "p"), "p")
    vocab = vocabulary_from_target(target)
    assert vocab.names == ["tree", "car"]
    assert vocab.classes[0].synonyms == ("shrub",)  # its own name and another label dropped
    assert "tree" not in vocab.background and "sky" in vocab.background


@pytest.mark.parametrize("shape", [(37, 61), (61, 37), (1, 50), (50, 1), (48, 64)])
def test_brush_rle_round_trip_is_exact_on_non_square_masks(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.6
    mask[0, -1] = True  # a corner pixel: a transposed or flipped decode would move it
    mask[-1, 0] = False
    target, _ = _target()
    region = brush_region(mask, "cat", target, 0.7, "r1")
    flat = np.asarray(decode_rle(region["value"]["rle"]))
    assert flat.size == shape[0] * shape[1] * 4
    assert set(np.unique(flat)) <= {0, 255}  # 0/255, not 0/1, or LS draws it transparent
    label, back = region_mask(region)
    assert label == "cat"
    assert back.shape == shape
    assert np.array_equal(back, mask)
    assert (region["original_height"], region["original_width"]) == shape


def test_prediction_has_one_region_per_instance_and_validates() -> None:
    target, config = _target()
    a = np.zeros((30, 50), bool)
    a[2:10, 3:20] = True
    b = np.zeros((30, 50), bool)
    b[15:28, 30:45] = True
    instances = Instances((30, 50), VOCAB.names, [_instance(2, a, 0.9), _instance(1, b, 0.3)])
    prediction = make_prediction(instances, target, "v1")
    assert prediction["model_version"] == "v1"
    assert prediction["score"] == pytest.approx(0.6)
    assert [r["value"]["brushlabels"] for r in prediction["result"]] == [["dog"], ["cat"]]
    assert [r["score"] for r in prediction["result"]] == [0.9, 0.3]
    assert len({r["id"] for r in prediction["result"]}) == 2
    interface = parse_interface(config, "p")
    check_prediction(interface, prediction, "p")  # does not raise
    assert np.array_equal(region_mask(prediction["result"][0])[1], a)
    # With a review priority, the prediction score is 1 - priority (the Data Manager's sort key).
    instances.priority = 0.75
    assert make_prediction(instances, target, "v1")["score"] == pytest.approx(0.25)


def test_validation_rejects_unknown_labels_and_missing_brushlabels() -> None:
    target, config = _target()
    interface = parse_interface(config, "p")
    mask = np.ones((4, 6), bool)
    bad_label = make_prediction(
        Instances((4, 6), ["horse", "dog", "x"], [_instance(1, mask)]), target, "v"
    )
    with pytest.raises(UsageError, match="rejected by the labeling config"):
        check_prediction(interface, bad_label, "p")
    no_labels = make_prediction(Instances((4, 6), VOCAB.names, [_instance(1, mask)]), target, "v")
    del no_labels["result"][0]["value"]["brushlabels"]
    with pytest.raises(UsageError, match="rejected"):
        check_prediction(interface, no_labels, "p")


def test_empty_prediction_is_valid() -> None:
    target, config = _target()
    prediction = make_prediction(Instances((4, 6), VOCAB.names), target, "v")
    assert prediction == {"model_version": "v", "score": 0.0, "result": []}
    check_prediction(parse_interface(config, "p"), prediction, "p")


def test_polygon_regions_rasterise_in_percent_of_the_image() -> None:
    mask = polygon_mask([[10, 20], [60, 20], [60, 70], [10, 70]], 40, 80)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max()) == (8, 28)  # 20 % and 70 % of 40 rows, inclusive
    assert (cols.min(), cols.max()) == (8, 48)
    region = {
        "type": "polygonlabels", "original_width": 80, "original_height": 40,
        "value": {"points": [[10, 20], [60, 20], [60, 70]], "polygonlabels": ["dog"]},
    }  # fmt: skip
    label, tri = region_mask(region)
    assert label == "dog" and 0 < tri.sum() < mask.sum()


INTERACTIVE_CONFIG = """<View><Image name="img" value="$photo"/>
  <BrushLabels name="masks" toName="img" model_score_threshold="0.25" model_skip="True">
    <Label value="Cat" predicted_values="kitty"/><Label value="dog"/></BrushLabels>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="Cat"/></KeyPointLabels>
  <TextArea name="prompt" toName="img"/><TextArea name="elsewhere" toName="other"/>
  <Image name="other" value="$other"/></View>"""


def test_config_attributes_for_the_ml_backend() -> None:
    target = find_target(parse_interface(INTERACTIVE_CONFIG, "p"), "p")
    assert (target.score_threshold, target.skip, target.prompts) == (0.25, True, ("prompt",))
    plain, _ = _target()
    assert (plain.score_threshold, plain.skip, plain.prompts) == (0.0, False, ())
    for bad in ('"-0.1"', '"1.5"', '"high"', '"nan"'):
        config = INTERACTIVE_CONFIG.replace('"0.25"', bad)
        with pytest.raises(UsageError, match="model_score_threshold"):
            find_target(parse_interface(config, "p"), "p")
    for value, skip in (("1", True), ("yes", True), ("false", False), ("0", False)):
        config = INTERACTIVE_CONFIG.replace('model_skip="True"', f'model_skip="{value}"')
        assert find_target(parse_interface(config, "p"), "p").skip is skip


def test_labels_and_text_prompts_map_onto_the_project_labels() -> None:
    target = find_target(parse_interface(INTERACTIVE_CONFIG, "p"), "p")
    assert [label_for(target, n) for n in ("Cat", "cat ", "KITTY", "dog", "horse")] == [
        "Cat", "Cat", "Cat", "dog", None,
    ]  # fmt: skip
    label, vocab = prompt_vocabulary(" black  cat, kitty,, Kitty ", target, ("kitty", "sky"))
    assert label == "Cat"  # the first label a phrase names
    assert [(c.name, c.synonyms) for c in vocab.classes] == [("black cat", ("kitty",))]
    assert vocab.background == ("sky",)  # a background word that is a phrase is dropped
    label, vocab = prompt_vocabulary("zebra", target)
    assert label == "Cat" and vocab.names == ["zebra"]  # names no label: the first label
    with pytest.raises(UsageError, match="empty"):
        prompt_vocabulary(" , ", target)


def test_interactive_context_is_parsed_into_clicks_boxes_and_text() -> None:
    context = {
        "result": [
            {"type": "keypointlabels", "value": {"x": 10, "y": 20.5, "keypointlabels": ["Cat"]},
             "is_positive": False},
            {"type": "rectanglelabels", "value": {"x": 1, "y": 2, "width": 3, "height": 4,
                                                  "rectanglelabels": ["dog"]}},
            {"type": "textarea", "value": {"text": ["a cat", " ", "kitty"]}},
            {"type": "choices", "value": {"choices": ["x"]}},
            {"type": "keypointlabels", "value": {"x": 5, "y": 5}},
        ]
    }  # fmt: skip
    got = parse_context(context)
    assert got == [
        Interaction("point", "Cat", positive=False),
        Interaction("box", "dog"),
        Interaction("text", text="a cat, kitty"),
        Interaction("point", ""),
    ]
    assert parse_context(None) == parse_context({}) == parse_context({"result": None}) == []
    bad_contexts = [
        [],
        {"result": {}},
        {"result": [1]},
        {"result": [{"type": "keypointlabels", "value": {"x": "1", "y": 2}}]},
        {"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 2, "width": 3}}]},
        {"result": [{"type": "keypointlabels", "value": {"x": float("inf"), "y": 2}}]},
        {"result": [{"type": "textarea", "value": {"text": [1]}}]},
    ]
    for bad in bad_contexts:
        with pytest.raises(UsageError):
            parse_context(bad)


def test_clicks_and_boxes_map_from_percent_to_pixels() -> None:
    assert point_pixel({"x": 0, "y": 0}, 40, 80) == (0, 0)
    assert point_pixel({"x": 50, "y": 50}, 40, 80) == (20, 40)
    assert point_pixel({"x": 100, "y": 100}, 40, 80) == (39, 79)  # the far edge: last pixel
    assert point_pixel({"x": -5, "y": 140}, 40, 80) == (39, 0)
    box = rectangle_mask({"x": 10, "y": 25, "width": 50, "height": 50}, 40, 80)
    expected = np.zeros((40, 80), dtype=bool)
    expected[10:30, 8:48] = True
    assert np.array_equal(box, expected)
    # LS rotates a box clockwise about its top-left corner: 90 degrees puts it left of x.
    turned = rectangle_mask({"x": 50, "y": 10, "width": 20, "height": 10, "rotation": 90}, 100, 100)
    rows, cols = np.nonzero(turned)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 30, 40, 50)
    outside = rectangle_mask({"x": 120, "y": 0, "width": 10, "height": 10}, 10, 10)
    assert not outside.any()


def test_model_version_tracks_everything_that_shapes_masks() -> None:
    identity = {
        "method": "car", "recipe": "r", "settings": {"model": "ViT-B/16", "x": 1},
        "vocabulary": "fp", "max_side": 1024, "min_area": 16,
    }  # fmt: skip
    models = {"backbone": {"name": "n"}}
    version = model_version(identity, models)
    assert version == model_version(dict(identity), dict(models))
    assert version.startswith("autolabel-car-ViT-B_16-")  # LS splits version lists on commas
    assert all(c.isalnum() or c in "._-" for c in version)
    # The recipe's name does not shape the masks; its settings do.
    assert model_version({**identity, "recipe": "other"}, models) == version
    for key, value in (
        ("method", "pnp"),
        ("settings", {"model": "ViT-B/16", "x": 2}),
        ("vocabulary", "other-vocab"),
        ("max_side", 512),
        ("min_area", 0),
    ):
        assert model_version({**identity, key: value}, models) != version
    assert model_version(identity, {"backbone": {"name": "m"}}) != version


def test_image_urls_for_local_storage_and_prefix(tmp_path: Path) -> None:
    root = tmp_path / "docroot"
    images = root / "set 1"
    images.mkdir(parents=True)
    urls = ImageUrls.checked(images, root, None)
    assert urls.url("sub/a b#1.png") == "/data/local-files/?d=set%201/sub/a%20b%231.png"
    prefixed = ImageUrls.checked(images, None, "http://files.example/imgs/")
    assert prefixed.url("sub/a b.png") == "http://files.example/imgs/sub/a%20b.png"


@pytest.mark.parametrize("case", ["both", "neither", "outside", "equal", "missing"])
def test_image_urls_refuse_bad_options(tmp_path: Path, case: str) -> None:
    root = tmp_path / "docroot"
    images = root / "set1"
    images.mkdir(parents=True)
    args = {
        "both": (images, root, "http://x"),
        "neither": (images, None, None),
        "outside": (tmp_path, root, None),
        "equal": (root, root, None),
        "missing": (images, tmp_path / "nope", None),
    }[case]
    with pytest.raises(UsageError):
        ImageUrls.checked(*args)


def test_read_run_reads_a_real_run(tiny_run: Path) -> None:
    run = read_run(tiny_run)
    coco = json.loads((tiny_run / "annotations.json").read_text())
    assert [im.file_name for im in run.images] == [im["file_name"] for im in coco["images"]]
    assert [(im.height, im.width) for im in run.images] == [
        (im["height"], im["width"]) for im in coco["images"]
    ]
    assert sum(len(im.instances) for im in run.images) == len(coco["annotations"])
    assert run.vocabulary.names == [c["name"] for c in coco["categories"]]
    first = next(im for im in run.images if len(im.instances))
    instances = first.instances
    assert instances.size == (first.height, first.width)
    assert instances.names == run.vocabulary.names
    assert instances[0].mask.shape == instances.size
    version = run_model_version(run)
    assert version.startswith("autolabel-fast-")
    info = json.loads((tiny_run / "run.json").read_text())
    info["settings"]["short_side"] = 96  # another setting: another version
    (tiny_run / "run.json").write_text(json.dumps(info))
    assert run_model_version(read_run(tiny_run)) != version


def test_read_run_names_the_file_at_fault(tmp_path: Path) -> None:
    run_json, annotations = tmp_path / "run.json", tmp_path / "annotations.json"
    with pytest.raises(UsageError, match=r"run\.json: missing; is .* output folder"):
        read_run(tmp_path)
    run_json.write_text("{not json")
    with pytest.raises(UsageError, match=r"run\.json: cannot read it as JSON"):
        read_run(tmp_path)
    run_json.write_text("{}")
    annotations.write_text('{"images": []}')
    with pytest.raises(UsageError, match=r"run\.json: not the run\.json of .* output folder"):
        read_run(tmp_path)
    vocabulary = {"classes": [{"name": "cat"}], "background": ["sky"]}
    run_json.write_text(
        json.dumps({"method": "fast", "vocabulary": vocabulary, "images_root": "/x"})
    )
    with pytest.raises(UsageError, match=r"annotations\.json: not a COCO annotation file"):
        read_run(tmp_path)
    annotations.unlink()
    with pytest.raises(UsageError, match=r"annotations\.json: missing"):
        read_run(tmp_path)
    annotations.write_text(json.dumps({"categories": [{"id": 1, "name": "dog"}], "images": []}))
    with pytest.raises(UsageError, match=r"annotations\.json: its categories \['dog'\]"):
        read_run(tmp_path)
    coco = {
        "categories": [{"id": 1, "name": "cat"}],
        "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 3}],
        "annotations": [{"image_id": 1, "category_id": 1, "area": 1, "bbox": [0, 0, 1, 1]}],
    }
    annotations.write_text(json.dumps(coco))
    with pytest.raises(UsageError, match=r"annotations\.json: .*\(no 'segmentation'\)"):
        read_run(tmp_path)
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    coco["annotations"] = [Instances((3, 4), ["cat"], [Instance.from_mask(1, mask)]).to_coco(1)[0]]
    annotations.write_text(json.dumps(coco))
    (image,) = read_run(tmp_path).images
    assert np.array_equal(image.instances[0].mask, mask)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "top level is a JSON list"),
        ('{"images": []}', "no 'categories'"),
        ('{"categories": [{"id": 1}], "images": []}', "has no 'name'"),
        ('{"categories": [], "images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]}',
         "image id 1 appears twice"),
        ('{"categories": [], "images": [], "annotations": [{"image_id": 1, "category_id": 1}]}',
         "image id 1, not in 'images'"),
        ('{"categories": [], "images": [{"id": 1, "file_name": "a"}], '
         '"annotations": [{"image_id": 1, "category_id": 3}]}', "category id 3"),
    ],
)  # fmt: skip
def test_read_coco_says_what_is_wrong(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=r"c\.json: not a COCO annotation file \(.*" + reason):
        read_coco(path)


def test_read_coco_groups_annotations_per_image(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    data = {
        "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}],
        "images": [{"id": 5, "file_name": "x.png"}, {"id": 3, "file_name": "y.png"}],
        "annotations": [{"image_id": 3, "category_id": 7, "k": 1},
                        {"image_id": 5, "category_id": 2}, {"image_id": 3, "category_id": 2}],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    coco = read_coco(path)
    assert coco.names == ["a", "b"]  # id order
    assert [im["file_name"] for im in coco.images] == ["x.png", "y.png"]
    assert coco.annotations == {
        5: [data["annotations"][1]],
        3: [data["annotations"][0], data["annotations"][2]],
    }
    with pytest.raises(UsageError, match="--tags x: not a COCO annotation file \\(not JSON"):
        read_coco(path, "{", where="--tags x")


def _task(pred_masks, final_masks, size=(20, 30)):
    target, _ = _target()
    pred = {
        "id": 5, "model_version": "v1", "created_at": "2026-01-01",
        "result": [brush_region(m, lab, target, 0.5, f"p{i}")
                   for i, (lab, m) in enumerate(pred_masks)],
    }  # fmt: skip
    final = {
        "id": 9, "parent_prediction": 5, "was_cancelled": False, "updated_at": "2026-01-02",
        "result": [brush_region(m, lab, target, 1.0, f"f{i}")
                   for i, (lab, m) in enumerate(final_masks)],
    }  # fmt: skip
    cancelled = {"id": 10, "was_cancelled": True, "updated_at": "2026-01-03", "result": []}
    return {
        "id": 3,
        "data": {"image": "/data/local-files/?d=x/a.png",
                 "autolabel": {"file": "a.png", "height": size[0], "width": size[1]}},
        "predictions": [pred],
        "annotations": [final, cancelled],
    }  # fmt: skip


def test_review_of_an_accepted_prediction() -> None:
    m = np.zeros((20, 30), bool)
    m[2:8, 4:20] = True
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    record = review_task(
        _task([("cat", m)], [("cat", m)]), {n: i + 1 for i, n in enumerate(VOCAB.names)}, summary
    )
    assert record["file"] == "a.png" and (record["height"], record["width"]) == (20, 30)
    assert len(record["instances"]) == 1
    inst = record["instances"][0]
    assert inst["category_id"] == 1 and inst["area"] == m.sum()
    assert inst["bbox"] == [4.0, 2.0, 16.0, 6.0]
    assert summary.reviews[0].accepted_as_is and summary.reviews[0].iou == {"cat": 1.0}
    assert summary.accepted_as_is == 1


def test_review_of_an_edited_prediction() -> None:
    m = np.zeros((20, 30), bool)
    m[0:10, 0:10] = True
    half = m.copy()
    half[5:] = False
    dog = np.zeros((20, 30), bool)
    dog[12:, 12:] = True
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    category = {n: i + 1 for i, n in enumerate(VOCAB.names)}
    record = review_task(_task([("cat", m)], [("cat", half), ("dog", dog)]), category, summary)
    review = summary.reviews[0]
    assert review.iou == {"cat": 0.5, "dog": 0.0}
    assert not review.accepted_as_is
    assert (review.regions_predicted, review.regions_final) == (1, 2)
    assert [i["category_id"] for i in record["instances"]] == [1, 2]
    assert summary.mean_iou() == {"cat": 0.5, "dog": 0.0}


def test_task_without_annotation_is_not_exported() -> None:
    task = _task([], [])
    task["annotations"] = [a for a in task["annotations"] if a["was_cancelled"]]
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    assert review_task(task, {"cat": 1}, summary) is None
    assert summary.tasks_without_annotation == 1


def test_unreadable_and_foreign_regions_are_skipped_not_fatal() -> None:
    m = np.zeros((20, 30), bool)
    m[1:5, 1:5] = True
    task = _task([("cat", m)], [("cat", m), ("dog", m)])
    final = task["annotations"][0]["result"]
    final[1]["value"]["rle"] = final[1]["value"]["rle"][:10]  # truncated by a broken client
    final.append({"type": "choices", "value": {"choices": ["ok"]}})
    final.append({**final[0], "value": {**final[0]["value"], "brushlabels": ["horse"]}})
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    record = review_task(task, {n: i + 1 for i, n in enumerate(VOCAB.names)}, summary)
    assert [i["category_id"] for i in record["instances"]] == [1]
    assert summary.regions_skipped == 3


def test_review_does_not_report_a_class_with_empty_regions_on_both_sides() -> None:
    m = np.zeros((20, 30), bool)
    m[2:8, 4:20] = True
    empty = np.zeros((20, 30), bool)
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    category = {n: i + 1 for i, n in enumerate(VOCAB.names)}
    record = review_task(_task([("cat", m), ("dog", empty)], [("cat", m)]), category, summary)
    assert summary.reviews[0].iou == {"cat": 1.0}
    assert summary.reviews[0].accepted_as_is
    assert len(record["instances"]) == 1


def test_overlapping_classes_are_compared_class_by_class() -> None:
    cat = np.zeros((20, 30), bool)
    cat[0:10, 0:10] = True
    dog = np.zeros((20, 30), bool)
    dog[5:15, 5:15] = True  # overlaps the cat: a single painted label map would cut one of them
    summary = PullSummary(1, Path("o.json"), Path("r.json"))
    category = {n: i + 1 for i, n in enumerate(VOCAB.names)}
    review_task(
        _task([("cat", cat), ("dog", dog)], [("cat", cat), ("dog", dog)]), category, summary
    )
    assert summary.reviews[0].iou == {"cat": 1.0, "dog": 1.0}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_sinks_and_integrations_do_not_import_the_runner() -> None:
    """Integrations hold no algorithm: they go through the Python API, never the job loop."""
    repo = Path(__file__).resolve().parent.parent
    folders = (repo / "autolabel" / "sinks", repo / "integrations")
    files = sorted(path for folder in folders for path in folder.rglob("*.py"))
    assert len(files) > 10 and any(
        path.parts[-3:-1] == ("integrations", "fiftyone") for path in files
    )
    offenders = {
        path.relative_to(repo).as_posix(): sorted(
            name
            for name in _imports(path)
            if name == "autolabel.runner" or name.startswith("autolabel.runner.")
        )
        for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}
