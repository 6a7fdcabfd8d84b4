"""ImageSource: find image files, decode them upright as RGB, report bad files as values."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autolabel.errors import ImageError
from autolabel.io.run_folder import STATE_DIR

EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
# Decompression-bomb guard: a declared size above this is refused before any pixel is decoded.
MAX_PIXELS = 178_956_970  # twice Pillow's warning threshold, where Pillow itself refuses (~13k^2)
# Images with a shorter side than this are labelled, with a note that results are unreliable.
SMALL_SIDE = 16
EXIF_ORIENTATION = 0x0112
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


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


class LoadError(ImageError):
    """A file that could not be decoded, with the reason a person can act on."""

    def __init__(self, entry: ImageEntry, reason: str) -> None:
        super().__init__(entry.rel, reason, "load")
        self.entry = entry


def scan_images(
    root: Path, exclude: Iterable[Path] = ()
) -> tuple[list[ImageEntry], list[tuple[str, str]]]:
    """List image files under root recursively in a deterministic order.

    Returns the entries and (relative path, reason) for everything passed over: files of other
    types, symlink loops, broken links, unreadable folders, special files, names that are not
    UTF-8. Hidden files and folders are ignored, and so are the paths in `exclude` (the output
    folder and what a run writes, when a user puts them inside the input folder). Symlinked
    folders are followed once.
    """
    root = root.resolve()
    excluded = {p.resolve() for p in exclude}
    excluded_names = {p.name for p in excluded}
    found: list[tuple[str, Path]] = []
    problems: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()

    # Stacks, not recursion: folder depth is the user's, not ours. Symlinked folders wait until
    # every real folder is scanned, so a link (not the real folder) is the duplicate reported.
    pending, linked = [root], []
    while pending or linked:
        folder = pending.pop() if pending else linked.pop()
        try:
            st = folder.stat()
        except OSError as exc:
            problems.append((_rel(folder, root), _stat_problem(exc, "cannot open folder")))
            continue
        if (st.st_dev, st.st_ino) in visited:
            problems.append(
                (_rel(folder, root), "symlink to a folder already scanned (a loop or a duplicate)")
            )
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append((_rel(folder, root), f"cannot list folder: {exc.strerror}"))
            continue
        for child in children:
            path = Path(child.path)
            if child.name.startswith(".") or (
                child.name in excluded_names and path.resolve() in excluded
            ):
                continue
            rel = _rel(path, root)
            if not _is_utf8(rel):
                problems.append((_printable(rel), "file name is not valid UTF-8; rename it"))
                continue
            try:
                st_child = path.stat()
            except FileNotFoundError:
                problems.append((rel, "broken symlink"))
                continue
            except OSError as exc:
                problems.append((rel, _stat_problem(exc, "cannot stat")))
                continue
            if stat.S_ISDIR(st_child.st_mode):
                if os.path.isdir(path / STATE_DIR):
                    problems.append((rel, "output folder of another autolabel run (not scanned)"))
                else:
                    (linked if child.is_symlink() else pending).append(path)
            elif path.suffix.lower() not in EXTENSIONS:
                kind = path.suffix.lower() or "no extension"
                problems.append((rel, f"not a supported image type ({kind})"))
            elif not stat.S_ISREG(st_child.st_mode):
                problems.append((rel, "not a regular file (a pipe, socket or device)"))
            else:
                found.append((rel, path))

    found.sort(key=lambda item: item[0])
    keys = unique_keys([rel for rel, _ in found])
    entries = [
        ImageEntry(i + 1, path, rel, key)
        for i, ((rel, path), key) in enumerate(zip(found, keys, strict=True))
    ]
    problems.sort()
    return entries, problems


def unique_keys(rels: list[str]) -> list[str]:
    """Output names: the path without extension, or with it where two files share a stem."""
    stems = [rel.rsplit(".", 1)[0] for rel in rels]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    # photo.jpg and photo.png in one folder would share masks/photo.png: keep their extensions.
    keys = [stem if counts[stem] == 1 else rel for rel, stem in zip(rels, stems, strict=True)]
    # Only a file literally named like another's kept extension ("a.jpg.png") still collides.
    return dedupe(keys)


def dedupe(names: list[str]) -> list[str]:
    """The names, with "~2", "~3"... added to any that an earlier one already took."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}~{n}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode turned undecodable bytes into lone surrogates
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _stat_problem(exc: OSError, what: str) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return f"{what}: {exc.strerror or exc}"


