"""`autolabel export`: each format read back by a reader that is not its writer.

The run is a real toy-model run (three classes, five images: PNG, JPEG, a subfolder, an EXIF-
rotated JPEG, one image without instances). Readers: FiftyOne's YOLOv5 importer (YOLO),
torchvision's VOCSegmentation and OpenCV's colour decode (VOC), FiftyOne's CVAT parser and CVAT
RLE decoder (CVAT), and LabelMe's own loading rules with Pillow rasterising as LabelMe does
(LabelMe; supervision's LabelMe loader as a second reader). Mask formats must match the run
exactly; polygons within IoU 0.95 per instance; class names and image sizes exactly.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.instances import Instance, Instances
from autolabel.io.export import export_run, instance_polygons
from autolabel.io.png import read_label_png
from autolabel.io.run_folder import RunImage, read_run

pytest_plugins = ["fo_support"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:fiftyone.server.scalars")

CLASSES = ["red circle", "blue square", "green triangle"]
# The Pascal VOC devkit's palette (VOCcode/VOClabelcolormap.m), first entries, written out.
VOC_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0),
]  # fmt: skip
MIN_IOU = 0.95


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the toy model over five images, one of them EXIF-rotated."""
    from autolabel import Labeler
    from autolabel.toyworld.scenes import make_scene

    base = tmp_path_factory.mktemp("export")
    images = base / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(make_scene(0, 14, 160).image).save(images / "a.png")
    Image.fromarray(make_scene(0, 19, 160).image[:, :120]).save(images / "b.jpg", quality=95)
    Image.fromarray(make_scene(0, 28, 160).image[:112]).save(images / "sub" / "c.png")
    Image.fromarray(make_scene(0, 1, 96).image).save(images / "sub" / "empty.png")
    # Stored sideways with EXIF orientation 6: upright it is 112 high and 160 wide.
    upright = Image.fromarray(make_scene(0, 19, 160).image[24:136])
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(
        images / "sub" / "rot.jpg", quality=95, exif=exif
    )
    out = base / "out"
    labeler = Labeler(CLASSES, method="fast", model="toy", device="cpu")
    summary = labeler.label_folder(images, out)
    assert summary.ok == 5 and not summary.failed
    return out


@pytest.fixture(scope="module")
def run_images(toy_run: Path) -> dict[str, RunImage]:
    """The run's images by file name without extension (the exported stem)."""
    run = read_run(toy_run)
    assert run.vocabulary.names == CLASSES
    images = {im.file_name.rsplit(".", 1)[0]: im for im in run.images}
    assert sum(len(im.instances) for im in images.values()) >= 8
    assert len(images["sub/empty"].instances) == 0
    return images


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _assert_polygons_match(found: list[tuple[str, np.ndarray]], instances: Instances) -> None:
    """Read-back (class name, mask) pairs against the run's instances, in order."""
    assert [name for name, _ in found] == [inst.name for inst in instances]
    for (_, mask), inst in zip(found, instances, strict=True):
        assert mask.shape == instances.size
        assert _iou(mask, inst.mask) >= MIN_IOU, (inst.name, inst.bbox, _iou(mask, inst.mask))


# --- YOLO ----------------------------------------------------------------------------------


def test_yolo_reads_back_with_fiftyone(toy_run, run_images, tmp_path, fiftyone_env) -> None:
    import fiftyone.core.metadata as fom
    import fiftyone.utils.yolo as fouy

    dest = tmp_path / "yolo"
    summary = export_run(toy_run, "yolo", dest)
    assert (summary.images, summary.instances) == (
        5,
        sum(len(i.instances) for i in run_images.values()),
    )
    assert summary.converted == ["sub/rot.jpg"]  # the rotated JPEG, written upright

    importer = fouy.YOLOv5DatasetImporter(
        dataset_dir=str(dest), yaml_path="data.yaml", split="train", label_type="polylines",
        include_all_data=True,
    )  # fmt: skip
    with importer:
        assert importer.get_dataset_info()["classes"] == CLASSES
        samples = list(importer)
    assert len(samples) == len(run_images)
    for image_path, _, polylines in samples:
        stem = Path(image_path).relative_to(dest / "images").as_posix().rsplit(".", 1)[0]
        image = run_images[stem]
        meta = fom.ImageMetadata.build_for(image_path)
        assert (meta.width, meta.height) == (image.width, image.height)
        found = []
        for polyline in polylines.polylines if polylines is not None else []:
            seg = polyline.to_segmentation(frame_size=(image.width, image.height), target=1)
            found.append((polyline.label, seg.mask.astype(bool)))
        _assert_polygons_match(found, image.instances)


