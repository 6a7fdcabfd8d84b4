"""Labeling configs: generate one from a vocabulary, and map a project's config onto classes."""

from __future__ import annotations

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
    """

    from_name: str
    to_name: str
    value_key: str
    labels: dict[str, tuple[str, ...]]
    polygon: str | None = None


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
    """The first BrushLabels control attached to an Image, with its labels and synonyms."""
    polygon = None
    brush = None
    for control in interface.controls or ():
        images = [obj for obj in control.objects if obj.tag.lower() == "image"]
        if not images:
            continue
        if control.tag.lower() == "brushlabels" and brush is None:
            brush = (control, images[0])
        elif control.tag.lower() == "polygonlabels" and polygon is None:
            polygon = control
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
    )


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