def stamp(path: Path) -> list[int]:
    """Size and modification time: a file replaced under the same name is labelled again."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def load_image(entry: ImageEntry, data: bytes | None = None) -> LoadedImage | LoadError:
    """Decode one file (or its bytes, fetched elsewhere) to upright RGB uint8; every failure
    comes back as a LoadError."""
    if data is None:
        try:
            size = entry.path.stat().st_size
        except OSError as exc:
            return LoadError(entry, _stat_problem(exc, "cannot read file"))
    else:
        size = len(data)
    if size == 0:
        return LoadError(entry, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns from half of MAX_PIXELS on; the limit here is MAX_PIXELS itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(entry.path if data is None else io.BytesIO(data)) as im:
                return decode_pil(entry, im)
    except Image.DecompressionBombError as exc:
        return LoadError(entry, f"image too large to decode safely ({exc})")
    except UnidentifiedImageError:
        return LoadError(entry, "not an image Pillow can read (unknown format or not image data)")
    except PermissionError as exc:
        return LoadError(entry, f"cannot read file: {exc.strerror}")
    except MemoryError:
        return LoadError(entry, "not enough memory to decode this image")
    except Exception as exc:  # decoders raise OSError, SyntaxError, zlib/struct errors and more
        return LoadError(entry, f"corrupt or truncated image ({type(exc).__name__}: {exc})")


def decode_pil(entry: ImageEntry, im: Image.Image) -> LoadedImage | LoadError:
    """Decode an opened Pillow image to upright RGB uint8 (a LoadError when it cannot be)."""
    width, height = im.size
    if width < 1 or height < 1:
        return LoadError(entry, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        return LoadError(
            entry,
            f"image too large: {width}x{height} declared (limit {MAX_PIXELS} pixels); "
            "could be a decompression bomb",
        )
    notes = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"first of {frames} frames used")
        im.seek(0)
    im.load()
    upright, orientation = _upright(im)
    if orientation:
        notes.append(f"rotated upright (EXIF orientation {orientation})")
    rgb, converted = _to_rgb(upright)
    if converted:
        notes.append(converted)
    if min(rgb.shape[:2]) < SMALL_SIDE:
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        notes.append(f"a side under {SMALL_SIDE} px ({size}); labels are unreliable")
    return LoadedImage(entry, rgb, "; ".join(notes))


def _upright(im: Image.Image) -> tuple[Image.Image, int]:
    """Apply the EXIF orientation, here and only here: downstream sees upright pixels only.

    Returns the image and the orientation applied (0 when none). A broken EXIF block is
    ignored rather than failing an otherwise good image.
    """
    try:
        orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: struct, value and type errors from the parser
        return im, 0
    if orientation not in range(2, 9):
        return im, 0
    return ImageOps.exif_transpose(im), orientation


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str]:
    """Any Pillow mode to HxWx3 uint8, and a note saying what was converted (or "")."""
    if im.mode in WIDE_MODES:
        arr = np.asarray(im).astype(np.int64)
        arr = np.clip(arr, 0, None)
        top = int(arr.max()) if arr.size else 0
        # 12-bit and 16-bit data are stretched by their maximum so they do not come out black.
        gray = (arr * 255 // top if top > 255 else arr).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), f"{im.mode} grayscale scaled to 8 bits"
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        gray = np.nan_to_num(scaled).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), "float image scaled to 8 bits"
    note = "" if im.mode == "RGB" else f"converted from {im.mode} to RGB"
    if "transparency" in im.info and im.mode in ("P", "L", "RGB", "1"):
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            note += "; transparent pixels composited over white"
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"pixel format {im.mode} cannot be converted to RGB ({exc})") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)), note.lstrip("; ")


def iter_images(entries: list[ImageEntry]) -> Iterator[LoadedImage | LoadError]:
    """Decode entries in order."""
    for entry in entries:
        yield load_image(entry)