# --- Pascal VOC ----------------------------------------------------------------------------


def test_voc_reads_back_pixel_exact_with_torchvision(toy_run, run_images, tmp_path) -> None:
    from torchvision.datasets import VOCSegmentation

    root = tmp_path / "voc"
    export_run(toy_run, "voc", root / "VOCdevkit" / "VOC2012")  # where torchvision looks
    dataset = VOCSegmentation(str(root), year="2012", image_set="train", download=False)
    assert len(dataset) == len(run_images)
    manifest = {
        row["file"].rsplit(".", 1)[0]: row["mask"]
        for row in map(json.loads, (toy_run / "manifest.jsonl").read_text().splitlines())
    }
    for index, image_file in enumerate(dataset.images):
        stem = Path(image_file).relative_to(root / "VOCdevkit/VOC2012/JPEGImages").as_posix()
        image = run_images[stem.removesuffix(".jpg")]
        instances = image.instances
        picture, target = dataset[index]
        assert picture.size == (image.width, image.height)
        classes = np.asarray(target)
        assert target.mode == "P"
        assert np.array_equal(classes, instances.label_map)
        assert np.array_equal(classes, read_label_png(toy_run / manifest[stem[:-4]]))
        # Object masks: decode the colours as VOC tools do, map them back through the palette.
        bgr = cv2.imread(dataset.masks[index].replace("SegmentationClass", "SegmentationObject"))
        colours = [tuple(c) for c in bgr[:, :, ::-1].reshape(-1, 3)]
        numbers = np.array([VOC_COLOURS.index(c) for c in colours]).reshape(classes.shape)
        assert numbers.max() == len(instances)
        for number, inst in enumerate(instances, 1):
            assert np.array_equal(numbers == number, inst.mask)
        # Class masks carry the VOC palette too: class 1 is (128, 0, 0), and so on.
        bgr = cv2.imread(dataset.masks[index])
        for class_id in range(len(CLASSES) + 1):
            assert (bgr[classes == class_id][:, ::-1] == VOC_COLOURS[class_id]).all()
    rows = (root / "VOCdevkit/VOC2012/labelmap.txt").read_text().splitlines()
    parsed = [line.split(":") for line in rows if not line.startswith("#")]
    assert [p[0] for p in parsed] == ["background", *CLASSES]
    colours = [tuple(int(v) for v in p[1].split(",")) for p in parsed]
    assert colours == VOC_COLOURS[: len(CLASSES) + 1]


# --- CVAT ----------------------------------------------------------------------------------


def _cvat_images(xml_path: Path, run_images: dict[str, RunImage]) -> dict[str, object]:
    """FiftyOne's CVAT parser: labels in order, every image by name with the run's size."""
    import fiftyone.utils.cvat as fouc

    _, task_labels, cvat_images = fouc.load_cvat_image_annotations(str(xml_path))
    assert [label["name"] for label in task_labels.labels] == CLASSES
    by_stem = {img.name.rsplit(".", 1)[0]: img for img in cvat_images}
    assert set(by_stem) == set(run_images)
    for stem, img in by_stem.items():
        assert (img.width, img.height) == (run_images[stem].width, run_images[stem].height)
        with Image.open(xml_path.parent / "images" / img.name) as im:
            assert ImageOps.exif_transpose(im).size == (img.width, img.height)
    return by_stem


