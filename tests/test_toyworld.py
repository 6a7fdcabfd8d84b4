"""Toy-world scene generator and `autolabel toyworld generate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.cli import main
from autolabel.instances import Instance
from autolabel.toyworld.export import vocab_text, write_dataset
from autolabel.toyworld.scenes import (
    BACKGROUND_WORDS,
    CLASSES,
    COLOURS,
    SHAPES,
    ToyObject,
    describe,
    make_scene,
    shape_mask,
)
from autolabel.vocab import load_vocabulary, parse_vocabulary


def test_sixteen_colour_shape_classes_in_a_fixed_order() -> None:
    assert len(COLOURS) >= 4 and len(SHAPES) >= 4
    assert len(CLASSES) == len(COLOURS) * len(SHAPES) == 16
    assert CLASSES[0] == "red circle" and CLASSES[-1] == "yellow star"


def test_scenes_are_deterministic_by_seed_and_index() -> None:
    a, b = make_scene(3, 7), make_scene(3, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.captions == b.captions
    other = make_scene(4, 7)
    assert not np.array_equal(a.image, other.image)


def test_scene_contents_follow_the_spec() -> None:
    counts = []
    for i in range(40):
        scene = make_scene(11, i, size=96)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert scene.labels.shape == (96, 96)
        assert 1 <= len(scene.objects) <= 5  # up to 4 classes, one of them maybe twice
        assert len(scene.masks) == len(scene.objects)
        # Every object listed is visible and every labelled class is a listed object.
        assert sorted({o.class_id for o in scene.objects}) == scene.present
        for obj in scene.objects:
            assert obj.name in scene.captions[0]
        counts.append(len(scene.objects))
    assert min(counts) == 1 and max(counts) >= 3


def test_about_half_the_scenes_hold_touching_twins_of_one_class() -> None:
    from scipy import ndimage

    twins = 0
    for i in range(60):
        scene = make_scene(12, i, size=128)
        ids = [o.class_id for o in scene.objects]
        # Instances tile their class: the union of a class's instances is its label region.
        for k in set(ids):
            union = np.any(
                [m for o, m in zip(scene.objects, scene.masks, strict=True) if o.class_id == k], 0
            )
            assert np.array_equal(union, scene.labels == k)
        repeated = [k for k in set(ids) if ids.count(k) == 2]
        for k in repeated:
            a, b = (m for o, m in zip(scene.objects, scene.masks, strict=True) if o.class_id == k)
            assert not (a & b).any()
            # They touch (within 2 px): one connected region or nearly so.
            assert (ndimage.binary_dilation(a, iterations=3) & b).any()
        twins += bool(repeated)
    assert 20 <= twins <= 40


def test_twins_leave_the_other_objects_of_a_scene_as_they_were(monkeypatch) -> None:
    from autolabel.toyworld import scenes

    with_twin = make_scene(12, 1)  # [4, 10, 4]: a twin of class 4, painted last
    monkeypatch.setattr(scenes, "TWIN_PROB", 0.0)
    without = make_scene(12, 1)
    assert with_twin.objects[:-1] == without.objects
    assert with_twin.objects[-1].class_id == 4
    outside = ~with_twin.masks[-1]
    assert np.array_equal(with_twin.image[outside], without.image[outside])


def test_label_map_marks_exactly_the_painted_shape() -> None:
    """Pixels labelled k carry the class colour; a lone object's mask is its polygon."""
    for i in range(30):
        scene = make_scene(5, i)
        for obj in scene.objects:
            pixels = scene.image[scene.labels == obj.class_id].astype(float)
            colour = np.array(COLOURS[obj.name.split()[0]], float)
            mean = pixels.mean(0)
            assert mean @ colour / np.linalg.norm(mean) / np.linalg.norm(colour) > 0.95, obj.name
        if len(scene.objects) == 1:
            obj = scene.objects[0]
            assert np.array_equal(scene.labels > 0, shape_mask(obj, scene.labels.shape[0]))


def test_each_shape_has_its_own_surface_finish() -> None:
    """Circles are plain; squares, triangles and stars carry stripes, dots and checks."""
    dark: dict[str, list[float]] = {s: [] for s in SHAPES}
    for i in range(60):
        scene = make_scene(8, i)
        for obj in scene.objects:
            value = scene.image[scene.labels == obj.class_id].astype(float).max(axis=1)
            dark[obj.name.split()[1]].append(float((value < 0.75 * np.median(value)).mean()))
    assert max(dark["circle"]) < 0.05
    for shape in ("square", "triangle", "star"):
        assert 0.2 < np.mean(dark[shape]) < 0.6, shape


