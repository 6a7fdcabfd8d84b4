"""CaR + SAM: the paper's matching on hand-made masks, SAM objects as instances, and tiny random
SAM / HQ-SAM / SAM 2 models loaded from save_pretrained folders and run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autolabel.errors import ModelLoadError, UsageError
from autolabel.instances import Instances
from autolabel.methods.base import SegResult
from autolabel.refine.sam import iom, match, objects_of, point_grid, refine_with_sam
from autolabel.refine.settings import SamSettings, check_refine

SETTINGS = SamSettings(iom_thres=0.7, min_pred_threshold=0.05, matching_thresh=0.7)


def box(top: int, left: int, bottom: int, right: int, size: int = 20) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_iom_takes_the_larger_share_and_ignores_tiny_overlaps():
    cls = box(0, 0, 10, 10)  # 100 px
    inside = box(0, 0, 5, 4)  # 20 px inside: 20/20 of the SAM mask, 20/100 of the class mask
    sliver = box(0, 0, 2, 2)  # 4 px inside: 4/100 of the class mask < min_pred_threshold
    covering = box(0, 0, 20, 20)  # 400 px holding the class: 100/400 of SAM, 100/100 of class
    scores = iom(np.stack([inside, sliver, covering]), cls, 0.05)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.04)  # the SAM-side share (1.0) is zeroed
    assert scores[2] == pytest.approx(1.0)


def test_match_keeps_masks_above_iom_and_replaces_when_the_union_agrees():
    cls = box(2, 2, 12, 12)  # 100 px
    left, right = box(2, 2, 12, 7), box(2, 7, 12, 13)  # both inside (right spills 10 px)
    outside = box(14, 14, 18, 18)
    chosen, replace = match(np.stack([left, outside, right]), cls, SETTINGS)
    assert chosen.tolist() == [0, 2]
    assert replace  # union 110 px, IoU 100/110 > 0.7


def test_match_falls_back_to_the_best_mask_and_keeps_the_class_mask_when_iou_is_low():
    cls = box(0, 0, 10, 10)
    half = box(0, 0, 10, 12)  # 100 of its 120 px: IoM 1.0 would pass; shrink the class instead
    part = box(0, 0, 6, 10)  # 60 of the class's 100 px, all of its own: IoM 1.0
    big = box(0, 0, 20, 20)  # holds the class: IoM 1.0
    strict = SETTINGS.model_copy(update={"iom_thres": 1.0})  # nothing passes IoM > 1.0
    chosen, replace = match(np.stack([box(15, 15, 20, 20), part, half]), cls, strict)
    assert len(chosen) == 1  # argmax fallback: a single mask
    assert chosen[0] in (1, 2)
    chosen, replace = match(np.stack([big]), cls, SETTINGS)
    assert chosen.tolist() == [0]
    assert not replace  # IoU 100/400 <= 0.7: the class mask stays


def test_a_less_confident_group_or_part_adds_no_object_and_objects_do_not_overlap():
    a, b = box(0, 0, 10, 6), box(0, 6, 10, 12)
    group, part = a | b, box(0, 0, 4, 4)
    masks = np.stack([group, a, part, b])
    objects = objects_of(masks, np.array([0.6, 0.8, 0.5, 0.7]), 3)
    assert [round(o.predicted_iou, 2) for o in objects] == [0.8, 0.7]
    assert np.array_equal(objects[0].mask, a) and np.array_equal(objects[1].mask, b)
    # A confident group wins over its parts: then it is one object.
    objects = objects_of(masks, np.array([0.9, 0.8, 0.5, 0.7]), 3)
    assert len(objects) == 1 and np.array_equal(objects[0].mask, group)


def test_touching_objects_of_one_class_become_two_instances_with_sam_scores():
    labels = np.zeros((20, 20), np.int32)
    a, b = box(2, 2, 10, 8), box(2, 8, 10, 14)
    labels[a | b] = 1
    labels[box(14, 14, 18, 18)] = 2  # no SAM mask covers it: a connected component
    probs = np.zeros((3, 20, 20), np.float32)
    probs[1][a | b] = 0.8
    probs[2][labels == 2] = 0.6
    probs[0][labels == 0] = 1.0
    result = SegResult(labels, np.array([0.9, 0.5], np.float32), probs)
    refined = refine_with_sam(result, np.stack([a, b]), np.array([0.9, 0.5]), SETTINGS)
    assert (refined.labels == labels).all()  # the union equals the class mask here
    instances = Instances.from_label_map(
        refined.labels, ["cat", "dog"], (40, 40), probs, 0, None, refined.extras["objects"]
    )
    cats = sorted((i for i in instances if i.name == "cat"), key=lambda i: i.bbox[0])
    dogs = [i for i in instances if i.name == "dog"]
    assert len(cats) == 2 and len(dogs) == 1
    assert [c.area for c in cats] == [4 * 48, 4 * 48]  # 8 x 6 px each, at twice the size
    assert cats[0].score == pytest.approx(0.8 * 0.9)
    assert cats[1].score == pytest.approx(0.8 * 0.5)
    assert dogs[0].score == pytest.approx(0.6)
    assert (instances.label_map[::2, ::2] == labels).all()


def test_a_replaced_class_takes_the_sam_union_and_loses_what_it_does_not_cover():
    labels = np.zeros((20, 20), np.int32)
    labels[box(2, 2, 12, 12)] = 1
    labels[12, 2:12] = 1  # a ragged row below the object
    sam = box(2, 2, 12, 13)  # the object with its true right edge
    result = SegResult(labels, np.array([0.9], np.float32))
    refined = refine_with_sam(result, sam[None], np.array([0.95]), SETTINGS)
    assert (refined.labels == sam.astype(np.int32)).all()
    assert len(refined.extras["objects"]) == 1


def _two_touching_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class 1 (cols 2-9) touching class 2 (cols 10-17); a SAM mask of class 1 that spills over
    3 columns of class 2 (IoM 80/110 > 0.7, 30/80 of class 2) and one of class 2 alone."""
    labels = np.zeros((20, 20), np.int32)
    one, two = box(2, 2, 12, 10), box(2, 10, 12, 18)
    labels[one], labels[two] = 1, 2
    spill = box(2, 2, 12, 13)
    return labels, one, two, spill


