"""The image loader and folder scanner: orientation, pixel modes, bad files, odd folders."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_scene, tiny_config
from corpus import (
    as_nobody,
    decompression_bomb,
    encoded,
    exif_photo,
    exif_with_orientation,
    png16_rgb,
    shared_tempdir,
)
from PIL import Image

from autolabel.io.images import ImageEntry, LoadedImage, LoadError, load_image, scan_images
from autolabel.io.png import read_label_png
from autolabel.runner import run_job

# EXIF orientation -> how the camera stored an upright picture (numpy, from the EXIF spec's
# description of where row 0 / column 0 of the stored pixels are on the displayed picture).
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # row 0 is the left column
    6: lambda a: np.rot90(a, 1),  # displayed after turning 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # row 0 is the right column, bottom up
    8: lambda a: np.rot90(a, -1),  # displayed after turning 90 degrees anticlockwise
}


def entry(path: Path) -> ImageEntry:
    """An entry for a file outside any scan."""
    return ImageEntry(1, path, path.name, path.stem)


def load(path: Path) -> LoadedImage:
    """load_image that must succeed."""
    result = load_image(entry(path))
    assert isinstance(result, LoadedImage), result
    return result


def failure(path: Path) -> str:
    """load_image that must fail; returns the reason."""
    result = load_image(entry(path))
    assert isinstance(result, LoadError), f"{path.name} loaded as {result.rgb.shape}"
    return result.reason


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(tmp_path: Path, orientation: int) -> None:
    upright = np.asarray(draw_scene(10, 6, orientation))  # non-square: 6 rows, 10 columns
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif_with_orientation(orientation))
    loaded = load(path)
    assert loaded.size == (6, 10)
    np.testing.assert_array_equal(loaded.rgb, upright)
    assert ("EXIF orientation" in loaded.note) == (orientation != 1)


def test_sideways_camera_jpeg_is_upright(tmp_path: Path) -> None:
    upright, stored = exif_photo(64, 96)
    path = tmp_path / "camera.jpg"
    stored.save(path, quality=95, exif=exif_with_orientation(6))
    assert Image.open(path).size == (96, 64)  # stored landscape
    loaded = load(path)
    assert loaded.size == (96, 64)  # (height, width): portrait, as viewers show it
    # The red square of the upright scene is at its top left (draw_scene: 10-40 % x, 10-45 % y).
    red = (loaded.rgb[..., 0] > 170) & (loaded.rgb[..., 1] < 80) & (loaded.rgb[..., 2] < 80)
    ys, xs = np.nonzero(red)
    assert 6 <= ys.mean() <= 30 and 6 <= xs.mean() <= 20
    expected = np.asarray(upright, dtype=int)
    error = np.abs(loaded.rgb - expected).mean()
    # JPEG noise on the noisy background is large, but far below that of a wrong orientation.
    assert error < 0.5 * np.abs(loaded.rgb - expected[::-1, ::-1]).mean()


def test_masks_of_a_rotated_photo_line_up_with_the_upright_photo(
    tmp_path: Path, vocab_file: Path, tiny_recipe: Path
) -> None:
    """Two files with the same upright pixels, one stored sideways with EXIF 6: same labels."""
    upright, stored = exif_photo(64, 96)
    images = tmp_path / "images"
    images.mkdir()
    upright.save(images / "upright.png")
    stored.save(images / "sideways.png", exif=exif_with_orientation(6))
    out = tmp_path / "out"
    summary = run_job(tiny_config(images, vocab_file, out, tiny_recipe))
    assert summary.ok == 2
    coco = json.loads((out / "annotations.json").read_text())
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    assert sizes == {"sideways.png": (64, 96), "upright.png": (64, 96)}
    mask_up = read_label_png(out / "masks" / "upright.png")
    mask_side = read_label_png(out / "masks" / "sideways.png")
    assert mask_side.shape == (96, 64)
    assert mask_up.any(), "the tiny model labelled nothing: the comparison would be empty"
    np.testing.assert_array_equal(mask_side, mask_up)
    by_image: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        assert ann["segmentation"]["size"] == [96, 64]
        by_image[ann["image_id"]].append((ann["category_id"], ann["segmentation"], ann["bbox"]))
    first, second = by_image.values()
    assert first == second


def test_sixteen_bit_grayscale_is_stretched_not_black(tmp_path: Path) -> None:
    ramp = (np.arange(40 * 30).reshape(30, 40) * 3).astype(np.uint16)  # 12-bit data: max 3597
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    loaded = load(tmp_path / "g16.png")
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (30, 40, 3)
    assert loaded.rgb.max() == 255 and loaded.rgb[0, 0, 0] == 0
    np.testing.assert_array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])
    assert "I;16 grayscale scaled to 8 bits" in loaded.note


def test_sixteen_bit_rgb_keeps_the_high_byte(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, size=(5, 7, 3))
    (tmp_path / "rgb16.png").write_bytes(png16_rgb(pixels))
    np.testing.assert_array_equal(load(tmp_path / "rgb16.png").rgb, pixels >> 8)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red ink
    loaded = load(tmp_path / "cmyk.jpg")
    r, g, b = loaded.rgb.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60
    assert "converted from CMYK" in loaded.note


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue
    rgba.save(tmp_path / "rgba.png")
    loaded = load(tmp_path / "rgba.png")
    assert tuple(loaded.rgb[0, 0]) == (255, 255, 255)
    assert tuple(loaded.rgb[1, 3]) == (255, 0, 0)
    assert "composited over white" in loaded.note
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    loaded = load(tmp_path / "palette.png")
    assert tuple(loaded.rgb[0, 0]) == (255, 255, 255)
    assert tuple(loaded.rgb[1, 1]) == (0, 255, 0)
    Image.new("RGBA", (3, 3), (9, 9, 9, 255)).save(tmp_path / "opaque.png")
    assert "composited" not in load(tmp_path / "opaque.png").note


@pytest.mark.parametrize(
    ("mode", "value"),
    [("L", 77), ("1", 255), ("LA", (77, 255)), ("I", 70000), ("F", 0.5)],
)
def test_other_modes_become_three_equal_channels(tmp_path: Path, mode: str, value: object) -> None:
    image = Image.new(mode, (5, 4), value)
    image.putpixel((0, 0), 0 if mode not in ("LA",) else (0, 255))
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    image.save(path, format=fmt)
    loaded = load(path)
    assert loaded.rgb.shape == (4, 5, 3) and loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb[..., 0], loaded.rgb[..., 1])
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[3, 4, 0] > 0


def test_first_frame_of_animations_and_multipage_files(tmp_path: Path) -> None:
    colours = [(220, 20, 20), (20, 200, 40), (20, 30, 220)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "p.tif", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "p.tif"):
        loaded = load(tmp_path / name)
        assert "first of 3 frames used" in loaded.note
        assert np.abs(loaded.rgb.astype(int) - colours[0]).max() <= 8


def test_decompression_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(decompression_bomb())
    assert (tmp_path / "bomb.png").stat().st_size < 500_000
    started = time.perf_counter()
    reason = failure(tmp_path / "bomb.png")
    assert time.perf_counter() - started < 2.0  # 900 M pixels were not decoded
    assert "30000x30000" in reason or "too large" in reason


def test_broken_files_fail_with_reasons(tmp_path: Path) -> None:
    jpeg = encoded(draw_scene(64, 48, 1), "JPEG")
    png = encoded(draw_scene(64, 48, 1), "PNG")
    cases = {
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "cut.png": (png[: len(png) // 2], "truncated"),
        "header.jpg": (jpeg[:30], "truncated"),
        "words.jpg": (b"not a picture\n" * 10, "not an image"),
        "zip.png": (b"PK\x03\x04" + bytes(200), "not an image"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert reason in failure(tmp_path / name), name


def test_tiny_and_extreme_images_load(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    loaded = load(tmp_path / "one.png")
    assert loaded.size == (1, 1) and "a side under 16 px (1x1)" in loaded.note
    draw_scene(3000, 2, 0).save(tmp_path / "strip.png")
    assert load(tmp_path / "strip.png").size == (2, 3000)


def make_tree(root: Path) -> None:
    """A folder with every kind of entry scan_images has to sort out."""
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("b.jpg", "a.PNG", "sub/a.png", "sub/deeper/z.tif", "twin.jpg", "twin.png"):
        draw_scene(8, 8, 0).save(root / rel)
    (root / "twin.jpg.png").write_bytes((root / "twin.png").read_bytes())
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / ".git" / "x.jpg").write_bytes(b"x")
    (root / "readme.md").write_text("hi")
    (root / "noext").write_text("hi")
    (root / "sub" / "up").symlink_to("..")
    (root / "a link to sub").symlink_to("sub")  # sorts before sub: the link is the duplicate
    (root / "elsewhere").mkdir()
    draw_scene(8, 8, 0).save(root / "elsewhere" / "e.jpg")
    (root / "sub" / "deeper" / "linked").symlink_to("../../elsewhere")
    (root / "sub" / "loop.jpg").symlink_to("loop.jpg")
    (root / "dangling.jpg").symlink_to("missing.jpg")
    os.mkfifo(root / "fifo.png")
    (root / "empty").mkdir()
    with open(os.fsencode(root) + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(b"x")
    (root / "out" / "masks").mkdir(parents=True)
    draw_scene(8, 8, 0).save(root / "out" / "masks" / "b.png")


def test_scan_sorts_reports_and_excludes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    make_tree(root)
    started = time.perf_counter()
    entries, problems = scan_images(root, exclude=[root / "out"])
    assert time.perf_counter() - started < 2.0  # the FIFO was never opened
    rels = [e.rel for e in entries]
    assert rels == sorted(rels)
    assert set(rels) == {
        "a.PNG", "b.jpg", "sub/a.png", "sub/deeper/z.tif", "twin.jpg", "twin.png", "twin.jpg.png",
        "elsewhere/e.jpg",
    }  # fmt: skip
    assert [e.id for e in entries] == list(range(1, len(entries) + 1))
    keys = {e.rel: e.key for e in entries}
    assert keys["a.PNG"] == "a" and keys["sub/a.png"] == "sub/a"
    assert keys["twin.jpg"] == "twin.jpg" and keys["twin.png"] == "twin.png"
    assert len(set(keys.values())) == len(keys)  # twin.jpg.png must not take twin.jpg's key
    reasons = dict(problems)
    assert reasons["readme.md"] == "not a supported image type (.md)"
    assert reasons["noext"] == "not a supported image type (no extension)"
    assert "already scanned" in reasons["sub/up"]
    assert "already scanned" in reasons["a link to sub"]
    assert "already scanned" in reasons["sub/deeper/linked"]
    assert reasons["sub/loop.jpg"] == "symlink loop"
    assert reasons["dangling.jpg"] == "broken symlink"
    assert "not a regular file" in reasons["fifo.png"]
    assert "not valid UTF-8" in reasons["caf\ufffd.jpg"]
    assert not any(".git" in rel or "hidden" in rel for rel in reasons)


def test_scan_with_output_folder_equal_to_input(tmp_path: Path) -> None:
    """`-o IMAGES`: what a run writes there is not scanned as input on the next run."""
    draw_scene(8, 8, 0).save(tmp_path / "a.jpg")
    (tmp_path / "masks").mkdir()
    draw_scene(8, 8, 0).save(tmp_path / "masks" / "a.png")
    (tmp_path / "annotations.json").write_text("{}")
    entries, problems = scan_images(
        tmp_path, exclude=[tmp_path / "masks", tmp_path / "annotations.json"]
    )
    assert [e.rel for e in entries] == ["a.jpg"] and problems == []


def test_empty_folder(tmp_path: Path) -> None:
    assert scan_images(tmp_path) == ([], [])


def test_unreadable_file_and_folder() -> None:
    """A file and a folder without read permission are reported, not fatal.

    Root reads everything, so when the tests run as root the checks run with the effective
    uid dropped to nobody: the permission errors are the kernel's, not simulated.
    """
    with shared_tempdir() as shared:
        draw_scene(8, 8, 0).save(shared / "locked.jpg")
        draw_scene(8, 8, 0).save(shared / "fine.jpg")
        (shared / "closed").mkdir()
        draw_scene(8, 8, 0).save(shared / "closed" / "inside.jpg")
        assert len([load_image(e) for e in scan_images(shared)[0]]) == 3  # see as_nobody
        (shared / "locked.jpg").chmod(0)
        (shared / "closed").chmod(0)
        with as_nobody():
            entries, problems = scan_images(shared)
            results = {e.rel: load_image(e) for e in entries}
    assert set(results) == {"fine.jpg", "locked.jpg"}
    assert isinstance(results["fine.jpg"], LoadedImage)
    locked = results["locked.jpg"]
    assert isinstance(locked, LoadError) and "Permission denied" in locked.reason
    assert problems == [("closed", "cannot list folder: Permission denied")]
