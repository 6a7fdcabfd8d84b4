"""A run folder in the formats people train on: YOLO segmentation, Pascal VOC, CVAT, LabelMe.

`export_run` reads the run once through `read_run` (annotations.json and run.json), takes each
image's `Instances`, finds the image files under the run's images_root, and builds the whole
export in a temp folder next to DEST that replaces DEST only when it is complete.

Polygons come from supervision (`approximate_mask_with_polygons`: OpenCV contours, holes joined
to their outer contour by a zero-width seam, no simplification); YOLO lines from supervision's
`object_to_yolo`. VOC PNGs, CVAT XML and LabelMe JSON are written here, to their published
layouts. Polygon vertices lie on the centres of boundary pixels, OpenCV's convention, which
cv2.fillPoly (Ultralytics, supervision, FiftyOne) and Pillow (LabelMe) fill back to the mask.

Images are copied (or symlinked with link=True) byte for byte, except where the format needs
another encoding (VOC: JPEG; YOLO: a type Ultralytics reads) or the file carries an EXIF
rotation: those are written upright from the pixels the run labelled (JPEG quality 95 for JPEG
sources and VOC, PNG otherwise), so every reader sees the image the masks belong to.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from autolabel.errors import UsageError
from autolabel.instances import Instance
from autolabel.io.images import ImageEntry, LoadError, dedupe, load_image, unique_keys
from autolabel.io.png import class_colour
from autolabel.io.run_folder import RunFolder, RunImage, read_run

# name -> what it writes (the CLI's help and the unknown-format message list these).
FORMATS: dict[str, str] = {
    "yolo": "Ultralytics YOLO segmentation: data.yaml, images/, labels/*.txt (polygons)",
    "voc": "Pascal VOC segmentation: JPEGImages/, SegmentationClass/, SegmentationObject/, "
    "ImageSets/Segmentation/train.txt, labelmap.txt",
    "cvat": "CVAT for images 1.1: annotations.xml (<mask> RLE or <polygon>) and images/",
    "labelme": "LabelMe: one JSON of polygons beside each image",
}
CVAT_SHAPES = ("mask", "polygon")
# VOC masks are 8-bit palette PNGs where 255 means "void": ids 1..254 are usable.
VOC_MAX_IDS = 254
# File types Ultralytics trains on (its IMG_FORMATS, less the ones Pillow cannot write here).
YOLO_EXTENSIONS = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
EXIF_ORIENTATION = 0x0112
JPEG_QUALITY = 95
LABELME_VERSION = "5.5.0"  # the LabelMe file layout written here (labelme 5.x and later read it)


@dataclass
class ExportSummary:
    """What an export wrote."""

    format: str
    dest: Path
    images: int = 0
    instances: int = 0
    copied: int = 0  # image files copied byte for byte
    linked: int = 0  # image files symlinked (link=True)
    converted: list[str] = field(default_factory=list)  # run file names written re-encoded
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    image: RunImage
    path: Path  # the image file: images_root / file_name
    stem: str  # unique output name without extension (may hold folders: "sub/c")


@dataclass(frozen=True)
class _Job:
    """One export under way: what a format's writer needs."""

    run: RunFolder
    sources: list[_Source]
    tmp: Path  # the folder being built
    final: Path  # where it will be (absolute)
    link: bool
    summary: ExportSummary

    def place(self, src: _Source, target: Path, **kwargs: object) -> Path:
        """_place_image with this job's link setting and summary."""
        return _place_image(src, self.tmp / target, self.link, self.summary, **kwargs)