@pytest.mark.parametrize("two_replaced", [True, False])
def test_a_spilling_sam_mask_does_not_take_pixels_the_method_gave_another_class(two_replaced):
    labels, one, two, spill = _two_touching_classes()
    # Class 1 scores higher: the official paint order would give it class 2's 30 pixels.
    result = SegResult(labels, np.array([0.9, 0.6], np.float32))
    masks = np.stack([spill, two]) if two_replaced else spill[None]
    chosen, replace = match(masks, labels == 1, SETTINGS)
    assert chosen.tolist() == [0] and replace  # IoU(spill, class 1) = 80/110
    refined = refine_with_sam(result, masks, np.full(len(masks), 0.9), SETTINGS)
    assert (refined.labels == labels).all()
    objects = refined.extras["objects"]
    assert len(objects) == 1 + two_replaced
    assert objects[-1].class_id == 1 and np.array_equal(objects[-1].mask, one)


def test_pixels_two_classes_claim_go_to_the_methods_class_else_to_the_higher_score():
    labels = np.zeros((20, 20), np.int32)
    labels[box(2, 2, 12, 10)], labels[box(2, 10, 12, 13)] = 1, 2  # col 13 missed by the method
    wide_one, wide_two = box(2, 2, 12, 11), box(2, 10, 12, 14)  # both claim col 10
    loose = SETTINGS.model_copy(update={"matching_thresh": 0.4})
    for scores in ([0.9, 0.6], [0.6, 0.9]):
        result = SegResult(labels, np.array(scores, np.float32))
        refined = refine_with_sam(result, np.stack([wide_one, wide_two]), np.ones(2), loose)
        assert (refined.labels[2:12, 13] == 2).all()  # claimed by class 2 alone: SAM's shape
        assert (refined.labels[2:12, 10] == 2).all()  # both claim it; the method said 2
        assert (refined.labels[2:12, 2:10] == 1).all()
    labels[2:12, 10] = 0  # the method gave col 10 to neither: the higher score takes it
    for scores, winner in (([0.9, 0.6], 1), ([0.6, 0.9], 2)):
        result = SegResult(labels, np.array(scores, np.float32))
        refined = refine_with_sam(result, np.stack([wide_one, wide_two]), np.ones(2), loose)
        assert (refined.labels[2:12, 10] == winner).all()


