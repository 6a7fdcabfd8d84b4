"""Labeling configs: generate one from a vocabulary, and map a project's config onto classes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

from autolabel.errors import UsageError
from autolabel.io.png import class_colour
from autolabel.vocab import DEFAULT_BACKGROUND, VocabClass, Vocabulary

BRUSH_NAME = "brush"
POLYGON_NAME = "polygon"
IMAGE_NAME = "image"


@dataclass(frozen=True)
class LabelTarget:
    """Where brush masks go in a project: control and object names, and the labels offered.

    labels: label value -> its `predicted_values` synonyms, in config order.
    polygon: name of a PolygonLabels control on the same image, if the config has one.
    score_threshold: the control's `model_score_threshold`: instances scoring below it are
        dropped (0 keeps all).
    skip: the control's `model_skip`: the backend predicts nothing for this project.
    prompts: names of the TextArea controls on the same image (text prompts, interactive).
    """

    from_name: str
    to_name: str
    value_key: str
    labels: dict[str, tuple[str, ...]]
    polygon: str | None = None
    score_threshold: float = 0.0
    skip: bool = False
    prompts: tuple[str, ...] = ()


def label_color(index: int) -> str:
    """The display colour of the index-th class: that of class id index + 1 in PNGs and previews."""
    return "#" + bytes(class_colour(index + 1)).hex()


def make_label_config(vocab: Vocabulary, polygons: bool = False) -> str:
    """A labeling config with one BrushLabels label per class, synonyms as predicted_values."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE_NAME, value=f"${IMAGE_NAME}", zoom="true")
    controls = [("BrushLabels", BRUSH_NAME)]
    if polygons:
        controls.append(("PolygonLabels", POLYGON_NAME))
    for tag, name in controls:
        control = ET.SubElement(view, tag, name=name, toName=IMAGE_NAME)
        for index, cls in enumerate(vocab.classes):
            attrs = {"value": cls.name, "background": label_color(index)}
            if cls.synonyms:
                attrs["predicted_values"] = ",".join(cls.synonyms)
            ET.SubElement(control, "Label", attrs)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def parse_interface(label_config: str, where: str) -> LabelInterface:
    """Parse a labeling config; a broken one is a UsageError naming where it came from."""
    try:
        return LabelInterface(label_config)
    except Exception as exc:  # lxml and the SDK raise many kinds for bad XML
        raise UsageError(f"{where}: the labeling config cannot be parsed ({exc})") from exc


def find_target(interface: LabelInterface, where: str) -> LabelTarget:
    """The first BrushLabels control attached to an Image, with its labels and synonyms.

    Its `model_score_threshold` and `model_skip` attributes are read as Label Studio's own ML
    backends read them; TextArea controls on the same image are the text prompts.
    """
    polygon = None
    brush = None
    textareas = []
    for control in interface.controls or ():
        images = [obj for obj in control.objects if obj.tag.lower() == "image"]
        if not images:
            continue
        if control.tag.lower() == "brushlabels" and brush is None:
            brush = (control, images[0])
        elif control.tag.lower() == "polygonlabels" and polygon is None:
            polygon = control
        elif control.tag.lower() == "textarea":
            textareas.append(control)
    if brush is None:
        raise UsageError(
            f"{where}: the labeling config has no <BrushLabels> attached to an <Image>; autolabel "
            "sends brush masks (create the project with autolabel, or add a BrushLabels control)"
        )
    control, image = brush
    labels: dict[str, tuple[str, ...]] = {}
    for value, tag in (control.labels_attrs or {}).items():
        synonyms = tag.attr.get("predicted_values", "")
        labels[value] = tuple(s.strip() for s in synonyms.split(",") if s.strip())
    if not labels:
        raise UsageError(f"{where}: the <BrushLabels name={control.name!r}> control has no labels")
    if polygon is not None and image.name not in polygon.to_name:
        polygon = None
    return LabelTarget(
        from_name=control.name,
        to_name=image.name,
        value_key=image.value_name,
        labels=labels,
        polygon=polygon.name if polygon is not None else None,
        score_threshold=_score_threshold(control.attr, f"{where}: <BrushLabels {control.name}>"),
        skip=_true(control.attr.get("model_skip")),
        prompts=tuple(t.name for t in textareas if image.name in t.to_name),
    )