def export_run(
    out: str | os.PathLike,
    fmt: str,
    dest: str | os.PathLike,
    *,
    overwrite: bool = False,
    link: bool = False,
    cvat_shape: str = "mask",
) -> ExportSummary:
    """Export the run folder `out` as `fmt` (a FORMATS key) into the folder `dest`.

    dest must not exist, be empty, or (overwrite=True) be replaced whole. link=True symlinks
    images instead of copying them where the file can be used as it is. cvat_shape: "mask"
    (CVAT <mask> RLE, exact) or "polygon". Problems are UsageErrors; a failed export leaves
    dest as it was.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if cvat_shape not in CVAT_SHAPES:
        raise UsageError(f"unknown CVAT shape {cvat_shape!r}; choose mask or polygon")
    out, dest = Path(out), Path(dest)
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder; give the output folder of `autolabel run`")
    run = read_run(out)
    _check_dest(dest, overwrite, run)
    sources = _sources(run)
    summary = ExportSummary(fmt, dest)
    writers: dict[str, Callable[[_Job], None]] = {
        "yolo": _write_yolo,
        "voc": _write_voc,
        "cvat": functools.partial(_write_cvat, shape=cvat_shape),
        "labelme": _write_labelme,
    }
    with _staging(dest) as tmp:
        writers[fmt](_Job(run, sources, tmp, dest.resolve(), link, summary))
    return summary


# --- where things go -----------------------------------------------------------------------


def _check_dest(dest: Path, overwrite: bool, run: RunFolder) -> None:
    target = dest.resolve()
    for what, path in (("the run folder", run.out), ("the run's images", run.images_root)):
        path = path.resolve()
        if target == path or target in path.parents:
            raise UsageError(f"{dest}: the export would replace {what} ({path})")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UsageError(f"{dest}: exists and is not a folder (or is a symlink); choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise UsageError(
            f"{dest}: exists and is not empty; pass --overwrite to replace it, or choose "
            "another folder"
        )


def _sources(run: RunFolder) -> list[_Source]:
    """The run's images with their files; every missing file is named before anything is
    written."""
    rels = [image.file_name for image in run.images]
    paths = [run.images_root / rel for rel in rels]
    missing = [rel for rel, path in zip(rels, paths, strict=True) if not path.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise UsageError(
            f"{len(missing)} of the run's images are not under {run.images_root} any more: "
            f"{shown}; an export needs the images the run labelled"
        )
    stems = unique_keys(rels)
    return [
        _Source(image, path, stem)
        for image, path, stem in zip(run.images, paths, stems, strict=True)
    ]


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temp folder next to dest; on success it takes dest's place, on error it goes."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise UsageError(f"{dest}: cannot create the export there ({exc})") from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a plain mkdir would not
        if dest.is_dir():  # empty, or overwrite: set aside, swap in, then remove
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "dest")
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old / "dest", dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _place_image(
    src: _Source,
    target: Path,
    link: bool,
    summary: ExportSummary,
    *,
    extensions: frozenset[str] | None = None,
    jpeg: bool = False,
) -> Path:
    """Put src's image at `target` + an extension; returns the file written.

    The file is copied (or linked) as it is when it is upright and of a type the format takes
    (`extensions`, None: any; jpeg: JPEG only, as .jpg); otherwise the upright pixels are
    written as JPEG (JPEG sources, jpeg=True) or PNG.
    """
    rel = src.image.file_name
    try:
        with Image.open(src.path) as im:
            kind, (width, height), orientation = im.format, im.size, _orientation(im)
    except Exception as exc:  # Pillow raises many types for unreadable files
        raise UsageError(f"{src.path}: cannot read the image ({exc})") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if (width, height) != (src.image.width, src.image.height):
        raise UsageError(
            f"{src.path}: {width}x{height} now, but the run labelled it at "
            f"{src.image.width}x{src.image.height}; has the file changed since the run?"
        )
    is_jpeg = kind in ("JPEG", "MPO")
    suffix = src.path.suffix
    if jpeg:
        usable, suffix = is_jpeg, ".jpg"
    elif extensions is None or suffix.lower() in extensions:
        usable = True
    else:  # a JPEG named .jpe or .jfif is still a JPEG; other types are converted
        usable, suffix = is_jpeg, ".jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    if usable and orientation == 1:
        path = target.with_name(target.name + suffix)
        if link:
            path.symlink_to(src.path.resolve())
            summary.linked += 1
        else:
            shutil.copyfile(src.path, path)
            summary.copied += 1
        return path
    loaded = load_image(ImageEntry(0, src.path, rel))
    if isinstance(loaded, LoadError):
        raise UsageError(f"{src.path}: cannot read the image ({loaded.reason})")
    as_jpeg = jpeg or is_jpeg
    path = target.with_name(target.name + (".jpg" if as_jpeg else ".png"))
    upright = Image.fromarray(loaded.rgb)
    if as_jpeg:
        upright.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        upright.save(path, format="PNG")
    summary.converted.append(rel)
    return path


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 when none, or when the EXIF block is broken, as the run reads)."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: struct, value and type errors from the parser
        return 1
    return value if value in range(1, 9) else 1


# --- geometry ------------------------------------------------------------------------------


def instance_polygons(instance: Instance) -> list[np.ndarray]:
    """An instance's outline: one k x 2 float array of (x, y) vertices per connected part.

    Holes are joined to their outer contour by a zero-width seam along the mask, so each part
    is one simple ring (YOLO and LabelMe have no holes). Vertices sit on boundary pixel centres.
    A part whose contour has under 3 points (1-2 pixels, a 1-pixel-wide straight line), which
    supervision leaves out, becomes a degenerate polygon (its last point repeated) that fills
    back to the same pixels.
    """
    from supervision.dataset.utils import approximate_mask_with_polygons

    mask = instance.mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return []
    x, y = int(cols[0]), int(rows[0])
    # Work on the box, padded by one pixel so that contours never touch the crop's edge.
    crop = np.pad(mask[y : rows[-1] + 1, x : cols[-1] + 1], 1).astype(np.uint8)
    polygons = [
        np.asarray(p).reshape(-1, 2)
        for p in approximate_mask_with_polygons(crop > 0, bridge_holes=True)
    ]
    covered = np.zeros_like(crop)
    cv2.fillPoly(covered, [p.astype(np.int32) for p in polygons], 1)
    _, parts = cv2.connectedComponents(crop, connectivity=8)
    left_out = np.isin(parts, np.setdiff1d(np.unique(parts[crop > 0]), parts[covered > 0]))
    if left_out.any():
        contours, _ = cv2.findContours(
            left_out.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        for contour in contours:
            points = contour.reshape(-1, 2)
            polygons.append(
                np.concatenate([points, points[-1:].repeat(3 - min(len(points), 3), 0)])
            )
    offset = np.array([x - 1, y - 1], dtype=np.float64)
    return [p.astype(np.float64) + offset for p in polygons]


def cvat_rle(mask: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """A mask as CVAT's <mask> RLE: run lengths over its tight box in row-major order, starting
    with background (0 when the first pixel is set); and the box (left, top, width, height)."""
    rows, cols = np.nonzero(mask)
    left, top = int(cols.min()), int(rows.min())
    width, height = int(cols.max()) - left + 1, int(rows.max()) - top + 1
    flat = mask[top : top + height, left : left + width].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs, (left, top, width, height)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette (n x 3 uint8): the devkit's bit-interleaved colours by index."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (r, g, b)
    return colours


# --- the formats ---------------------------------------------------------------------------


def _write_yolo(job: _Job) -> None:
    """data.yaml (path, train/val = images, names by 0-based id), images/<stem>.<ext> and
    labels/<stem>.txt: one `class x1 y1 x2 y2 ...` line per polygon, normalised to [0, 1]."""
    import yaml
    from supervision.dataset.formats.yolo import object_to_yolo

    names = job.run.vocabulary.names
    stems = dedupe([_yolo_stem(src.stem) for src in job.sources])
    for src, stem in zip(job.sources, stems, strict=True):
        job.place(src, Path("images", stem), extensions=YOLO_EXTENSIONS)
        instances = src.image.instances
        lines = [
            object_to_yolo(
                xyxy=np.zeros(4),
                class_id=inst.category_id - 1,
                image_shape=instances.size,
                polygon=polygon,
            )
            for inst in instances
            for polygon in instance_polygons(inst)
        ]
        _write_text(job.tmp / "labels" / f"{stem}.txt", "".join(line + "\n" for line in lines))
        job.summary.images += 1
        job.summary.instances += len(instances)
    data = {
        "path": str(job.final),
        "train": "images",
        "val": "images",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    header = (
        "# Ultralytics YOLO segmentation data, exported by autolabel. train and val are the same\n"
        "# images: split them before measuring anything. Edit `path` if you move this folder.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    _write_text(job.tmp / "data.yaml", text)
    job.summary.notes.append("train and val in data.yaml are the same images: split them for eval")


def _yolo_stem(stem: str) -> str:
    """Ultralytics finds labels by replacing the last /images/ of an image path with /labels/:
    a folder named "images" inside a stem would send it elsewhere, so such stems are flattened."""
    parts = stem.split("/")
    return "__".join(parts) if "images" in parts[:-1] else stem


def _write_voc(job: _Job) -> None:
    """JPEGImages/<id>.jpg; SegmentationClass/<id>.png (palette index = class id, 0 background)
    and SegmentationObject/<id>.png (index = instance number 1..N in annotation order), both
    with the VOC palette; ImageSets/Segmentation/train.txt; labelmap.txt (Datumaro/CVAT's)."""
    names = job.run.vocabulary.names
    if len(names) > VOC_MAX_IDS:
        raise UsageError(
            f"{len(names)} classes; Pascal VOC masks hold at most {VOC_MAX_IDS} (255 is void)"
        )
    bad = [n for n in names if ":" in n]
    if bad:
        raise UsageError(f"class name {bad[0]!r} has a ':', which VOC's labelmap.txt cannot hold")
    palette = voc_colormap().tobytes()
    for src in job.sources:
        instances = src.image.instances
        if len(instances) > VOC_MAX_IDS:
            raise UsageError(
                f"{src.image.file_name}: {len(instances)} instances; Pascal VOC object masks hold "
                f"at most {VOC_MAX_IDS} per image (rerun with a larger --min-area)"
            )
        job.place(src, Path("JPEGImages", src.stem), jpeg=True)
        objects = np.zeros(instances.size, dtype=np.uint8)
        for number, inst in enumerate(instances, 1):
            objects[inst.mask] = number
        for folder, labels in (
            ("SegmentationClass", instances.label_map),
            ("SegmentationObject", objects),
        ):
            image = Image.fromarray(labels.astype(np.uint8))
            image.putpalette(palette)  # an L image with a palette becomes a P image
            path = job.tmp / folder / f"{src.stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format="PNG")
        job.summary.images += 1
        job.summary.instances += len(instances)
    _write_text(
        job.tmp / "ImageSets" / "Segmentation" / "train.txt",
        "".join(f"{src.stem}\n" for src in job.sources),
    )
    colours = voc_colormap(len(names) + 1)
    rows = [f"{name}:{','.join(map(str, colours[i]))}::" for i, name in enumerate(names, 1)]
    _write_text(
        job.tmp / "labelmap.txt",
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\n" + "".join(r + "\n" for r in rows),
    )


def _write_labelme(job: _Job) -> None:
    """<stem>.<ext> and <stem>.json side by side: a polygon shape per instance part (parts of
    one instance share a group_id), imagePath relative to the JSON, imageData null."""
    for src in job.sources:
        image_path = job.place(src, Path(src.stem))
        instances = src.image.instances
        shapes = []
        for number, inst in enumerate(instances, 1):
            polygons = instance_polygons(inst)
            for polygon in polygons:
                shapes.append(
                    {
                        "label": inst.name,
                        "points": polygon.tolist(),
                        "group_id": number if len(polygons) > 1 else None,
                        "description": "",
                        "shape_type": "polygon",
                        "flags": {},
                        "mask": None,
                    }
                )
        document = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": shapes,
            "imagePath": image_path.name,
            "imageData": None,
            "imageHeight": src.image.height,
            "imageWidth": src.image.width,
        }
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        _write_text(job.tmp / f"{src.stem}.json", text)
        job.summary.images += 1
        job.summary.instances += len(instances)