def test_cvat_masks_read_back_exactly(toy_run, run_images, tmp_path, fiftyone_env) -> None:
    from fiftyone.utils.cvat import HasCVATBinaryMask

    dest = tmp_path / "cvat"
    export_run(toy_run, "cvat", dest)
    by_stem = _cvat_images(dest / "annotations.xml", run_images)
    root = ET.parse(dest / "annotations.xml").getroot()
    assert root.findtext("version") == "1.1"
    for element in root.iter("image"):
        image = run_images[element.get("name").rsplit(".", 1)[0]]
        assert not by_stem[element.get("name").rsplit(".", 1)[0]].polygons
        masks = element.findall("mask")
        assert [m.get("label") for m in masks] == [inst.name for inst in image.instances]
        for mask, inst in zip(masks, image.instances, strict=True):
            left, top, width, height = (
                int(mask.get(k)) for k in ("left", "top", "width", "height")
            )
            rle = [int(v) for v in mask.get("rle").split(",")]
            assert sum(rle) == width * height
            crop = HasCVATBinaryMask._rle_to_binary_image_mask(rle, width, height)
            full = np.zeros(image.size, dtype=bool)
            full[top : top + height, left : left + width] = crop.astype(bool)
            assert np.array_equal(full, inst.mask)


def test_cvat_polygons_read_back_with_fiftyone(toy_run, run_images, tmp_path, fiftyone_env) -> None:
    dest = tmp_path / "cvat"
    export_run(toy_run, "cvat", dest, cvat_shape="polygon")
    for stem, img in _cvat_images(dest / "annotations.xml", run_images).items():
        image = run_images[stem]
        found = []
        for polygon in img.polygons:
            polyline = polygon.to_polyline((img.width, img.height))
            polyline.filled = True
            seg = polyline.to_segmentation(frame_size=(img.width, img.height), target=1)
            found.append((polyline.label, seg.mask.astype(bool)))
        _assert_polygons_match(found, image.instances)


# --- LabelMe -------------------------------------------------------------------------------

LABELME_KEYS = {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
LABELME_SHAPE_KEYS = {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}


def _labelme_mask(size: tuple[int, int], points: list[list[float]]) -> np.ndarray:
    """A polygon filled as labelme.utils.shape_to_mask does: Pillow, outline and fill."""
    canvas = Image.fromarray(np.zeros(size, dtype=np.uint8))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], outline=1, fill=1)
    return np.asarray(canvas).astype(bool)


def test_labelme_reads_back_as_labelme_does(toy_run, run_images, tmp_path) -> None:
    dest = tmp_path / "labelme"
    export_run(toy_run, "labelme", dest)
    files = sorted(dest.rglob("*.json"))
    assert {p.relative_to(dest).as_posix()[:-5] for p in files} == set(run_images)
    for path in files:
        image = run_images[path.relative_to(dest).as_posix()[:-5]]
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert set(doc) == LABELME_KEYS and doc["imageData"] is None
        assert (doc["imageHeight"], doc["imageWidth"]) == image.size
        with Image.open(path.parent / doc["imagePath"]) as im:  # LabelMe applies EXIF
            assert ImageOps.exif_transpose(im).size == (image.width, image.height)
        groups: dict[object, tuple[str, np.ndarray]] = {}
        for index, shape in enumerate(doc["shapes"]):
            assert set(shape) == LABELME_SHAPE_KEYS and shape["shape_type"] == "polygon"
            assert len(shape["points"]) > 2
            assert all(
                len(p) == 2 and all(isinstance(v, float) for v in p) for p in shape["points"]
            )
            key = index if shape["group_id"] is None else ("group", shape["group_id"])
            mask = _labelme_mask(image.size, shape["points"])
            if key in groups:
                mask |= groups[key][1]
            groups[key] = (shape["label"], mask)
        _assert_polygons_match(list(groups.values()), image.instances)


def test_labelme_through_supervision_and_from_supervision(toy_run, run_images, tmp_path) -> None:
    """supervision's LabelMe loader (not the JSON writer) and Instances.from_supervision."""
    from supervision.dataset.formats.labelme import load_labelme_annotations

    dest = tmp_path / "labelme"
    export_run(toy_run, "labelme", dest)
    for folder in (dest, dest / "sub"):
        classes, paths, annotations = load_labelme_annotations(str(folder), str(folder), True)
        for image_path in paths:
            stem = Path(image_path).relative_to(dest).as_posix().rsplit(".", 1)[0]
            image = run_images[stem]
            back = Instances.from_supervision(annotations[image_path], classes, image.size)
            assert back.size == image.size
            _assert_polygons_match([(i.name, i.mask) for i in back], image.instances)


# --- supervision ---------------------------------------------------------------------------


