"""`autolabel tune`: the random search, its resume log, tags, the CLIP reward, the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_pnp import save_tiny_blip

from autolabel.cli import main
from autolabel.config import RunConfig, TuneConfig, load_recipe
from autolabel.errors import UsageError
from autolabel.methods.base import SegResult, build_segmenter
from autolabel.models.clip import load_clip
from autolabel.tune import (
    ClipReward,
    RewardSet,
    candidates,
    clip_tags,
    load_tags,
    log_path_for,
    random_search,
)
from autolabel.vocab import parse_vocabulary

SPACE = {"layer": [0, 1, 2, 3, 4], "head": [0, 1, 2, 3, 4, 5], "threshold": [0.05, 0.15, 0.25]}
OPTIMUM = {"layer": 3, "head": 4, "threshold": 0.25}
DEFAULT = {"layer": 7, "head": 9, "threshold": 0.15}  # outside the grid, like a paper default
VOCAB = "red square\nblue disc: blue circle, round blue thing\ngreen bar\n"


def synthetic_reward(calls: list[dict]):
    """A reward with one known maximum at OPTIMUM; records every evaluation."""

    def reward(params: dict) -> float:
        calls.append(params)
        return -(
            (params["layer"] - 3) ** 2
            + (params["head"] - 4) ** 2
            + 10 * abs(params["threshold"] - 0.25)
        )

    return reward


def test_candidates_cover_the_grid_once_in_seeded_order() -> None:
    first = list(candidates(SPACE, seed=3))
    assert len(first) == 90 and len({json.dumps(p, sort_keys=True) for p in first}) == 90
    assert first == list(candidates(SPACE, seed=3)) and first != list(candidates(SPACE, seed=4))


def test_search_finds_the_known_optimum(tmp_path: Path) -> None:
    calls: list[dict] = []
    result = random_search(
        SPACE, synthetic_reward(calls), 200, 0, tmp_path / "log.jsonl", "fp", DEFAULT
    )
    assert result.best.params == OPTIMUM and result.best.reward == 0
    assert calls[0] == DEFAULT and result.default.params == DEFAULT and result.default.default
    assert len(calls) == 91  # the default, then the 90 grid points once each, then it stops

    calls.clear()
    partial = random_search(
        SPACE, synthetic_reward(calls), 30, 0, tmp_path / "other.jsonl", "fp", DEFAULT
    )
    assert len(calls) == 30 and len({json.dumps(c, sort_keys=True) for c in calls}) == 30
    assert partial.best.reward == max(t.reward for t in partial.trials)


def test_search_resumes_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "tuned.yaml.tune.jsonl"
    calls: list[dict] = []
    first = random_search(SPACE, synthetic_reward(calls), 5, 1, log, "fp", DEFAULT)
    assert len(calls) == 5 and len(log.read_text().splitlines()) == 6  # header + 5 trials
    text = log.read_text()
    log.write_text(text[:-25])  # an interrupted write cuts the last trial short
    second = random_search(SPACE, synthetic_reward(calls), 10, 1, log, "fp", DEFAULT)
    assert len(calls) == 5 + 6  # the cut trial is evaluated again, the other four are not
    assert [t.params for t in second.trials[:4]] == [t.params for t in first.trials[:4]]
    assert len({json.dumps(t.params, sort_keys=True) for t in second.trials}) == 10
    lines = log.read_text().splitlines()
    assert len(lines) == 11 and all(json.loads(line) for line in lines)
    with pytest.raises(UsageError, match="--restart"):
        random_search(SPACE, synthetic_reward(calls), 12, 1, log, "another", DEFAULT)


def test_tags_from_coco_and_csv(tmp_path: Path) -> None:
    vocab = parse_vocabulary(VOCAB)
    rels = ["a.png", "sub/c.png", "b.jpg"]
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "other/c.png"}],
        "categories": [{"id": 5, "name": "Blue Circle"}, {"id": 6, "name": "zebra"},
                       {"id": 7, "name": "green bar"}],  # fmt: skip
        "annotations": [{"image_id": 1, "category_id": 5}, {"image_id": 1, "category_id": 6},
                        {"image_id": 2, "category_id": 7}, {"image_id": 1, "category_id": 7}],
    }  # fmt: skip
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(coco))
    # synonyms and case match; unknown names are ignored; c.png matches by its unique basename
    assert load_tags(path, vocab, rels) == [[1, 2], [2], []]
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("file,tags\na.png,red square; ROUND BLUE THING\nb.jpg,zebra\n")
    assert load_tags(csv_path, vocab, rels) == [[0, 1], [], []]
    csv_path.write_text("x.png,red square\n")
    with pytest.raises(UsageError, match="none of its file names match"):
        load_tags(csv_path, vocab, rels)
    path.write_text("{}")
    with pytest.raises(UsageError, match="not a COCO annotation file"):
        load_tags(path, vocab, rels)


def test_clip_reward_and_clip_tags(tiny_model: str) -> None:
    vocab = parse_vocabulary(VOCAB)
    clip = load_clip(tiny_model, None, None, "cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
    reward = ClipReward(clip, vocab)
    empty = SegResult(labels=np.zeros((40, 48), np.int32), scores=np.zeros(3))
    # A class with no region leaves a blank image, which can never beat the blank image.
    assert reward.hits(image, empty, [0, 1, 2]) == 0
    full = SegResult(labels=np.ones((40, 48), np.int32), scores=np.zeros(3))
    text = torch.cat([reward.classes[[0]], reward.background])
    masked, blank = _probs(clip, image, text, keep=True), _probs(clip, image, text, keep=False)
    assert reward.hits(image, full, [0]) == int(masked[0] > blank[0])
    assert clip_tags(clip, [image], vocab, 0.0) == [[0, 1, 2]]
    assert clip_tags(clip, [image], vocab, 1.01) == [[]]
    with pytest.raises(UsageError, match="no image has a tag"):
        RewardSet(reward, [image], [[]], vocab).score(None)


def _probs(clip, image: np.ndarray, text: torch.Tensor, keep: bool) -> torch.Tensor:
    """CLIP's softmax over `text` for the whole image (keep) or the blank one, computed here."""
    size = clip.image_size
    x = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) / 255.0
    x = torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]
    x = clip.normalize(x) if keep else torch.zeros_like(x)
    with torch.no_grad():
        feats = clip.model.encode_image(x).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return (clip.model.logit_scale.exp() * feats @ text.T).softmax(-1)[0]