def test_point_grid_is_sams_cell_centres():
    grid = point_grid(2, (10, 20))
    assert grid.tolist() == [[5.0, 2.5], [15.0, 2.5], [5.0, 7.5], [15.0, 7.5]]


def test_refine_and_sam_settings_are_checked_with_clear_errors():
    with pytest.raises(UsageError, match="--refine 'sharp'"):
        check_refine("sharp")
    with pytest.raises(UsageError, match="sam.iom_thres"):
        check_refine("sam", {"iom_thres": 2.0})
    with pytest.raises(UsageError, match="sam.pointz"):
        check_refine("sam", {"pointz": 3})
    plan = check_refine("crf+sam", {"iom_thres": 0.6}, backbone="toy")
    assert plan.crf and plan.sam.model == "toy" and plan.sam.iom_thres == 0.6
    assert check_refine("none").crf is False and check_refine("none").sam is None
    assert check_refine(None).crf is None


# ----------------------------------------------------------------- tiny random SAM models

SIDE = 64


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_sam(folder: Path, hq: bool = False) -> Path:
    """A random SAM (or HQ-SAM) for 64 px images, saved with its processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    prefix = "SamHQ" if hq else "Sam"
    vision = getattr(tf, f"{prefix}VisionConfig")(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIDE, patch_size=8, window_size=0, global_attn_indexes=[1], mlp_dim=64,
        num_pos_feats=8, scale=8, initializer_range=0.02,
    )  # fmt: skip
    prompt = getattr(tf, f"{prefix}PromptEncoderConfig")(
        hidden_size=16, image_size=SIDE, patch_size=8, mask_input_channels=4
    )
    extra = {"vit_dim": 32} if hq else {}
    decoder = getattr(tf, f"{prefix}MaskDecoderConfig")(
        hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16, **extra
    )
    config = getattr(tf, f"{prefix}Config")(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    images = tf.SamImageProcessor(
        size={"longest_edge": SIDE},
        pad_size={"height": SIDE, "width": SIDE},
        mask_size={"longest_edge": SIDE // 4},
        mask_pad_size={"height": SIDE // 4, "width": SIDE // 4},
    )
    processor = (tf.SamHQProcessor if hq else tf.SamProcessor)(images)
    model = getattr(tf, f"{prefix}Model")(config)
    return _save(model, processor, folder)


def tiny_sam2(folder: Path) -> Path:
    """A random SAM 2 (Hiera) for 64 px images, saved with its processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    dims = [8, 16, 32, 64]
    backbone = tf.Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[SIDE, SIDE], global_attention_blocks=[4],
        window_positional_embedding_background_size=[2, 2], blocks_per_stage=[1, 1, 1, 2],
        embed_dim_per_stage=dims, num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
    )  # fmt: skip
    vision = tf.Sam2VisionConfig(
        backbone_config=backbone.to_dict(), backbone_channel_list=dims[::-1],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16,
    )  # fmt: skip
    prompt = tf.Sam2PromptEncoderConfig(hidden_size=16, image_size=SIDE, patch_size=16)
    decoder = tf.Sam2MaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
    )
    config = tf.Sam2Config(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    images = tf.Sam2ImageProcessor(
        size={"height": SIDE, "width": SIDE}, mask_size={"height": SIDE // 4, "width": SIDE // 4}
    )
    processor = tf.Sam2Processor(images, target_size=SIDE)
    return _save(tf.Sam2Model(config), processor, folder)


@pytest.fixture(scope="module")
def sam_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sam")
    return {
        "sam": tiny_sam(root / "sam"),
        "sam_hq": tiny_sam(root / "sam_hq", hq=True),
        "sam2": tiny_sam2(root / "sam2"),
    }


# Keep every candidate: random weights predict low IoUs and unstable masks.
OPEN = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}


@pytest.mark.parametrize("kind", ["sam", "sam_hq", "sam2"])
def test_each_sam_class_loads_and_embeds_each_image_once(sam_folders, kind):
    from autolabel.models.sam import load_sam
    from autolabel.refine.sam import automatic_masks
    from autolabel.toyworld.scenes import make_scene

    sam = load_sam(str(sam_folders[kind]), "cpu")
    assert sam.kind == kind
    calls = []
    original = sam.model.get_image_embeddings

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    sam.model.get_image_embeddings = counted
    try:
        settings = SamSettings(**OPEN, points_per_batch=3)  # 16 points: 6 decoder batches
        image = make_scene(5, 0, 96).image
        masks, predicted = automatic_masks(sam, image, settings)
    finally:
        sam.model.get_image_embeddings = original
    assert len(calls) == 1
    assert masks.shape[1:] == (96, 96) and len(masks) == len(predicted) > 0


def test_run_with_refine_sam_end_to_end(sam_folders, tmp_path):
    import json

    from autolabel.cli import main
    from autolabel.toyworld.export import write_dataset

    write_dataset(tmp_path / "scenes", 2, 91, 64)
    out = tmp_path / "out"
    args = [
        "run", str(tmp_path / "scenes" / "images"), "-v", str(tmp_path / "scenes" / "vocab.txt"),
        "-o", str(out), "--model", "toy", "-m", "fast", "--refine", "sam",
        "--sam-model", str(sam_folders["sam2"]),
    ]  # fmt: skip
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["refine"] == "sam" and run["sam"]["model"] == str(sam_folders["sam2"])
    assert run["models"]["sam_class"] == "Sam2Model"
    assert json.loads((out / "annotations.json").read_text())["images"]


def test_sam_load_errors_name_the_option(tmp_path, monkeypatch, sam_folders):
    import huggingface_hub.constants

    from autolabel.models.sam import load_sam

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="could not fetch weights") as info:
        load_sam("autolabel-tests/no-such-sam", "cpu")
    assert "--sam-model DIR" in str(info.value) and "save_pretrained" in str(info.value)
    with pytest.raises(ModelLoadError, match="--sam-model .*no such folder"):
        load_sam(str(tmp_path / "nothing" / "here"), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="--sam-model .*no config.json"):
        load_sam(str(tmp_path / "empty"), "cpu")


def test_a_bad_sam_setting_fails_before_anything_is_written(tmp_path):
    from autolabel.api import Labeler

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: fast\nmodel: toy\nsam: {iom_thres: 1.5}\n")
    with pytest.raises(UsageError, match="sam.iom_thres"):
        Labeler(["red circle"], recipe=str(recipe), refine="sam", lazy=True)
    with pytest.raises(UsageError, match="--refine"):
        Labeler(["red circle"], model="toy", method="fast", refine="sharpen", lazy=True)


def test_refine_switches_each_methods_crf_and_is_recorded(sam_folders):
    from autolabel.api import Labeler

    fast = Labeler(["red circle"], model="toy", method="fast", refine="crf", lazy=True)
    assert fast.settings["crf"] is True and fast.sam is None
    car = Labeler(["red circle"], model="toy", refine="sam", sam_model="toy", lazy=True)
    assert car.settings["crf"] is False and car.sam.model == "toy"
    assert car.identity()["refine"] == "sam" and car.identity()["sam"]["model"] == "toy"
    default = Labeler(["red circle"], model="toy", lazy=True)
    assert "crf" not in default.settings and "refine" not in default.identity()