def test_to_supervision_follows_supervision_conventions(run_images) -> None:
    import supervision as sv

    instances = run_images["a"].instances
    detections = instances.to_supervision()
    assert len(detections) == len(instances)
    masks = np.stack([inst.mask for inst in instances])
    assert np.array_equal(detections.mask, masks)
    # Far-edge boxes, as supervision computes them from the masks ("exclusive").
    expected = sv.mask_to_xyxy(masks, coordinate_convention="exclusive")
    assert np.array_equal(detections.xyxy, expected.astype(np.float32))
    assert detections.class_id.tolist() == [inst.category_id - 1 for inst in instances]
    assert list(detections.data["class_name"]) == [CLASSES[k] for k in detections.class_id]
    assert np.allclose(detections.confidence, [inst.score for inst in instances])
    scene = np.zeros((*instances.size, 3), dtype=np.uint8)
    assert sv.MaskAnnotator().annotate(scene.copy(), detections).any()

    back = Instances.from_supervision(detections, CLASSES)
    assert back.size == instances.size and back.names == CLASSES
    for a, b in zip(back, instances, strict=True):
        assert (a.category_id, a.rle, a.area, a.bbox) == (b.category_id, b.rle, b.area, b.bbox)
        assert a.score == pytest.approx(b.score, abs=1e-6)

    empty = run_images["sub/empty"].instances.to_supervision()
    assert len(empty) == 0 and empty.mask.shape == (0, 96, 96)
    assert len(Instances.from_supervision(empty, CLASSES)) == 0
    assert Instances.from_supervision(sv.Detections.empty(), CLASSES, (5, 7)).size == (5, 7)


