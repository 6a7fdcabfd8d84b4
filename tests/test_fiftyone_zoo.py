"""autolabel as a remotely-sourced FiftyOne zoo model: integrations/fiftyone registered from an
archive served on loopback, loaded with foz.load_zoo_model and run with apply_model on a real
database; its masks equal `autolabel run`'s and the segment operator's."""

from __future__ import annotations

import functools
import json
import os
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

import autolabel
from autolabel.errors import UsageError
from autolabel.io.png import read_label_png
from autolabel.toyworld.scenes import CLASSES, make_scene

pytest_plugins = ["fo_support"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "integrations" / "fiftyone"
MANIFEST = json.loads((PLUGIN_DIR / "manifest.json").read_text())
PLUGIN_NAME = yaml.safe_load((PLUGIN_DIR / "fiftyone.yml").read_text())["name"]
# FiftyOne imports the source's __init__.py under the manifest name, dots for slashes.
ZOO_MODULE = MANIFEST["name"].replace("/", ".")
SCENES = 4
TOY = {"model": "toy", "device": "cpu"}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _add_folder(add: object, folder: Path, prefix: str) -> None:
    """Every file of the plugin folder (no bytecode) under `prefix` in an archive."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            add(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """integrations/fiftyone as a zip archive, and as a repository-shaped tar.gz (the folder at
    its path in this repository), served over HTTP on loopback; yields the base URL."""
    root = tmp_path_factory.mktemp("served")
    with zipfile.ZipFile(root / "autolabel-fiftyone.zip", "w") as archive:
        _add_folder(archive.write, PLUGIN_DIR, "autolabel-fiftyone")
    with tarfile.open(root / "autolabel-main.tar.gz", "w:gz") as archive:
        archive.add(ROOT / "pyproject.toml", "autolabel-main/pyproject.toml")
        _add_folder(archive.add, PLUGIN_DIR, "autolabel-main/integrations/fiftyone")
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = {key: os.environ.get(key) for key in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def zoo_source(fo: ModuleType, served: str) -> Iterator[str]:
    """The zip archive's URL, registered as a zoo model source; deleted again afterwards."""
    import fiftyone.zoo as foz

    url = f"{served}/autolabel-fiftyone.zip"
    foz.register_zoo_model_source(url)
    try:
        yield url
    finally:
        foz.delete_zoo_model_source(url)
        sys.modules.pop(ZOO_MODULE, None)
    assert url not in foz.list_zoo_model_sources()
    assert not (Path(fo.config.model_zoo_dir) / MANIFEST["name"]).exists()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy-world scenes saved as PNG files."""
    folder = tmp_path_factory.mktemp("scenes")
    for index in range(SCENES):
        Image.fromarray(make_scene(5, index).image).save(folder / f"scene_{index}.png")
    return folder


@pytest.fixture(scope="module")
def zoo_model(zoo_source: str) -> object:
    import fiftyone.zoo as foz

    return foz.load_zoo_model("autolabel-fast", classes=list(CLASSES), **TOY)


def _dataset(fo: ModuleType, folder: Path, name: str) -> object:
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in sorted(folder.glob("*.png"))])
    return dataset


def _label_map(detections: object, size: tuple[int, int]) -> np.ndarray:
    """The detections' masks pasted into an H x W map of vocabulary class ids."""
    from autolabel.sinks.fiftyone import detection_mask

    labels = np.zeros(size, dtype=np.uint8)
    for det in detections.detections:
        labels[detection_mask(det, size)] = CLASSES.index(det.label) + 1
    return labels


def _same_detections(a: object, b: object) -> bool:
    pairs = list(zip(a.detections, b.detections, strict=True))
    return all(
        (x.label, x.bounding_box, x.confidence) == (y.label, y.bounding_box, y.confidence)
        and np.array_equal(x.mask, y.mask)
        for x, y in pairs
    )


def test_manifest_names_the_zoo_models_and_fiftyone_finds_it_in_this_repository(
    fo: ModuleType,
) -> None:
    """A GitHub URL of this repository downloads the whole tree, which FiftyOne searches for
    manifest.json files: it must find exactly the one in integrations/fiftyone."""
    from fiftyone.zoo.models import _iter_model_manifests

    from autolabel.sinks.fiftyone import ZOO_MODELS

    assert [m["base_name"] for m in MANIFEST["models"]] == list(ZOO_MODELS)
    # The zoo imports the folder's __init__.py under this name: never the package's own.
    assert ZOO_MODULE.split(".")[0] != "autolabel"
    found = [Path(p).resolve() for p in _iter_model_manifests(root_dir=str(ROOT))]
    assert found == [PLUGIN_DIR / "manifest.json"]


def test_registered_archive_lists_the_models_and_the_plugin_still_loads(
    fo: ModuleType, zoo_source: str
) -> None:
    import fiftyone.plugins as fop
    import fiftyone.zoo as foz

    from autolabel.sinks.fiftyone import ZOO_MODELS

    assert zoo_source in foz.list_zoo_model_sources()
    assert foz.list_zoo_models(source=zoo_source) == sorted(ZOO_MODELS)
    assert PLUGIN_NAME in [p.name for p in fop.list_plugins()]


def test_zoo_model_masks_equal_autolabel_run_and_the_segment_operator(
    fo: ModuleType, zoo_model: object, scenes: Path, dataset_name: str, tmp_path: Path
) -> None:
    import fiftyone.operators as foo
    import fiftyone.zoo as foz

    from autolabel import Labeler
    from autolabel.sinks.fiftyone import LabelerModel

    assert sys.modules["autolabel"] is autolabel  # the zoo module did not replace the package
    assert isinstance(zoo_model, LabelerModel)
    assert zoo_model.labeler.method == "fast" and zoo_model.classes == list(CLASSES)
    assert foz.is_zoo_model_downloaded("autolabel-fast")
    marker = json.loads(Path(foz.find_zoo_model("autolabel-fast")).read_text())
    assert marker["method"] == "fast"

    dataset = _dataset(fo, scenes, dataset_name)
    batches = []
    predict_all = zoo_model.predict_all

    def counting(args: object, samples: object = None) -> list:
        batches.append(len(samples))
        return predict_all(args, samples=samples)

    zoo_model.predict_all = counting
    try:
        dataset.apply_model(zoo_model, label_field="zoo", batch_size=2, skip_failures=False)
    finally:
        del zoo_model.predict_all
    assert batches == [2, 2]

    out = tmp_path / "run"
    Labeler(list(CLASSES), method="fast", **TOY).label_folder(scenes, out)
    annotations = json.loads((out / "annotations.json").read_text())
    counts = {image["file_name"]: 0 for image in annotations["images"]}
    file_names = {image["id"]: image["file_name"] for image in annotations["images"]}
    for ann in annotations["annotations"]:
        counts[file_names[ann["image_id"]]] += 1
    priorities = {image["file_name"]: image["priority"] for image in annotations["images"]}
    detected = 0
    for sample in dataset:
        name = Path(sample.filepath).name
        expected = read_label_png(out / "masks" / name)
        assert isinstance(sample.zoo, fo.Detections)
        assert sample.zoo.priority == priorities[name]  # review priority rides on the label
        assert len(sample.zoo.detections) == counts[name]
        assert {d.label for d in sample.zoo.detections} <= set(CLASSES)
        assert all(0.0 <= d.confidence <= 1.0 for d in sample.zoo.detections)
        assert np.array_equal(_label_map(sample.zoo, expected.shape), expected)
        detected += len(sample.zoo.detections)
    assert detected == len(annotations["annotations"]) > 0
    first = dataset.sort_by("zoo.priority", reverse=True).first()
    assert first.zoo.priority == max(priorities.values())

    params = {"vocabulary": "\n".join(CLASSES), "method": "fast", "field": "operator", **TOY}
    result = foo.execute_operator(
        f"{PLUGIN_NAME}/segment", ctx={"dataset": dataset, "params": {**params, "batch_size": 2}}
    )
    assert result.error is None, result.error

    # output="both": the segment operator's two fields, from the same loaded Labeler.
    dataset.apply_model(LabelerModel(zoo_model.labeler, "both"), label_field="both", batch_size=2)
    for sample in dataset:
        assert _same_detections(sample.zoo, sample.operator_instances)
        assert _same_detections(sample.both_instances, sample.operator_instances)
        assert np.array_equal(sample.both_semantic.mask, sample.operator_semantic.mask)


def test_zoo_model_predicts_arrays_and_reports_a_bad_image(
    zoo_model: object, caplog: pytest.LogCaptureFixture
) -> None:
    from autolabel.sinks.fiftyone import LabelerModel

    scene = make_scene(5, 0).image
    semantic = LabelerModel(zoo_model.labeler, "segmentation")
    expected = zoo_model.labeler.label(scene).label_map
    assert np.array_equal(semantic.predict(scene).mask, expected)
    assert semantic.mask_targets == {i + 1: name for i, name in enumerate(CLASSES)}

    with caplog.at_level("WARNING"):
        labels = zoo_model.predict_all([scene, np.zeros((0, 4, 3), np.uint8)])
    assert labels[1] is None and "no pixels" in caplog.text
    assert np.array_equal(_label_map(labels[0], expected.shape), expected)


def test_zoo_model_options_are_checked_before_anything_loads(zoo_source: str) -> None:
    import fiftyone.zoo as foz

    with pytest.raises(UsageError, match="give the classes"):
        foz.load_zoo_model("autolabel-car", **TOY)
    with pytest.raises(UsageError, match="runs method 'car', not 'fast'"):
        foz.load_zoo_model("autolabel-car", classes=["cat"], method="fast", **TOY)
    with pytest.raises(UsageError, match="is for method 'car'"):
        foz.load_zoo_model("autolabel-fast", classes=["cat"], recipe="toy", **TOY)
    with pytest.raises(UsageError, match="appears twice"):
        foz.load_zoo_model("autolabel-fast", classes=["cat", "cat"], **TOY)
    with pytest.raises(UsageError, match="output 'masks'"):
        foz.load_zoo_model("autolabel-fast", classes=["cat"], output="masks", **TOY)
    car = foz.load_zoo_model("autolabel-car", classes=["cat", "dog: puppy"], **TOY)
    assert (car.labeler.method, car.labeler.recipe, car.labeler.loaded) == ("car", "toy", False)


def test_zoo_form_hooks_for_the_apply_zoo_model_operator(zoo_source: str) -> None:
    """FiftyOne's "Apply zoo model" operator shows resolve_input's form and passes its values
    through parse_parameters to load_zoo_model."""
    import fiftyone.zoo as foz

    remote = foz.get_zoo_model("autolabel-fast")
    ctx = SimpleNamespace(params={"remote_params": {"classes": "cat\ncat", "recipe": "toy"}})
    form = remote.resolve_input(ctx).type.properties
    assert form["classes"].invalid and "appears twice" in form["classes"].error_message
    assert form["recipe"].invalid and "is for method 'car'" in form["recipe"].error_message

    params = {"classes": "cat\ndog: puppy\n", "recipe": "", "device": "cpu", "max_side": None}
    remote.parse_parameters(ctx, params)
    assert params == {"classes": ["cat", "dog: puppy"], "device": "cpu"}


def test_repository_shaped_archive_registers_too(
    fo: ModuleType, served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder at its path inside a repository archive (what a GitHub URL downloads)."""
    import fiftyone.zoo as foz

    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    url = f"{served}/autolabel-main.tar.gz"
    foz.register_zoo_model_source(url)
    try:
        assert foz.list_zoo_models(source=url) == [
            "autolabel-car",
            "autolabel-fast",
            "autolabel-pnp",
        ]
        model = foz.load_zoo_model("autolabel-pnp", classes=["cat"], recipe="toy-pnp", device="cpu")
        assert model.labeler.method == "pnp" and not model.labeler.loaded
    finally:
        foz.delete_zoo_model_source(url)
        sys.modules.pop(ZOO_MODULE, None)
    assert url not in foz.list_zoo_model_sources()


def test_a_copy_in_the_model_zoo_folder_needs_no_registration(
    fo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, from a checkout: the folder copied to <model_zoo_dir>/<manifest name>."""
    import shutil

    import fiftyone.zoo as foz

    zoo = tmp_path / "zoo"
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(zoo))
    copy = zoo / MANIFEST["name"]
    shutil.copytree(PLUGIN_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        assert foz.list_zoo_models(tags="autolabel") == sorted(
            m["base_name"] for m in MANIFEST["models"]
        )
        model = foz.load_zoo_model("autolabel-fast", classes=["red circle"], **TOY)
        assert model.labeler.method == "fast"
        assert (copy / "autolabel-fast.json").is_file()  # the marker goes to the copy
    finally:
        sys.modules.pop(ZOO_MODULE, None)
    assert not (PLUGIN_DIR / "autolabel-fast.json").exists()
