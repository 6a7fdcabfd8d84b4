"""Interactive labelling in the ML backend: clicks, boxes and typed phrases on hand-made contexts.

The toy model segments toy-world scenes almost perfectly, so each test compares the interactive
answer with the backend's own pre-annotation of the same image (the instances it picks from).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.api import Labeler
from autolabel.sinks.labelstudio.backend.media import MediaResolver
from autolabel.sinks.labelstudio.backend.predictor import SERVE_VOCABULARY, ConfigError, Predictor
from autolabel.sinks.labelstudio.regions import region_mask
from autolabel.toyworld.scenes import CLASSES, Scene, make_scene

# Scene 9 of seed 7: a blue circle, a blue square, a green square and a red square, 128 px.
SCENE = (7, 9)
# label -> its predicted_values: the red square is labelled "Tomato".
LABELS = {"blue circle": "", "blue square": "", "green square": "", "Tomato": "red square"}
IMAGE_URL = "/data/local-files/?d=scenes/scene.png"


def label_config(brush_attrs: str = "") -> str:
    """A config with brush masks and the three interactive tools (keypoint, box, text)."""
    labels = "".join(f'<Label value="{v}" predicted_values="{p}"/>' for v, p in LABELS.items())
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="brush" toName="image" {brush_attrs}>{labels}</BrushLabels>'
        f'<KeyPointLabels name="click" toName="image" smart="true">{labels}</KeyPointLabels>'
        f'<RectangleLabels name="box" toName="image" smart="true">{labels}</RectangleLabels>'
        '<TextArea name="prompt" toName="image" editable="true" showSubmitButton="true"/>'
        '<Text name="notes" value="$notes"/><TextArea name="comment" toName="notes"/>'
        "</View>"
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, Path]:
    """The scene and the document root it is saved under (scenes/scene.png)."""
    root = tmp_path_factory.mktemp("interactive")
    scene = make_scene(*SCENE)
    (root / "scenes").mkdir()
    Image.fromarray(scene.image).save(root / "scenes" / "scene.png")
    return scene, root


@pytest.fixture(scope="module")
def predictor(scene: tuple[Scene, Path]) -> Predictor:
    """The toy model (bundled, no download) serving Local Storage files of the scene folder."""
    labeler = Labeler(SERVE_VOCABULARY, model="toy", device="cpu", min_area=0)
    return Predictor(labeler, MediaResolver(document_root=scene[1]))


@pytest.fixture(scope="module")
def pre_annotation(predictor: Predictor) -> list[tuple[str, np.ndarray, float]]:
    """(label, mask, score) of every region the backend pre-annotates on the scene."""
    (prediction,) = predictor.predict([TASK], label_config())
    regions = [(*region_mask(r), r["score"]) for r in prediction["result"]]
    assert regions, "the toy model found nothing in the scene"
    return regions


TASK = {"id": 1, "data": {"image": IMAGE_URL}}


def _point(label: str, row: int, col: int, size: int = 128, positive: bool = True) -> dict:
    """A KeyPointLabels region clicked on pixel (row, col), as the LS frontend sends it."""
    return {
        "original_width": size,
        "original_height": size,
        "image_rotation": 0,
        "value": {
            "x": (col + 0.5) * 100 / size,
            "y": (row + 0.5) * 100 / size,
            "width": 0.6,
            "keypointlabels": [label],
        },
        "is_positive": positive,
        "id": "k1",
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def _box(label: str, x: float, y: float, w: float, h: float, size: int = 128) -> dict:
    return {
        "original_width": size,
        "original_height": size,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },  # fmt: skip
        "id": "r1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def _text(text: str, from_name: str = "prompt") -> dict:
    return {
        "value": {"text": [text]},
        "id": "t1",
        "from_name": from_name,
        "to_name": "image" if from_name == "prompt" else "notes",
        "type": "textarea",
        "origin": "manual",
    }


def _interactive(predictor: Predictor, *regions: dict, config: str | None = None) -> list:
    """The regions the backend returns, as (label, mask, region); checks the prediction shape."""
    config = config or label_config()
    (prediction,) = predictor.predict([TASK], config, {"result": list(regions)})
    assert prediction["model_version"] == predictor.spec(config).model_version
    out = []
    for region in prediction["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == (
            "brush", "image", "brushlabels"
        )  # fmt: skip
        out.append((*region_mask(region), region))
    return out


def _inside(mask: np.ndarray) -> tuple[int, int]:
    """A pixel well inside a mask: the one farthest from its edge."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(row), int(col)


def _largest(regions: list, label: str) -> np.ndarray:
    masks = [mask for name, mask, _ in regions if name == label]
    assert masks, f"no {label} in the pre-annotation"
    return max(masks, key=lambda m: int(m.sum()))


def test_click_inside_an_object_returns_exactly_that_instance(
    predictor: Predictor, pre_annotation: list
) -> None:
    for label in ("green square", "Tomato"):
        instance = _largest(pre_annotation, label)
        ((got_label, got_mask, region),) = _interactive(
            predictor, _point(label, *_inside(instance))
        )
        assert got_label == label
        assert np.array_equal(got_mask, instance)
        assert (region["original_height"], region["original_width"]) == (128, 128)
    # Two clicks on one object give it once; LS's params.context is read as well.
    instance = _largest(pre_annotation, "blue circle")
    row, col = _inside(instance)
    context = {"result": [_point("blue circle", row, col), _point("blue circle", row + 1, col)]}
    (prediction,) = predictor.predict([TASK], label_config(), params={"context": context})
    ((label, mask),) = [region_mask(r) for r in prediction["result"]]
    assert label == "blue circle" and np.array_equal(mask, instance)