def test_cli_tune_writes_a_recipe_that_run_accepts(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_model: str, capsys
) -> None:
    blip = str(save_tiny_blip(tmp_path / "blip"))
    base = tmp_path / "base.yaml"
    base.write_text(
        "method: pnp\nsettings:\n  resolution: 32\n  layer: 1\n  head: 0\n"
        "  class_filter: all\n  join_words: false\n  dropout_passes: 2\n  crf: false\n"
    )
    tags = tmp_path / "tags.csv"
    tags.write_text("a.png,red square;green bar\nb.jpg,blue disc\n")
    out = tmp_path / "tuned.yaml"
    args = ["tune", str(image_folder), "--vocab", str(vocab_file), "--method", "pnp",
            "--recipe", str(base), "--model", blip, "--tags", str(tags), "--budget", "3",
            "--max-images", "3", "--clip-model", tiny_model, "--clip-pretrained", "none",
            "--device", "cpu", "-o", str(out)]  # fmt: skip
    code = main(args)
    text = "".join(capsys.readouterr())
    assert code == 0, text
    assert "default" in text and "best" in text and str(out) in text

    trials = [json.loads(line)["trial"] for line in log_path_for(out).read_text().splitlines()[1:]]
    assert len(trials) == 3 and trials[0]["default"]
    assert trials[0]["params"] == {"layer": 1, "head": 0, "threshold": 0.15, "blur_sigma": 0.05}
    best = max(trials, key=lambda t: t["reward"])
    assert all(0.0 <= t["reward"] <= 1.0 for t in trials)

    recipe = load_recipe(str(out))
    assert recipe.method == "pnp" and recipe.model == blip
    assert "reward" in recipe.description
    assert {k: recipe.settings[k] for k in best["params"]} == best["params"]
    assert recipe.settings["resolution"] == 32 and recipe.settings["crf"] is False
    resolved = RunConfig(images=image_folder, vocab=vocab_file, out=tmp_path, recipe=str(out))
    build_segmenter("pnp", resolved.resolve().settings, "cpu")
    assert yaml.safe_load(out.read_text())["method"] == "pnp"

    run_out = tmp_path / "run"
    code = main(["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(run_out),
                 "--recipe", str(out), "--device", "cpu", "--min-area", "0"])  # fmt: skip
    assert code == 0, "".join(capsys.readouterr())
    assert json.loads((run_out / "run.json").read_text())["method"] == "pnp"

    # Rerun with a bigger budget: the three logged settings are not evaluated again.
    code = main([*args[:-2], "--budget", "4", "-o", str(out)])
    assert code == 0, "".join(capsys.readouterr())
    assert len(log_path_for(out).read_text().splitlines()) == 1 + 4