def test_from_supervision_checks_classes() -> None:
    import supervision as sv

    mask = np.zeros((1, 6, 8), dtype=bool)
    mask[0, 1:3, 2:5] = True
    by_name = sv.Detections(
        xyxy=np.array([[2, 1, 5, 3]], dtype=np.float32),
        mask=mask,
        data={"class_name": np.array(["blue square"])},
    )
    (inst,) = Instances.from_supervision(by_name, CLASSES)
    assert (inst.category_id, inst.name, inst.area, inst.score) == (2, "blue square", 6, 1.0)
    both = sv.Detections(
        xyxy=by_name.xyxy, mask=mask, class_id=np.array([0]), data=dict(by_name.data)
    )
    with pytest.raises(ValueError, match="class_name"):
        Instances.from_supervision(both, CLASSES)
    with pytest.raises(ValueError, match="outside"):
        Instances.from_supervision(
            sv.Detections(by_name.xyxy, mask, class_id=np.array([3])), CLASSES
        )
    compact = sv.CompactMask.from_dense(mask, by_name.xyxy, image_shape=(6, 8))
    (inst,) = Instances.from_supervision(
        sv.Detections(by_name.xyxy, compact, class_id=np.array([2])), CLASSES
    )
    assert (inst.name, inst.area, inst.bbox) == ("green triangle", 6, [2.0, 1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="masks"):
        Instances.from_supervision(sv.Detections(by_name.xyxy, class_id=np.array([0])), CLASSES)


# --- geometry ------------------------------------------------------------------------------


def test_polygons_keep_holes_and_specks() -> None:
    """Rings, single pixels and diagonal chains fill back exactly with cv2.fillPoly."""
    ring = np.zeros((20, 24), dtype=bool)
    ring[3:15, 4:18] = True
    ring[7:10, 8:12] = False
    speck = np.zeros((20, 24), dtype=bool)
    speck[5, 6] = True
    pair = np.zeros((20, 24), dtype=bool)
    pair[19, 22:24] = True
    diagonal = np.zeros((20, 24), dtype=bool)
    diagonal[np.arange(6), np.arange(6) + 10] = True
    for mask in (ring, speck, pair, diagonal):
        polygons = instance_polygons(Instance.from_mask(1, mask))
        assert len(polygons) == 1
        filled = np.zeros(mask.shape, dtype=np.uint8)
        cv2.fillPoly(filled, [np.round(p).astype(np.int32) for p in polygons], 1)
        assert np.array_equal(filled.astype(bool), mask)


# --- images, errors, atomicity -------------------------------------------------------------


def test_rotated_image_is_written_upright_and_link_links(toy_run, tmp_path) -> None:
    from autolabel.io.images import ImageEntry, load_image

    run = read_run(toy_run)
    dest = tmp_path / "yolo"
    summary = export_run(toy_run, "yolo", dest, link=True)
    assert summary.linked == 4 and summary.copied == 0 and summary.converted == ["sub/rot.jpg"]
    linked = dest / "images" / "a.png"
    assert linked.is_symlink() and linked.resolve() == (run.images_root / "a.png").resolve()
    rotated = dest / "images" / "sub" / "rot.jpg"
    assert not rotated.is_symlink()
    with Image.open(rotated) as im:
        assert im.getexif().get(0x0112, 1) == 1 and im.size == (160, 112)
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    source = load_image(ImageEntry(0, run.images_root / "sub" / "rot.jpg", "sub/rot.jpg"))
    assert np.abs(pixels - source.rgb).mean() < 3  # the same upright picture, re-encoded


def test_errors_are_usage_errors_and_dest_is_kept(toy_run, tmp_path, capsys) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="unknown export format 'coco-ish'"):
        export_run(toy_run, "coco-ish", tmp_path / "new")
    with pytest.raises(UsageError, match="no such folder"):
        export_run(tmp_path / "nowhere", "yolo", tmp_path / "new")
    with pytest.raises(UsageError, match="not empty; pass --overwrite"):
        export_run(toy_run, "voc", dest)
    with pytest.raises(UsageError, match="replace the run folder"):
        export_run(toy_run, "voc", toy_run, overwrite=True)
    assert (dest / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()

    for args, expected in (
        (["export", str(toy_run), "-f", "coco-ish", "-o", str(tmp_path / "new")], "yolo, voc"),
        (["export", str(tmp_path / "nowhere"), "-f", "yolo", "-o", str(tmp_path / "n")], "no such"),
        (["export", str(toy_run), "--format", "voc", "--output", str(dest)], "--overwrite"),
    ):
        assert main(args) == 2
        assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]

    assert main(["export", str(toy_run), "-f", "labelme", "-o", str(dest), "--overwrite"]) == 0
    assert "exported 5 images" in capsys.readouterr().out
    assert not (dest / "keep.txt").exists() and (dest / "a.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # no temp folders left


def test_failed_export_leaves_nothing_half_written(toy_run, tmp_path, monkeypatch) -> None:
    import autolabel.io.export as export

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    calls = []

    def failing(instance: Instance) -> list[np.ndarray]:
        calls.append(instance)
        if len(calls) == 3:
            raise OSError("disk full")
        return instance_polygons(instance)

    monkeypatch.setattr(export, "instance_polygons", failing)
    with pytest.raises(OSError, match="disk full"):
        export_run(toy_run, "yolo", dest, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        export_run(toy_run, "labelme", tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_missing_or_changed_images_are_named(toy_run, tmp_path) -> None:
    import shutil

    run = read_run(toy_run)
    copy = tmp_path / "run"
    shutil.copytree(toy_run, copy)
    images = tmp_path / "images"
    shutil.copytree(run.images_root, images)
    info = json.loads((copy / "run.json").read_text())
    info["images_root"] = str(images)
    (copy / "run.json").write_text(json.dumps(info))
    (images / "b.jpg").unlink()
    with pytest.raises(UsageError, match=r"1 of the run's images .*: b\.jpg"):
        export_run(copy, "cvat", tmp_path / "x")
    Image.new("RGB", (10, 10)).save(images / "b.jpg")
    with pytest.raises(UsageError, match="10x10 now, but the run labelled it at 120x160"):
        export_run(copy, "cvat", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_help_is_light() -> None:
    """`autolabel export --help` imports none of the libraries the export itself needs."""
    import subprocess
    import sys

    heavy = ("numpy", "PIL", "cv2", "supervision", "torch", "fiftyone")
    script = (
        "import sys\n"
        "from autolabel.cli import main\n"
        "assert main(['export', '--help']) == 0\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "sys.exit(f'imported by export --help: {loaded}' if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: autolabel export [OPTIONS] OUT" in result.stdout
    assert "--cvat-shape" in result.stdout and "labelme" in result.stdout
