"""ImageSource: find image files, decode them upright as RGB, report bad files as values."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# Decompression-bomb guard: a declared size above this is refused before any pixel is decoded.
MAX_PIXELS = 178_956_970  # Pillow's own default limit (about 13k x 13k)


@dataclass(frozen=True)
class ImageEntry:
    """A file found under the input folder; id is its 1-based position in sorted order."""

    id: int
    path: Path
    rel: str  # POSIX path relative to the input root: the COCO file_name
    key: str = ""  # output name without extension (masks/<key>.png); unique within a run


@dataclass
class LoadedImage:
    """An upright RGB image, and a note about anything done to get it (first frame, mode)."""

    entry: ImageEntry
    rgb: np.ndarray  # H x W x 3 uint8, EXIF orientation applied
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the upright image."""
        return self.rgb.shape[0], self.rgb.shape[1]


@dataclass(frozen=True)
class LoadError:
    """A file that could not be used, with the reason a person can act on."""

    entry: ImageEntry
    reason: str


def scan_images(
    root: Path, exclude: Path | None = None
) -> tuple[list[ImageEntry], list[tuple[str, str]]]:
    """List image files under root recursively in a deterministic order.

    Returns the entries and (relative path, reason) for everything passed over: files of other
    types, symlink loops, broken links, unreadable folders. Hidden files are ignored, and so is
    `exclude` (the output folder, when a user puts it inside the input folder).
    """
    root = root.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[str, Path]] = []
    problems: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path) -> None:
        try:
            st = folder.stat()
        except OSError as exc:
            problems.append((_rel(folder, root), f"cannot open folder: {exc.strerror}"))
            return
        key = (st.st_dev, st.st_ino)
        if key in visited:
            problems.append((_rel(folder, root), "symlink loop: folder already visited"))
            return
        visited.add(key)
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append((_rel(folder, root), f"cannot list folder: {exc.strerror}"))
            return
        for child in children:
            path = Path(child.path)
            try:
                is_dir = child.is_dir()
            except OSError as exc:
                problems.append((_rel(path, root), f"cannot stat: {exc.strerror}"))
                continue
            if is_dir:
                if excluded is None or path.resolve() != excluded:
                    walk(path)
            elif child.name.startswith("."):
                continue
            elif path.suffix.lower() not in EXTENSIONS:
                kind = path.suffix.lower() or "no extension"
                problems.append((_rel(path, root), f"not a supported image type ({kind})"))
            elif child.is_symlink() and not path.exists():
                problems.append((_rel(path, root), "broken symlink"))
            else:
                found.append((_rel(path, root), path))

    walk(root)
    found.sort(key=lambda item: item[0])
    stems = [rel.rsplit(".", 1)[0] for rel, _ in found]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # photo.jpg and photo.png in one folder would share masks/photo.png: keep their extensions.
    entries = [
        ImageEntry(i + 1, path, rel, stem if counts[stem] == 1 else rel)
        for i, ((rel, path), stem) in enumerate(zip(found, stems, strict=True))
    ]
    return entries, problems


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def load_image(entry: ImageEntry) -> LoadedImage | LoadError:
    """Decode one file to upright RGB uint8; every failure comes back as a LoadError."""
    try:
        size = entry.path.stat().st_size
    except OSError as exc:
        return LoadError(entry, f"cannot read file: {exc.strerror}")
    if size == 0:
        return LoadError(entry, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(entry.path) as im:
                return _decode(entry, im)
    except Image.DecompressionBombError as exc:
        return LoadError(entry, f"image too large to decode safely ({exc})")
    except Image.DecompressionBombWarning as exc:
        return LoadError(entry, f"image too large to decode safely ({exc})")
    except UnidentifiedImageError:
        return LoadError(entry, "not an image Pillow can read (unknown or unsupported format)")
    except PermissionError as exc:
        return LoadError(entry, f"cannot read file: {exc.strerror}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return LoadError(entry, f"corrupt or truncated image ({exc})")


def _decode(entry: ImageEntry, im: Image.Image) -> LoadedImage | LoadError:
    width, height = im.size
    if width * height > MAX_PIXELS:
        return LoadError(
            entry, f"image too large: {width}x{height} declared (limit {MAX_PIXELS} pixels)"
        )
    notes = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"first of {frames} frames used")
        im.seek(0)
    im.load()
    # EXIF orientation is applied here and only here: everything downstream sees upright pixels.
    upright = ImageOps.exif_transpose(im)
    rgb = _to_rgb(upright)
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        return LoadError(entry, "image has no pixels")
    return LoadedImage(entry, rgb, "; ".join(notes))


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to HxWx3 uint8; transparency is composited over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        gray = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        gray = ((arr - lo) / (hi - lo) * 255 if hi > lo else arr * 0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def iter_images(entries: list[ImageEntry]) -> Iterator[LoadedImage | LoadError]:
    """Decode entries in order."""
    for entry in entries:
        yield load_image(entry)