def test_tune_car_searches_its_own_settings(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_model: str
) -> None:
    from autolabel.methods.base import validate_settings
    from autolabel.methods.car import SEARCH_SPACE
    from autolabel.tune import run_tune

    base = tmp_path / "car-base.yaml"
    base.write_text(
        f"method: car\nmodel: {tiny_model}\npretrained: none\n"
        f"settings:\n  classifier_model: {tiny_model}\n  classifier_pretrained: none\n"
    )
    tags = tmp_path / "tags.csv"
    tags.write_text("a.png,red square;blue disc\nb.jpg,green bar\n")
    out = tmp_path / "car-tuned.yaml"
    summary = run_tune(
        TuneConfig(
            images=image_folder,
            vocab=vocab_file,
            out=out,
            method="car",
            recipe=str(base),
            tags=tags,
            clip_model=tiny_model,
            clip_pretrained="none",
            budget=2,
            max_images=2,
            device="cpu",
        )  # fmt: skip
    )
    assert summary.result.default.params == {
        "mask_threshold": 0.4, "confidence_threshold": 0.6, "clipes_threshold": 0.4,
        "visual_prompts": ["circle", "blur"],
    }  # fmt: skip
    recipe = load_recipe(str(out))
    assert set(SEARCH_SPACE) <= set(recipe.settings) and set(summary.space) == set(SEARCH_SPACE)
    validate_settings("car", {**recipe.settings, "model": recipe.model})


# ----------------------------------------------------------- --gt-coco: reviewed masks


