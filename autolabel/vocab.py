"""The vocabulary: classes to label, their prompt strings, and background words."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from autolabel.errors import UsageError

# Words that absorb regions which are not objects (the 26-word list the SCLIP/NACLIP evaluation
# harness uses for VOC/COCO-Object: line 0 of configs/cls_voc21.txt and cls_coco_object.txt in
# github.com/sinahmr/NACLIP); a user can replace it.
DEFAULT_BACKGROUND: tuple[str, ...] = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk",
    "bed", "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf",
    "curtain", "stair", "floor", "hill", "rail", "fence",
)  # fmt: skip

MAX_CLASSES = 1000
MAX_NAME_CHARS = 200
MAX_FILE_BYTES = 1_000_000
BACKGROUND_DIRECTIVE = "!background:"


@dataclass(frozen=True)
class VocabClass:
    """One class: its display name (also its first prompt) and extra synonyms."""

    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def prompts(self) -> tuple[str, ...]:
        """All strings that stand for this class, the name first."""
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class Vocabulary:
    """Classes in the user's order (category id = index + 1) and the background words."""

    classes: tuple[VocabClass, ...]
    background: tuple[str, ...] = field(default=DEFAULT_BACKGROUND)
    # Words of a default (not user-written) background list left out because they name a class.
    dropped_background: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _validate(self.classes, self.background, "vocabulary")

    @property
    def names(self) -> list[str]:
        """Class display names in category-id order."""
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def prompt_table(self) -> tuple[list[str], list[int]]:
        """Every class prompt (name, then synonyms) in class order, then every background word;
        and the owner of each row: its 1-based class id, 0 for a background word."""
        prompts = [p for c in self.classes for p in c.prompts] + list(self.background)
        owners = [i + 1 for i, c in enumerate(self.classes) for _ in c.prompts]
        return prompts, owners + [0] * len(self.background)

    def with_background(self, words: tuple[str, ...], *, user: bool = True) -> Vocabulary:
        """Same classes, other background words.

        Words the user wrote must not name a class (UsageError); from a default list (the
        built-in one, a recipe's) such words are dropped: the user's classes win.
        """
        if user:
            return Vocabulary(self.classes, tuple(words))
        kept, dropped = _without_classes(tuple(words), self.classes)
        return Vocabulary(self.classes, kept, dropped)

    def background_note(self) -> str:
        """One line saying which default background words were dropped, or ""."""
        if not self.dropped_background:
            return ""
        return (
            f"background word(s) {', '.join(self.dropped_background)} left out of the default "
            "list: they are classes of the vocabulary"
        )

    def to_dict(self) -> dict:
        """Plain data for run.json and recipes."""
        return {
            "classes": [{"name": c.name, "synonyms": list(c.synonyms)} for c in self.classes],
            "background": list(self.background),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Inverse of to_dict."""
        classes = tuple(
            VocabClass(c["name"], tuple(c.get("synonyms", ()))) for c in data["classes"]
        )
        return cls(classes, tuple(data.get("background", DEFAULT_BACKGROUND)))

    @classmethod
    def from_names(cls, names: list[str], background: tuple[str, ...] | None = None) -> Vocabulary:
        """A vocabulary of plain class names without synonyms (the default background drops
        words that are class names)."""
        classes = tuple(VocabClass(n) for n in names)
        if background is not None:
            return cls(classes, tuple(background))
        kept, dropped = _without_classes(DEFAULT_BACKGROUND, classes)
        return cls(classes, kept, dropped)

    def fingerprint(self) -> str:
        """Stable hash, used to refuse resuming a run with another vocabulary."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _without_classes(
    words: tuple[str, ...], classes: tuple[VocabClass, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words that name no class, words that do), matched case-insensitively."""
    names = {p.strip().lower() for c in classes for p in c.prompts}
    return (
        tuple(w for w in words if w.lower() not in names),
        tuple(w for w in words if w.lower() in names),
    )


def _validate(classes: tuple[VocabClass, ...], background: tuple[str, ...], where: str) -> None:
    if not classes:
        raise UsageError(f"{where}: no classes (the file is empty or only has comments)")
    if len(classes) > MAX_CLASSES:
        raise UsageError(f"{where}: {len(classes)} classes; at most {MAX_CLASSES} are supported")
    seen: dict[str, str] = {}
    for c in classes:
        for p in c.prompts:
            if not p.strip():
                raise UsageError(f"{where}: class {c.name!r} has an empty name or synonym")
            if len(p) > MAX_NAME_CHARS:
                raise UsageError(
                    f"{where}: {p[:40]!r}... is {len(p)} characters long (at most {MAX_NAME_CHARS})"
                )
            key = p.strip().lower()
            if key in seen:
                raise UsageError(
                    f"{where}: {p!r} appears twice (in {seen[key]!r} and {c.name!r}); "
                    "each name and synonym must be unique"
                )
            seen[key] = c.name
    clash = sorted({w.lower() for w in background} & set(seen))
    if clash:
        raise UsageError(
            f"{where}: background word(s) {', '.join(clash)} are also classes; "
            f"remove them with a '{BACKGROUND_DIRECTIVE}' line"
        )


def parse_vocabulary(text: str, source: str = "vocabulary") -> Vocabulary:
    """Parse the vocabulary text format (one class per line, `name: syn, syn`, `#` comments)."""
    classes: list[VocabClass] = []
    background: tuple[str, ...] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower().startswith(BACKGROUND_DIRECTIVE):
            words = line[len(BACKGROUND_DIRECTIVE) :]
            background = tuple(w.strip() for w in words.split(",") if w.strip())
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name:
            raise UsageError(f"{source}, line {lineno}: a synonym list without a class name")
        synonyms = tuple(s.strip() for s in rest.split(",") if s.strip())
        classes.append(VocabClass(name, synonyms))
    dropped: tuple[str, ...] = ()
    if background is None:
        background, dropped = _without_classes(DEFAULT_BACKGROUND, tuple(classes))
    # Validate here so that errors name the file rather than a generic "vocabulary".
    _validate(tuple(classes), background, source)
    return Vocabulary(tuple(classes), background, dropped)


def load_vocabulary(
    path: Path, background: list[str] | None = None, *, user: bool = True
) -> Vocabulary:
    """Read and parse a vocabulary file; every problem is a UsageError naming the file.

    `background` replaces the file's background words; `user` says whether a person wrote them
    (then a word that names a class is an error) or they come from a recipe (then it is dropped).
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(f"{path}: {size} bytes is too large for a vocabulary file")
        data = path.read_bytes()
    except UsageError:
        raise
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(f"{path}: cannot read the vocabulary file ({reason})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from exc
    vocab = parse_vocabulary(text, str(path))
    if background is not None:
        vocab = vocab.with_background(tuple(background), user=user)
    return vocab
