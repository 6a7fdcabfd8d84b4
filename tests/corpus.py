"""Bad-input files built from scratch for the robustness tests (no external files).

`build_corpus` writes every kind of file that uncurated folders hold and returns what the run
must say about each: the manifest status and a piece of the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import draw_scene
from PIL import Image

EXIF_ORIENTATION = 0x0112
NOBODY = 65534


@dataclass(frozen=True)
class Expect:
    """What manifest.jsonl must say about one file."""

    status: str  # ok | failed | skipped
    reason: str = ""  # a piece of the reason ("" = the reason must be empty)
    size: tuple[int, int] | None = None  # upright (width, height) in annotations.json


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG file from its header fields and an already compressed IDAT stream."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    data = pixels.astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in data)
    return png_bytes(data.shape[1], data.shape[0], 16, 2, zlib.compress(raw))


def decompression_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: ~110 KB on disk, 900 M pixels declared."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000))
    return png_bytes(side, side, 1, 0, idat + packer.flush())


def exif_with_orientation(orientation: int) -> bytes:
    """An EXIF block holding only an orientation tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """The bytes of an image saved in a format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def exif_photo(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """(upright scene, the same scene stored as a camera held sideways: EXIF orientation 6)."""
    upright = draw_scene(width, height, 7)
    # Orientation 6 means "rotate 90 degrees clockwise to display": store it turned anticlockwise.
    return upright, upright.transpose(Image.Transpose.ROTATE_90)


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the block with effective uid nobody when root (root is never refused a read).

    The interpreter's own files may be private to root, so a caller runs the same code once as
    root first: nothing may be imported for the first time inside the block.
    """
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@contextlib.contextmanager
def shared_tempdir() -> Iterator[Path]:
    """A temp folder that user nobody can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="autolabel-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o755)
        shutil.rmtree(path)


def build_corpus(root: Path) -> dict[str, Expect]:
    """Write the corpus under root; returns manifest expectations by relative path."""
    root.mkdir(parents=True)
    expect: dict[str, Expect] = {}

    def put(rel: str, data: bytes, expectation: Expect) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[rel] = expectation
        return path

    good = draw_scene(96, 64, 0)
    jpeg = encoded(good, "JPEG", quality=90)
    png = encoded(good, "PNG")
    put("good.jpg", jpeg, Expect("ok", "", (96, 64)))
    put("a/same name.jpg", jpeg, Expect("ok", "", (96, 64)))
    put("b/same name.jpg", jpeg, Expect("ok", "", (96, 64)))
    put("twin.jpg", jpeg, Expect("ok", "", (96, 64)))
    put("twin.png", png, Expect("ok", "", (96, 64)))
    put("café ñ 日本 photo.png", png, Expect("ok", "", (96, 64)))
    put(".hidden.jpg", jpeg, Expect("ignored"))
    put("empty.jpg", b"", Expect("failed", "empty file (0 bytes)"))
    put("truncated.jpg", jpeg[: len(jpeg) // 2], Expect("failed", "truncated"))
    put("truncated.png", png[: len(png) // 2], Expect("failed", "truncated"))
    put("text.jpg", b"just some notes, not a photo\n" * 20, Expect("failed", "not an image"))
    put("notes.txt", b"hello\n", Expect("skipped", "not a supported image type (.txt)"))
    put("drawing.svg", b"<svg/>", Expect("skipped", "not a supported image type (.svg)"))
    ramp = (np.arange(64 * 48).reshape(48, 64) % 4096).astype(np.uint16)
    put("gray16.png", encoded(Image.fromarray(ramp), "PNG"), Expect("ok", "I;16", (64, 48)))
    rgb16 = np.asarray(good, dtype=np.uint16) * 257
    put("rgb16.png", png16_rgb(rgb16), Expect("ok", "", (96, 64)))
    put("cmyk.jpg", encoded(good.convert("CMYK"), "JPEG"), Expect("ok", "from CMYK", (96, 64)))
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(good.size))
    put("rgba.png", encoded(rgba, "PNG"), Expect("ok", "composited over white", (96, 64)))
    palette = good.quantize(16)
    put(
        "palette.png",
        encoded(palette, "PNG", transparency=0),
        Expect("ok", "composited over white", (96, 64)),
    )
    put("gray.jpg", encoded(good.convert("L"), "JPEG"), Expect("ok", "from L", (96, 64)))
    put(
        "pixel.png",
        encoded(Image.new("RGB", (1, 1), "red"), "PNG"),
        Expect("ok", "a side under 16 px", (1, 1)),
    )
    strip = draw_scene(1500, 3, 3)
    put("strip.png", encoded(strip, "PNG"), Expect("ok", "extreme aspect ratio", (1500, 3)))
    tall = draw_scene(4, 900, 4)
    put("tall.png", encoded(tall, "PNG"), Expect("ok", "extreme aspect ratio", (4, 900)))
    put("bomb.png", decompression_bomb(), Expect("failed", "too large"))
    frames = [draw_scene(40, 30, seed) for seed in (5, 6, 7)]
    put(
        "animated.gif",
        encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        Expect("ok", "first of 3 frames", (40, 30)),
    )
    put(
        "pages.tif",
        encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:2]),
        Expect("ok", "first of 2 frames", (40, 30)),
    )
    _, stored = exif_photo(64, 96)
    put(
        "camera.jpg",
        encoded(stored, "JPEG", quality=95, exif=exif_with_orientation(6)),
        Expect("ok", "EXIF orientation 6", (64, 96)),
    )
    locked = put("locked.jpg", jpeg, Expect("ok", "", (96, 64)))
    locked.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway; test_images checks the refusal as nobody
        expect["locked.jpg"] = Expect("failed", "Permission denied")
    (root / "empty folder").mkdir()
    (root / "links").mkdir()
    (root / "links" / "loop").symlink_to("..")
    expect["links/loop"] = Expect("skipped", "already scanned")
    (root / "links" / "self.jpg").symlink_to("self.jpg")
    expect["links/self.jpg"] = Expect("skipped", "symlink loop")
    (root / "links" / "gone.jpg").symlink_to("nowhere.jpg")
    expect["links/gone.jpg"] = Expect("skipped", "broken symlink")
    os.mkfifo(root / "pipe.jpg")
    expect["pipe.jpg"] = Expect("skipped", "not a regular file")
    bad_name = os.fsencode(root) + b"/latin1-\xe9t\xe9.jpg"
    with open(bad_name, "wb") as handle:
        handle.write(jpeg)
    expect["latin1-\ufffdt\ufffd.jpg"] = Expect("skipped", "not valid UTF-8")
    return expect