def test_miou_reward_is_the_mean_iou_of_the_classes_present() -> None:
    from autolabel.tune import IGNORE, miou_reward

    truth = np.array([[0, 1], [1, 1]])
    assert miou_reward([truth.copy()], [truth], 3) == 1.0  # perfect masks
    # background: 1 / 2; class 1: 2 / 3; class 2 (absent everywhere) does not count
    half = np.array([[0, 1], [0, 1]])
    assert miou_reward([half], [truth], 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # a class painted where the truth has none counts as 0; IGNORE pixels are not scored
    assert miou_reward([np.array([[2, 1], [1, 1]])], [truth], 3) == pytest.approx((0 + 1 + 0) / 3)
    ignored = np.array([[IGNORE, 1], [1, 1]])
    assert miou_reward([np.array([[2, 1], [1, 1]])], [ignored], 3) == 1.0
    # one confusion matrix over all images; predictions are resized to the truth's size
    assert miou_reward([np.ones((1, 1), int), np.zeros((2, 2), int)], [truth, truth], 3) == (
        pytest.approx((1 / 5 + 3 / 7) / 2)
    )


def test_the_default_is_kept_unless_the_best_wins_on_resampled_images() -> None:
    from autolabel.evaluate import SegmentationScores
    from autolabel.evaluate import confusion_miou as pooled_miou
    from autolabel.tune import bootstrap_confidence, miou_reward

    rng = np.random.default_rng(5)
    truths = [rng.integers(0, 3, (4, 4)) for _ in range(6)]
    good = [t.copy() for t in truths]
    noisy = [np.where(rng.random(t.shape) < 0.3, 0, t) for t in truths]

    def confusions(preds):
        out = []
        for p, t in zip(preds, truths, strict=True):
            scores = SegmentationScores(3, None)
            scores.add(p, t)
            out.append(scores.confusion)
        return np.stack(out)

    # pooled_miou is miou_reward, computed from per-image confusion matrices
    assert pooled_miou(confusions(noisy).sum(0)) == pytest.approx(miou_reward(noisy, truths, 3))
    assert pooled_miou(confusions(good).sum(0)) == 1.0
    assert bootstrap_confidence(confusions(noisy), confusions(good)) == 1.0  # better everywhere
    assert bootstrap_confidence(confusions(good), confusions(noisy)) == 0.0
    assert bootstrap_confidence(confusions(noisy), confusions(noisy)) == 0.5  # ties count half
    # better on one image, worse on another: about even, far from the 95% a change needs
    mixed = [good[0], noisy[1], *noisy[2:]]
    worse = [noisy[0], good[1], *noisy[2:]]
    assert 0.2 < bootstrap_confidence(confusions(worse), confusions(mixed)) < 0.8


def test_ground_truth_is_painted_from_coco_annotations() -> None:
    from pycocotools import mask as mask_utils

    from autolabel.tune import IGNORE, GroundTruthSet, paint_ground_truth

    square = np.zeros((6, 8), bool)
    square[1:4, 1:4] = True
    rle = mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))
    anns = [
        {"id": 1, "category_id": 9, "segmentation": {"size": [6, 8], "counts": [0, 48]}},
        {"id": 2, "category_id": 5, "segmentation": {**rle, "counts": rle["counts"].decode()}},
        {"id": 3, "category_id": 7, "segmentation": [[5, 0, 8, 0, 8, 6, 5, 6]]},
    ]
    labels = paint_ground_truth(anns, {5: 2, 7: 1, 9: None}, (6, 8))
    expected = np.full((6, 8), IGNORE)  # category 9 is outside the vocabulary: not scored
    expected[square] = 2
    expected[:, 5:] = 1
    assert labels.tolist() == expected.tolist()
    with pytest.raises(UsageError, match="mask on a"):
        paint_ground_truth(anns[1:2], {5: 2}, (7, 8))

    class Perfect:  # a setting that reproduces the reviewed masks exactly
        def segment_batch(self, images, vocab):
            return [SegResult(np.where(labels == IGNORE, 0, labels), np.zeros(3)) for _ in images]

        def describe(self):
            return {"method": "perfect", "settings": {}}

    vocab = parse_vocabulary(VOCAB)
    image = np.zeros((6, 8, 3), np.uint8)
    assert GroundTruthSet([image, image], [labels, labels], vocab, 2).score(Perfect()) == 1.0


def _toy_scenes(root: Path) -> Path:
    from autolabel.toyworld.export import write_dataset

    write_dataset(root, 4, 8383, 128)  # a seed no other test, benchmark or training uses
    return root


def _reviewed(scenes: Path, path: Path) -> Path:
    """Reviewed masks for scenes 0-2 as COCO (ids of its own; scene 1 under another folder,
    matched by its base name), none for scene 3, one image that is not in the folder."""
    from autolabel.instances import Instances
    from autolabel.io.png import read_label_png
    from autolabel.toyworld.scenes import CLASSES

    categories = [{"id": 40 + i, "name": name} for i, name in enumerate(CLASSES)]
    images, annotations = [], []
    for index, name in enumerate(["00000.png", "reviewed/00001.png", "00002.png"]):
        labels = read_label_png(scenes / "masks" / Path(name).name)
        images.append({"id": 7 + index, "file_name": name, "height": 128, "width": 128})
        for ann in Instances.from_label_map(labels, list(CLASSES)).to_coco(7 + index):
            ann.update(id=len(annotations) + 1, category_id=39 + ann["category_id"])
            annotations.append(ann)
    images.append({"id": 99, "file_name": "elsewhere.png", "height": 128, "width": 128})
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return path