def test_shapes_differ_in_area_as_geometry_says() -> None:
    areas = {}
    for k, shape in enumerate(SHAPES):
        areas[shape] = shape_mask(ToyObject(k + 1, (64.0, 64.0), 40.0, 0.0), 128).sum()
    assert areas["circle"] == pytest.approx(np.pi * 40**2, rel=0.03)
    assert areas["square"] == pytest.approx(2 * 40**2, rel=0.03)
    assert areas["triangle"] == pytest.approx(3 * np.sqrt(3) / 4 * 40**2, rel=0.05)
    star = 10 * 0.5 * 40 * (0.45 * 40) * np.sin(np.pi / 5)
    assert areas["star"] == pytest.approx(star, rel=0.05)


def test_describe_lists_objects_in_english() -> None:
    assert describe(["red circle"]) == "a red circle"
    assert describe(["red circle", "blue star", "green square"]) == (
        "a red circle, a blue star and a green square"
    )


def test_vocab_file_parses_to_classes_in_id_order_with_toy_background() -> None:
    vocab = parse_vocabulary(vocab_text())
    assert vocab.names == list(CLASSES)
    assert vocab.background == BACKGROUND_WORDS


def test_generate_command_writes_images_masks_and_vocab(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    assert main(["toyworld", "generate", str(out), "--n", "3", "--seed", "9", "--size", "64"]) == 0
    images = sorted(p.name for p in (out / "images").iterdir())
    assert (
        images
        == sorted(p.name for p in (out / "masks").iterdir())
        == [
            "00000.png",
            "00001.png",
            "00002.png",
        ]
    )
    vocab = load_vocabulary(out / "vocab.txt")
    assert vocab.names == list(CLASSES)
    for i, name in enumerate(images):
        scene = make_scene(9, i, 64)
        assert np.array_equal(np.asarray(Image.open(out / "images" / name)), scene.image)
        assert np.array_equal(np.asarray(Image.open(out / "masks" / name)), scene.labels)
    # Instance ground truth: COCO RLE, one annotation per visible object, vocab.txt's ids.
    from autolabel.io.coco import read_coco

    coco = read_coco(out / "instances.json")
    assert coco.names == list(CLASSES)
    for i, image in enumerate(coco.images):
        scene = make_scene(9, i, 64)
        anns = coco.annotations[image["id"]]
        assert [a["category_id"] for a in anns] == [o.class_id for o in scene.objects]
        for ann, mask in zip(anns, scene.masks, strict=True):
            assert np.array_equal(Instance.from_dict(ann).mask, mask)
    # Refuses to mix with an earlier dataset unless asked to.
    assert main(["toyworld", "generate", str(out), "--n", "2"]) == 2
    assert main(["toyworld", "generate", str(out), "--n", "2", "--overwrite"]) == 0


def test_write_dataset_rejects_bad_counts(tmp_path: Path) -> None:
    from autolabel.errors import UsageError

    with pytest.raises(UsageError, match="--n 0"):
        write_dataset(tmp_path, 0, 0, 64)
    with pytest.raises(UsageError, match="--size 8"):
        write_dataset(tmp_path, 1, 0, 8)


def test_demo_labels_toy_scenes_offline_and_says_where_to_look(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    labels = out / "labels"
    masks = sorted(p.name for p in (labels / "masks").iterdir())
    assert masks == sorted(p.name for p in (out / "scenes" / "images").iterdir())
    assert len(list((labels / "previews").iterdir())) == len(masks)
    assert (labels / "annotations.json").is_file()
    assert "mIoU" in text and str(labels / "previews") in text


def test_demo_runs_fast_with_the_toy_models_own_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu", "--method", "fast"]) == 0
    info = json.loads((out / "labels" / "run.json").read_text())
    assert info["method"] == "fast" and info["recipe"] == "toy-fast"
    miou = float(re.search(r"mIoU ([0-9.]+)", capsys.readouterr().out).group(1))
    assert miou > 0.6


def test_demo_pnp_asks_for_blip_not_for_another_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu", "--method", "pnp"]) == 2
    text = capsys.readouterr().err
    assert "blip" in text.lower() and "is for method" not in text
    assert not (out / "labels").exists()  # nothing written before the run could start


def test_training_is_deterministic_and_its_weights_load_through_open_clip(tmp_path: Path) -> None:
    import torch

    from autolabel.models.clip import load_clip
    from autolabel.toyworld.train import TrainSettings, train

    settings = TrainSettings(steps=2, batch_size=4, pool=8, warmup=1)
    for name in ("a", "b"):
        train(settings, tmp_path / name, log=lambda line: None)
    a = torch.load(tmp_path / "a" / "toy.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "toy.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    trained = load_clip("toy", checkpoint=str(tmp_path / "a" / "toy.pt"))
    assert torch.equal(trained.model.visual.proj, a["visual.proj"].float())
    shipped = load_clip("toy")
    assert not torch.equal(shipped.model.visual.proj, trained.model.visual.proj)


def test_fast_on_the_toy_model_keeps_toy_scenes_at_their_size() -> None:
    from autolabel.methods.dense import DenseSettings

    assert DenseSettings.from_dict({"model": "toy"}).short_side is None
    assert DenseSettings.from_dict({"model": "toy", "short_side": 256}).short_side == 256
    assert DenseSettings.from_dict({"model": "ViT-B-16"}).short_side == 336


@pytest.mark.parametrize("command", ["train", "train-sam"])
def test_training_commands_refuse_zero_steps_before_writing(command: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert main(["toyworld", command, str(out), "--steps", "0"]) == 2
    assert not out.exists()


def test_train_sam_refuses_a_folder_that_is_no_coarse_stage_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    shipped = Path(__file__).parent.parent / "autolabel" / "assets" / "toy_sam"
    for coarse, problem in ((tmp_path / "missing", "not a coarse toy SAM"), (shipped, "4 px")):
        assert main(["toyworld", "train-sam", str(out), "--coarse", str(coarse)]) == 2
        assert problem in capsys.readouterr().err
        assert not out.exists()


def test_train_sam_trains_every_part_in_both_stages_and_is_deterministic(tmp_path: Path) -> None:
    """Each stage moves the image encoder, prompt encoder and mask decoder alike (transformers'
    get_image_embeddings runs under no_grad and once froze the encoder); a rerun with the same
    seed writes the same weights, and so does sharpening the first run's coarse stage again."""
    import torch
    from safetensors.torch import load_file
    from transformers import SamModel

    from autolabel.toyworld.train_sam import (
        COARSE_PATCH,
        PATCH,
        SamTrainSettings,
        sharpen,
        toy_sam_config,
        train_sam,
    )

    settings = SamTrainSettings(
        steps=2, batch_size=2, prompts=2, warmup=1, fine_steps=2, fine_prompts=2, fine_warmup=1
    )
    for out in (tmp_path / "a", tmp_path / "b"):
        train_sam(settings, out, log=lambda line: None)
    train_sam(settings, tmp_path / "c", log=lambda line: None, coarse=tmp_path / "a" / "coarse")
    a, b, c = (load_file(tmp_path / run / "model.safetensors") for run in "abc")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert SamModel.from_pretrained(tmp_path / "a").config.vision_config.patch_size == PATCH
    record = json.loads((tmp_path / "a" / "training.json").read_text())["final"]
    assert record["wall_minutes"] > record["fine"]["wall_minutes"] > 0

    torch.manual_seed(settings.seed)
    starts = {
        "coarse": SamModel(toy_sam_config(COARSE_PATCH)).state_dict(),
        ".": sharpen(SamModel.from_pretrained(tmp_path / "a" / "coarse")).state_dict(),
    }
    for stage, initial in starts.items():
        trained = load_file(tmp_path / "a" / stage / "model.safetensors")
        for part in ("vision_encoder.layers.0.", "prompt_encoder.", "mask_decoder."):
            moved = [
                k for k in trained if k.startswith(part) and not torch.equal(trained[k], initial[k])
            ]
            assert moved, (stage, part)


def test_sharpen_sees_each_scene_as_the_coarse_model_sees_it_at_twice_the_size() -> None:
    import torch
    from transformers import SamModel

    from autolabel.toyworld.train_sam import COARSE_PATCH, sharpen, toy_sam_config

    torch.manual_seed(0)
    coarse = SamModel(toy_sam_config(COARSE_PATCH))
    fine = sharpen(coarse)
    image = torch.rand(1, 3, 128, 128)
    twice = torch.nn.functional.interpolate(image, scale_factor=2, mode="nearest")
    embed = fine.vision_encoder.patch_embed.projection(image)
    assert torch.allclose(embed, coarse.vision_encoder.patch_embed.projection(twice), atol=1e-5)
    # A relative distance of d coarse tokens is 2d fine ones, in windowed and global blocks.
    old = coarse.vision_encoder.layers[0].attn.rel_pos_h  # 31 rows: distances -15..15
    windowed, full = (fine.vision_encoder.layers[i].attn.rel_pos_h for i in (0, 1))
    assert (len(windowed), len(full)) == (15, 63)  # distances -7..7 and -31..31
    for table in (windowed, full):
        centre = len(table) // 2
        for d in (-3, 1, 3):
            assert torch.allclose(table[centre + 2 * d], old[15 + d])
    assert torch.allclose(full[0], old[0]) and torch.allclose(full[-1], old[-1])