def test_click_on_background_or_on_another_class_returns_nothing(
    predictor: Predictor, pre_annotation: list, scene: tuple[Scene, Path]
) -> None:
    covered = np.zeros((128, 128), dtype=bool)
    for _, mask, _ in pre_annotation:
        covered |= mask
    background = ~covered & (scene[0].labels == 0)
    assert _interactive(predictor, _point("blue square", *_inside(background))) == []
    # The label chosen on the click is the class to segment: a red square is not a blue one.
    tomato = _largest(pre_annotation, "Tomato")
    assert _interactive(predictor, _point("blue square", *_inside(tomato))) == []
    # A negative click removes what it hits.
    circle = _largest(pre_annotation, "blue circle")
    row, col = _inside(circle)
    both = [_point("blue circle", row, col), _point("blue circle", row, col, positive=False)]
    assert _interactive(predictor, *both) == []


def test_box_returns_the_instances_it_overlaps_clipped_to_the_box(
    predictor: Predictor, pre_annotation: list
) -> None:
    square = _largest(pre_annotation, "green square")
    rows, cols = np.nonzero(square)
    # The box covers the square's left half, with a margin above, below and to the left;
    # 128 px: 1 % is 1.28 px, so edges are placed on whole pixels through integer pixels.
    top, bottom = max(int(rows.min()) - 4, 0), min(int(rows.max()) + 5, 128)
    left, right = max(int(cols.min()) - 4, 0), (int(cols.min()) + int(cols.max())) // 2
    box = np.zeros((128, 128), dtype=bool)
    box[top:bottom, left:right] = True
    pct = 100 / 128
    region = _box("green square", left * pct, top * pct, (right - left) * pct, (bottom - top) * pct)
    ((label, mask, _),) = _interactive(predictor, region)
    assert label == "green square"
    assert np.array_equal(mask, square & box)
    assert 0 < mask.sum() < square.sum()
    # A box around nothing of its label gives nothing.
    region["value"]["rectanglelabels"] = ["blue circle"]
    assert _interactive(predictor, region) == []


def test_text_prompt_is_segmented_and_labelled_with_the_label_it_names(
    predictor: Predictor, scene: tuple[Scene, Path]
) -> None:
    truth = scene[0].labels == CLASSES.index("red square") + 1
    ((label, mask, region),) = _interactive(predictor, _text("red square"))
    assert label == "Tomato"  # "red square" is in the Tomato label's predicted_values
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9, iou
    assert 0.0 < region["score"] <= 1.0
    # Phrases split by commas are one class, labelled with the label one of them names.
    ((label, mask, _),) = _interactive(predictor, _text("square, green square"))
    assert label == "green square"
    # With clicks, the phrase's instances under them: here the blue square alone.
    blue = scene[0].labels == CLASSES.index("blue square") + 1
    row, col = _inside(blue)
    ((label, mask, _),) = _interactive(predictor, _text("blue square"), _point("", row, col))
    assert label == "blue square"
    assert mask[row, col] and (mask & blue).sum() / (mask | blue).sum() > 0.9
    assert (mask & ~blue).sum() <= 0.05 * blue.sum()
    # Text typed in a TextArea of another object is no prompt: alone, it asks for nothing.
    assert _interactive(predictor, _text("blue square", from_name="comment")) == []


def test_model_skip_and_model_score_threshold_are_honoured(
    predictor: Predictor, pre_annotation: list
) -> None:
    skip = label_config('model_skip="true"')
    (prediction,) = predictor.predict([TASK], skip)
    assert prediction["result"] == []
    circle = _largest(pre_annotation, "blue circle")
    assert _interactive(predictor, _point("blue circle", *_inside(circle)), config=skip) == []

    scores = sorted({score for _, _, score in pre_annotation})
    assert len(scores) >= 2, "all regions score the same: no threshold between them"
    threshold = round((scores[0] + scores[1]) / 2, 6)
    config = label_config(f'model_score_threshold="{threshold}"')
    (prediction,) = predictor.predict([TASK], config)
    kept = [(label, mask) for label, mask, score in pre_annotation if score >= threshold]
    got = [region_mask(r) for r in prediction["result"]]
    assert 0 < len(got) == len(kept) < len(pre_annotation)
    for (label, mask), (want_label, want_mask) in zip(got, kept, strict=True):
        assert label == want_label and np.array_equal(mask, want_mask)
    assert all(r["score"] >= threshold for r in prediction["result"])
    # Fewer regions than the unthresholded run: another model version.
    assert predictor.spec(config).model_version != predictor.spec(label_config()).model_version
    # A click on the dropped instance finds nothing; without the threshold it finds it.
    label, weak, _ = min(pre_annotation, key=lambda r: r[2])
    click = _point(label, *_inside(weak))
    assert _interactive(predictor, click, config=config) == []
    ((_, mask, _),) = _interactive(predictor, click)
    assert np.array_equal(mask, weak)

    with pytest.raises(ConfigError, match="model_score_threshold"):
        predictor.spec(label_config('model_score_threshold="high"'))


def test_malformed_context_gives_empty_results_not_errors(predictor: Predictor) -> None:
    for context in ({"result": "x"}, {"result": [{"type": "keypointlabels", "value": {}}]}, [1]):
        (prediction,) = predictor.predict([TASK], label_config(), context)  # type: ignore[arg-type]
        assert prediction["result"] == []