def test_cli_tune_against_reviewed_masks(tmp_path: Path, capsys) -> None:
    from autolabel.io.png import read_label_png

    scenes = _toy_scenes(tmp_path / "scenes")
    gt = _reviewed(scenes, tmp_path / "reviewed.json")
    out = tmp_path / "tuned.yaml"
    args = ["tune", str(scenes / "images"), "--vocab", str(scenes / "vocab.txt"), "--method",
            "car", "--recipe", "toy", "--model", "toy", "--gt-coco", str(gt), "--budget", "2",
            "--device", "cpu", "-o", str(out)]  # fmt: skip
    code = main(args)
    text = " ".join("".join(capsys.readouterr()).split())  # the console wraps long lines
    assert code == 0, text
    assert "3 images" in text and "1 image(s) of the folder have none" in text
    assert "mIoU against the reviewed masks" in text

    trials = [json.loads(line)["trial"] for line in log_path_for(out).read_text().splitlines()[1:]]
    assert len(trials) == 2 and trials[0]["default"]
    assert trials[0]["params"] == {
        "mask_threshold": 0.6, "confidence_threshold": 0.6, "clipes_threshold": 0.4,
        "visual_prompts": ["gray", "blur"],
    }  # fmt: skip
    # The reward is the mean IoU against the masks of scenes 0-2 (scene 3 has none), here
    # recomputed from the label PNGs themselves with the default settings.
    settings = RunConfig(images=scenes, vocab=None, out=tmp_path, method="car", recipe="toy",
                         model="toy").resolve().settings  # fmt: skip
    segmenter = build_segmenter("car", settings, "cpu")
    vocab = parse_vocabulary((scenes / "vocab.txt").read_text())
    names = ["00000.png", "00001.png", "00002.png"]
    images = [np.asarray(Image.open(scenes / "images" / n).convert("RGB")) for n in names]
    preds = [r.labels for r in segmenter.segment_batch(images, vocab)]
    truths = [read_label_png(scenes / "masks" / n) for n in names]
    pred, truth = np.stack(preds), np.stack(truths)
    ious = []
    for cls in range(len(vocab) + 1):
        union = int(((pred == cls) | (truth == cls)).sum())
        if union:
            ious.append(int(((pred == cls) & (truth == cls)).sum()) / union)
    assert trials[0]["reward"] == pytest.approx(float(np.mean(ious)), abs=1e-9)
    assert all(0.0 <= t["reward"] <= 1.0 for t in trials)

    best = max(trials, key=lambda t: t["reward"])
    recipe = load_recipe(str(out))
    assert recipe.method == "car" and recipe.model == "toy" and "mIoU" in recipe.description
    # The best replaces the default only if it wins on 95% of bootstrap resamples of the images.
    assert ("bootstrap resamples" in text) == (best is not trials[0])
    chosen = trials[0] if "kept the default" in recipe.description else best
    assert {k: recipe.settings[k] for k in chosen["params"]} == chosen["params"]

    # Other reviewed masks: the log of this search is refused, not silently reused.
    data = json.loads(gt.read_text())
    data["annotations"] = data["annotations"][1:]
    gt.write_text(json.dumps(data))
    assert main(args) == 2
    assert "--restart" in "".join(capsys.readouterr())


def test_cli_tune_gt_coco_errors_are_usage_errors(tmp_path: Path, capsys) -> None:
    scenes = _toy_scenes(tmp_path / "scenes")
    gt = _reviewed(scenes, tmp_path / "reviewed.json")
    args = ["tune", str(scenes / "images"), "--vocab", str(scenes / "vocab.txt"), "--method",
            "car", "--recipe", "toy", "--model", "toy", "--budget", "2", "--device", "cpu",
            "-o", str(tmp_path / "t.yaml"), "--gt-coco"]  # fmt: skip
    tags = tmp_path / "tags.csv"
    tags.write_text("00000.png,red circle\n")
    data = json.loads(gt.read_text())

    def fails(coco: dict | None, *extra: str) -> str:
        path = gt
        if coco is not None:
            path = tmp_path / "other.json"
            path.write_text(json.dumps(coco))
        assert main([*args, str(path), *extra]) == 2
        return "".join(capsys.readouterr())

    assert "exclusive" in fails(None, "--tags", str(tags))
    renamed = {**data, "images": [{**im, "file_name": f"x{im['file_name'][-6:]}"}
                                  for im in data["images"]]}  # fmt: skip
    assert "none of its images" in fails(renamed)
    others = {**data, "categories": [{**c, "name": f"{c['name']}s"} for c in data["categories"]]}
    assert "none of its categories" in fails(others)
    resized = {**data, "images": [{**im, "width": 64} for im in data["images"]]}
    assert "is 64x128" in fails(resized)
    assert not (tmp_path / "t.yaml").exists()
