"""Label PNGs (palette, legacy grey, 16-bit), class colours and preview overlays."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from autolabel.instances import Instance, encode_rle
from autolabel.io.png import (
    class_colour,
    palette,
    place_labels,
    read_label_png,
    write_label_png,
    write_preview,
)

GREY = (128, 128, 128)


def test_label_png_is_a_palette_png_of_class_ids_in_class_colours(tmp_path: Path) -> None:
    labels = np.arange(17, dtype=np.uint16).repeat(3).reshape(3, 17)
    write_label_png(tmp_path / "m.png", labels)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im), labels)
        colours = np.array(im.getpalette()[: 17 * 3], dtype=np.uint8).reshape(17, 3)
    assert colours[0].tolist() == [0, 0, 0]
    assert np.array_equal(colours, palette(17))
    ids = read_label_png(tmp_path / "m.png")
    assert ids.dtype == np.uint8 and np.array_equal(ids, labels)


def test_old_grey_label_pngs_read_as_class_ids(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [16, 255, 3]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "old.png")
    ids = read_label_png(tmp_path / "old.png")
    assert ids.dtype == np.uint8 and np.array_equal(ids, labels)


def test_label_maps_beyond_255_stay_lossless_16_bit(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 255], [256, 300, 65535]], dtype=np.int64)
    write_label_png(tmp_path / "big.png", labels)
    with Image.open(tmp_path / "big.png") as im:
        assert im.mode.startswith("I")
    ids = read_label_png(tmp_path / "big.png")
    assert ids.dtype == np.uint16 and np.array_equal(ids, labels)


def test_label_ids_that_no_png_can_hold_and_colour_pngs_are_refused(tmp_path: Path) -> None:
    for bad in (np.array([[-1, 0]]), np.array([[0, 65536]])):
        with pytest.raises(ValueError, match="0..65535"):
            write_label_png(tmp_path / "bad.png", bad)
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="colours, not class ids"):
        read_label_png(tmp_path / "rgb.png")


def test_label_studio_uses_the_label_png_colours(tmp_path: Path) -> None:
    pytest.importorskip("label_studio_sdk")
    from autolabel.sinks.labelstudio.config import label_color

    write_label_png(tmp_path / "m.png", np.arange(41, dtype=np.uint8)[None])
    with Image.open(tmp_path / "m.png") as im:
        entries = im.getpalette()
    for index in range(40):
        class_id = index + 1
        assert label_color(index) == "#" + bytes(entries[3 * class_id : 3 * class_id + 3]).hex()
        assert label_color(index) == "#" + bytes(class_colour(class_id)).hex()


def test_labels_stay_inside_the_image() -> None:
    bounds = (100, 80)
    anchors = [(90, 30, 100, 50), (95, 70, 100, 80), (0, 0, 100, 80), (-5, -5, 3, 3)]
    sizes = [(50, 12), (50, 12), (150, 100), (20, 12)]
    boxes = place_labels(anchors, sizes, bounds)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= bounds[0] and 0 <= y0 < y1 <= bounds[1]
    assert boxes[0] == (50, 18, 100, 30)  # pushed left off the right edge, still above its box


def test_labels_of_instances_at_the_same_spot_do_not_overlap() -> None:
    anchors = [(40, 40, 60, 60)] * 8
    boxes = place_labels(anchors, [(30, 10)] * 8, (100, 100))
    assert boxes[0] == (40, 30, 70, 40)  # the first one right above its box
    assert boxes[1] == (40, 60, 70, 70)  # the next one right below it
    for i, a in enumerate(boxes):
        assert a[2] - a[0] == 30 and a[3] - a[1] == 10
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def _instance(mask: np.ndarray, category_id: int) -> Instance:
    rows, cols = np.nonzero(mask)
    bbox = [float(cols.min()), float(rows.min()), float(np.ptp(cols) + 1), float(np.ptp(rows) + 1)]
    return Instance(category_id, encode_rle(mask), int(mask.sum()), bbox, 0.87)


def _box_mask(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _preview(tmp_path: Path, rgb: np.ndarray, instances: list, names: list[str]) -> np.ndarray:
    write_preview(tmp_path / "p.jpg", rgb, instances, names)
    with Image.open(tmp_path / "p.jpg") as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _caption_pixels(preview: np.ndarray, class_id: int, masks: list[np.ndarray]) -> int:
    """Preview pixels in the class colour away from every outline: those of its caption box."""
    near = np.abs(preview - class_colour(class_id)).max(axis=2) < 40
    for mask in masks:
        near &= ~(
            ndimage.binary_dilation(mask, iterations=4) ^ ndimage.binary_erosion(mask, iterations=4)
        )
    return int(near.sum())


@pytest.mark.parametrize("as_method", [False, True])
def test_preview_keeps_the_objects_own_colours_and_outlines_it(
    tmp_path: Path, as_method: bool
) -> None:
    rgb = np.full((240, 320, 3), GREY, dtype=np.uint8)
    yy, xx = np.mgrid[:240, :320]
    disc = (yy - 140) ** 2 + (xx - 160) ** 2 <= 60**2
    rgb[disc] = (20, 180, 40)
    # Instances have exposed their mask both as a method and as an array property.
    mask = (lambda: disc) if as_method else disc
    inst = SimpleNamespace(category_id=1, score=0.9, bbox=[100.0, 80.0, 121.0, 121.0], mask=mask)
    preview = _preview(tmp_path, rgb, [inst], ["circle"])
    # JPEG rings a few pixels around the outline; the tint used to shift colours by ~100.
    inner = (yy - 140) ** 2 + (xx - 160) ** 2 <= 40**2
    assert np.abs(preview[inner] - rgb[inner]).max() <= 16
    ring = disc & ~((yy - 140) ** 2 + (xx - 160) ** 2 <= 58**2)
    red = np.array(class_colour(1))
    outline = preview[ring].mean(axis=0)
    assert np.abs(outline - red).sum() < np.abs(outline - rgb[ring].mean(axis=0)).sum()


def test_preview_caption_at_the_right_edge_is_whole(tmp_path: Path) -> None:
    rgb = np.full((200, 320, 3), GREY, dtype=np.uint8)
    names = ["cat", "a long class name"]
    counts = []
    for x0 in (0, 280):
        mask = _box_mask((200, 320), x0, 80, x0 + 40, 140)
        counts.append(
            _caption_pixels(_preview(tmp_path, rgb, [_instance(mask, 2)], names), 2, [mask])
        )
    assert counts[0] > 500
    assert counts[1] >= 0.9 * counts[0]  # the same caption, not cut off by the right edge


def test_preview_captions_of_instances_at_the_same_spot_are_both_visible(tmp_path: Path) -> None:
    rgb = np.full((240, 320, 3), GREY, dtype=np.uint8)
    mask = _box_mask((240, 320), 140, 100, 180, 130)
    names = ["cat", "dog"]
    both = _preview(tmp_path, rgb, [_instance(mask, 1), _instance(mask, 2)], names)
    for class_id in (1, 2):
        alone = _preview(tmp_path, rgb, [_instance(mask, class_id)], names)
        expected = _caption_pixels(alone, class_id, [mask])
        assert expected > 100
        assert _caption_pixels(both, class_id, [mask]) >= 0.9 * expected