def _write_cvat(job: _Job, *, shape: str) -> None:
    """annotations.xml in CVAT for images 1.1 (meta with the labels, one <image> per image with
    a <mask> or <polygon> per instance, source="auto") and images/<file name>."""
    names = job.run.vocabulary.names
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for key, value in (
        ("name", f"autolabel {job.run.out.name}"),
        ("size", str(len(job.sources))),
        ("mode", "annotation"),
        ("overlap", "0"),
    ):
        ET.SubElement(task, key).text = value
    labels = ET.SubElement(task, "labels")
    for class_id, name in enumerate(names, 1):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "color").text = "#{:02x}{:02x}{:02x}".format(*class_colour(class_id))
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    for frame, src in enumerate(job.sources):
        image_path = job.place(src, Path("images", src.stem))
        instances = src.image.instances
        element = ET.SubElement(
            root,
            "image",
            {
                "id": str(frame),
                "name": image_path.relative_to(job.tmp / "images").as_posix(),
                "width": str(src.image.width),
                "height": str(src.image.height),
            },
        )
        for number, inst in enumerate(instances, 1):
            common = {"label": inst.name, "source": "auto", "occluded": "0"}
            if shape == "mask":
                if not inst.mask.any():
                    continue
                runs, (left, top, width, height) = cvat_rle(inst.mask)
                attrs = {
                    **common,
                    "rle": ", ".join(map(str, runs)),
                    "left": str(left),
                    "top": str(top),
                    "width": str(width),
                    "height": str(height),
                    "z_order": "0",
                }
                ET.SubElement(element, "mask", attrs)
                continue
            polygons = instance_polygons(inst)
            for polygon in polygons:
                points = ";".join(f"{px:.2f},{py:.2f}" for px, py in polygon)
                attrs = {**common, "points": points, "z_order": "0"}
                if len(polygons) > 1:
                    attrs["group_id"] = str(number)
                ET.SubElement(element, "polygon", attrs)
        job.summary.images += 1
        job.summary.instances += len(instances)
    ET.indent(root)
    path = job.tmp / "annotations.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
