"""The Python API: Labeler, Instances, and nothing written before a run can start."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel import ImageError, Instances, Labeler, ModelLoadError, UsageError, Vocabulary
from autolabel.io.png import read_label_png
from autolabel.toyworld.scenes import make_scene

README = Path(__file__).resolve().parent.parent / "README.md"
TOY_VOCAB = ["red circle", "blue square: blue box", "green triangle"]


@pytest.fixture(scope="module")
def toy_labeler() -> Labeler:
    """The bundled toy model with its own fast recipe (loaded once for the module)."""
    return Labeler(TOY_VOCAB, method="fast", model="toy", device="cpu")


def test_label_returns_instances_in_every_input_form(toy_labeler: Labeler, tmp_path: Path) -> None:
    scene = make_scene(5, 0)
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    from_array = toy_labeler.label(scene.image)
    from_path = toy_labeler.label(path)
    from_pil = toy_labeler.label(Image.open(path))
    assert isinstance(from_array, Instances) and len(from_array) > 0
    for other in (from_path, from_pil):
        assert np.array_equal(other.label_map, from_array.label_map)
    labels = from_array.label_map
    assert labels.shape == scene.image.shape[:2] and labels.dtype == np.uint8
    for inst in from_array:
        assert inst.name == from_array.names[inst.category_id - 1]
        assert inst.mask.shape == labels.shape and inst.mask.dtype == bool
        assert inst.area == int(inst.mask.sum())
        x, y, w, h = inst.bbox
        rows, cols = np.nonzero(inst.mask)
        assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
        assert np.all(labels[inst.mask] == inst.category_id)


def test_label_matches_autolabel_run_pixels_and_coco(toy_labeler: Labeler, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(make_scene(11, i).image).save(folder / f"s{i}.png")
    summary = toy_labeler.label_folder(folder, tmp_path / "out")
    assert summary.ok == 3
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    for image in coco["images"]:
        result = toy_labeler.label(folder / image["file_name"])
        written = read_label_png(tmp_path / "out" / "masks" / image["file_name"])
        assert np.array_equal(result.label_map, written)
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        got = result.to_coco(image_id=image["id"], first_id=expected[0]["id"] if expected else 1)
        assert got == expected


def test_vocabulary_forms_agree(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("\n".join(TOY_VOCAB))
    kwargs = {"method": "fast", "model": "toy", "device": "cpu", "lazy": True}
    from_list = Labeler(TOY_VOCAB, **kwargs).vocabulary
    assert Labeler(path, **kwargs).vocabulary == from_list
    assert Labeler(str(path), **kwargs).vocabulary == from_list
    assert Labeler(from_list, **kwargs).vocabulary == from_list
    assert from_list.classes[1].synonyms == ("blue box",)
    with pytest.raises(UsageError, match="vocabulary"):
        Labeler(42, **kwargs)  # type: ignore[arg-type]


def test_models_load_once_and_with_vocabulary_shares_them(toy_labeler: Labeler) -> None:
    segmenter = toy_labeler.load()
    assert toy_labeler.load() is segmenter
    other = toy_labeler.with_vocabulary(["yellow star"])
    assert other.load() is segmenter
    assert (
        other.vocabulary.names == ["yellow star"]
        and toy_labeler.vocabulary.names[0] == "red circle"
    )


def test_bad_images_raise_typed_errors(toy_labeler: Labeler, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.jpg") as info:
        toy_labeler.label(broken)
    assert info.value.stage == "load"
    with pytest.raises(UsageError, match="uint8"):
        toy_labeler.label(np.zeros((8, 8, 3), dtype=np.float32))


def test_toy_model_warns_once_on_photos(tmp_path: Path) -> None:
    labeler = Labeler(TOY_VOCAB, method="fast", model="toy", device="cpu")
    photo = np.full((60, 90, 3), 128, dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labeler.label(make_scene(1, 0).image)  # a toy scene: no warning
        labeler.label(photo)
        labeler.label(photo)
    messages = [str(w.message) for w in caught if "toy model only knows" in str(w.message)]
    assert len(messages) == 1


def test_toy_model_brings_its_recipe_for_each_method() -> None:
    car = Labeler(TOY_VOCAB, method="car", model="toy", device="cpu", lazy=True)
    assert car.recipe == "toy" and car.settings["refine_cams"] is False
    fast = Labeler(TOY_VOCAB, method="fast", model="toy", device="cpu", lazy=True)
    assert fast.recipe == "toy-fast"
    explicit = Labeler(TOY_VOCAB, method="car", model="toy", recipe="car", lazy=True)
    assert explicit.recipe == "car"


def test_default_background_gives_way_to_classes(tmp_path: Path) -> None:
    # ViT-B-16 is only named (lazy: nothing loads); its recipe-free runs use the default list.
    labeler = Labeler(["car", "road", "sky", "tree"], method="fast", model="ViT-B-16", lazy=True)
    assert not {"road", "sky", "tree"} & set(labeler.vocabulary.background)
    assert "wall" in labeler.vocabulary.background
    assert "road" in labeler.vocabulary.background_note()
    with pytest.raises(UsageError, match="sky"):
        Vocabulary.from_names(["sky"]).with_background(("sky", "wall"))
    path = tmp_path / "v.txt"
    path.write_text("sky\n!background: sky, wall\n")
    with pytest.raises(UsageError, match="sky"):
        Labeler(path, method="fast", model="toy", lazy=True)


def test_background_note_reaches_the_run_summary(
    tmp_path: Path, image_folder: Path, tiny_recipe: Path
) -> None:
    labeler = Labeler(["red square", "road"], recipe=str(tiny_recipe), device="cpu")
    summary = labeler.label_folder(image_folder, tmp_path / "out")
    assert [w for w in summary.warnings if "road" in w] and len(summary.warnings) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "sam"}, "unknown method"),
        ({"device": "cuda:7"}, "cuda"),
        ({"settings": {"short_sid": 64}}, "short_sid"),
        ({"settings": {"window_batch": 0}}, "window_batch"),
        ({"max_side": 8}, "max-side"),
        ({"model": "RN50"}, "RN50"),
    ],
)
def test_bad_options_fail_before_anything_is_written(
    tmp_path: Path, options: dict, match: str
) -> None:
    import torch

    if options.get("device") == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    kwargs = {"method": "fast", "model": "toy", "device": "cpu", **options}
    with pytest.raises(UsageError, match=match):
        Labeler(TOY_VOCAB, **kwargs)


def test_failed_start_leaves_output_untouched_and_a_fixed_rerun_works(tmp_path: Path) -> None:
    """Offline weights (here: a missing checkpoint) fail at load; the folder is not created,
    so the corrected command can use it."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(make_scene(3, 0).image).save(folder / "a.png")
    out = tmp_path / "out"
    with pytest.raises((ModelLoadError, UsageError), match="missing.pt"):
        Labeler(
            TOY_VOCAB, method="fast", model="toy", checkpoint=tmp_path / "missing.pt", lazy=True
        ).label_folder(folder, out)
    assert not out.exists()
    summary = Labeler(TOY_VOCAB, method="fast", model="toy", device="cpu").label_folder(folder, out)
    assert summary.ok == 1


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example
    result = namespace["result"]
    assert isinstance(result, Instances) and len(result) > 0
    assert (tmp_path / "out" / "annotations.json").is_file()


def test_cli_recipe_typo_then_fixed_recipe_into_the_same_folder(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_recipe: Path
) -> None:
    """The reported sequence: a failed start must not leave a run identity behind."""
    from autolabel.cli import main

    out = tmp_path / "out"
    typo = tmp_path / "typo.yaml"
    typo.write_text(tiny_recipe.read_text().replace("short_side", "short_sid"))
    base = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(out), "--device"]
    assert main([*base, "cpu", "--recipe", str(typo)]) == 2
    assert main([*base, "cuda:7", "--recipe", str(tiny_recipe)]) == 2 or _has_cuda()
    assert not out.exists()
    assert main([*base, "cpu", "--recipe", str(tiny_recipe)]) == 0
    assert (out / "annotations.json").is_file()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.device_count() > 7