def _true(value: object) -> bool:
    """A boolean config attribute as the ML backends read it ("1", "true", "yes")."""
    return str(value or "false").strip().lower() in ("1", "true", "yes")


def _score_threshold(attrs: dict, where: str) -> float:
    raw = attrs.get("model_score_threshold")
    if raw is None or not str(raw).strip():
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{where}: model_score_threshold={raw!r} is not a number in [0, 1]")
    return value


def label_for(target: LabelTarget, name: str) -> str | None:
    """The project label a name stands for: the label itself, the label ignoring case, or the
    label listing it in predicted_values (ignoring case); None when none does."""
    wanted = name.strip()
    if wanted in target.labels:
        return wanted
    folded = wanted.lower()
    for value in target.labels:
        if value.lower() == folded:
            return value
    for value, synonyms in target.labels.items():
        if any(s.lower() == folded for s in synonyms):
            return value
    return None


def prompt_vocabulary(
    text: str, target: LabelTarget, background: tuple[str, ...] = DEFAULT_BACKGROUND
) -> tuple[str, Vocabulary]:
    """A typed prompt as (the label its region gets, a one-class vocabulary to segment it).

    The text is one phrase, or several split by commas (they become one class: the first is
    its name, the rest synonyms). The label is the first the phrases name (see label_for),
    else the config's first label. Background words that a phrase names are dropped.
    """
    phrases: list[str] = []
    for part in text.split(","):
        phrase = " ".join(part.split())
        if phrase and phrase.lower() not in {p.lower() for p in phrases}:
            phrases.append(phrase)
    if not phrases:
        raise UsageError("the text prompt is empty")
    named = [label for phrase in phrases if (label := label_for(target, phrase))]
    label = named[0] if named else next(iter(target.labels))
    folded = {p.lower() for p in phrases}
    words = tuple(w for w in background if w.lower() not in folded)
    return label, Vocabulary((VocabClass(phrases[0], tuple(phrases[1:])),), words)


def match_vocabulary(target: LabelTarget, vocab: Vocabulary, where: str) -> list[str]:
    """The project label for each class in vocabulary order; a clear error if any is missing.

    A class matches a label with its name, through the label's predicted_values, or by one of
    its synonyms, ignoring case, in that order of preference.
    """
    exact = {value: value for value in target.labels}
    folded = {value.lower(): value for value in target.labels}
    by_synonym = {s.lower(): value for value, syns in target.labels.items() for s in syns}
    chosen: list[str] = []
    missing: list[str] = []
    for cls in vocab.classes:
        label = exact.get(cls.name) or by_synonym.get(cls.name.lower())
        for prompt in cls.prompts:
            label = label or folded.get(prompt.lower()) or by_synonym.get(prompt.lower())
        if label is None:
            missing.append(cls.name)
        else:
            chosen.append(label)
    if missing:
        raise UsageError(
            f"{where}: the labeling config has no BrushLabels label for "
            f"{', '.join(repr(m) for m in missing)}; its labels are "
            f"{', '.join(repr(v) for v in target.labels)}. Add the missing labels (or list the "
            "class names in a label's predicted_values), or push to a new project with --title"
        )
    twice = sorted({label for label in chosen if chosen.count(label) > 1})
    if twice:
        raise UsageError(
            f"{where}: several classes map to the same label ({', '.join(twice)}); "
            "give each class its own label"
        )
    return chosen


def vocabulary_from_target(
    target: LabelTarget, background: tuple[str, ...] = DEFAULT_BACKGROUND
) -> Vocabulary:
    """The classes a project asks for: its labels, with predicted_values as synonyms.

    Background words that are also labels or synonyms are dropped, so that a project labelling
    "tree" or "sky" still works with the default background list.
    """
    classes = []
    seen = {value.lower() for value in target.labels}
    for value, synonyms in target.labels.items():
        kept = []
        for syn in synonyms:
            if syn.lower() not in seen:
                seen.add(syn.lower())
                kept.append(syn)
        classes.append(VocabClass(value, tuple(kept)))
    words = tuple(w for w in background if w.lower() not in seen)
    return Vocabulary(tuple(classes), words)
