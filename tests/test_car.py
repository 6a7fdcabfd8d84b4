"""CaR: each stage pinned on its own, the recurrence, and the fast path equal to the reference."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import draw_scene

from autolabel.errors import UsageError
from autolabel.methods import gradcam
from autolabel.methods.car import Pass, Recurrence, _ensemble, build, pass_of
from autolabel.methods.prompts import mask_geometry, render_prompts, visual_prompt
from autolabel.methods.settings import CaRSettings
from autolabel.models import vit
from autolabel.models.zeroshot import SEMANTIC_TEMPLATES
from autolabel.vocab import Vocabulary

VOCAB = Vocabulary.from_names(["red square", "blue disc", "green bar"], background=("sky", "wall"))


@pytest.fixture(scope="module")
def weights(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two seeded tiny checkpoints, one for f and one for g (distinct models, fixed weights).

    g's logit scale is 1 so that the double softmax is not saturated on random weights and the
    recurrence has something to decide (with θ 0.26: one image keeps 2 of 3 queries, one 1).
    """
    import open_clip

    folder = tmp_path_factory.mktemp("car-weights")
    paths = {}
    for role, seed in (("f", 1), ("g", 2)):
        torch.manual_seed(seed)
        model = open_clip.create_model(tiny_model)
        if role == "g":
            with torch.no_grad():
                model.logit_scale.fill_(0.0)
        paths[role] = str(folder / f"{role}.pt")
        torch.save(model.state_dict(), paths[role])
    return paths


def settings(tiny_model: str, weights: dict[str, str], **extra: object) -> dict:
    """Recipe settings for CaR on the tiny seeded models."""
    return {
        "model": tiny_model,
        "checkpoint": weights["f"],
        "classifier_model": tiny_model,
        "classifier_checkpoint": weights["g"],
        "confidence_threshold": 0.26,
        **extra,
    }


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [np.array(draw_scene(64, 48, 0)), np.array(draw_scene(40, 56, 1))]


# --- visual prompts -------------------------------------------------------------------------


def _disc_mask(h: int = 40, w: int = 60) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - 18) ** 2 / 100 + (xx - 25) ** 2 / 150) < 1


def test_blur_gray_black_change_only_the_outside() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = _disc_mask()
    blurred = render_prompts(image, mask, ["blur"])
    assert np.array_equal(blurred[mask], image[mask])
    assert np.array_equal(blurred[~mask], cv2.GaussianBlur(image, (15, 15), 0)[~mask])
    gray = render_prompts(image, mask, ["gray"])
    assert np.array_equal(gray[mask], image[mask])
    assert (gray[~mask] == gray[~mask][:, :1]).all()  # three equal channels outside
    # The official code applies BGR weights to its RGB array: pure red gets blue's 0.114.
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    assert (render_prompts(red, mask, ["gray"])[~mask] == 29).all()
    black = render_prompts(image, mask, ["black"])
    assert (black[~mask] == 0).all() and np.array_equal(black[mask], image[mask])


def test_circle_is_a_one_pixel_red_ellipse_around_the_mask_box() -> None:
    image = np.full((40, 60, 3), 128, np.uint8)
    mask = _disc_mask()
    cy, cx, height, width = mask_geometry(mask)
    assert (cy, cx) == (18, 25) and height == 19 and width == 25
    ring = np.all(render_prompts(image, mask, ["circle"]) == (255, 0, 0), axis=-1)
    ys, xs = np.nonzero(ring)
    assert ring.sum() > 40
    assert xs.min() == cx - width // 2 and xs.max() == cx + width // 2
    assert ys.min() == cy - height // 2 and ys.max() == cy + height // 2
    rect = np.all(render_prompts(image, mask, ["rectangle"]) == (255, 0, 0), axis=-1)
    assert rect[cy - height // 2, cx] and rect[cy, cx - width // 2] and not rect[cy, cx]
    contour = np.all(render_prompts(image, mask, ["contour"]) == (255, 0, 0), axis=-1)
    assert contour[mask].sum() > 0 and not contour[cy, cx]


def test_prompt_order_is_fixed_and_weak_proposals_stay_unprompted() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = _disc_mask()
    assert np.array_equal(
        render_prompts(image, mask, ["circle", "blur"]),
        render_prompts(image, mask, ["blur", "circle"]),
    )
    proposal = np.where(mask, 0.9, 0.1).astype(np.float32)
    assert np.array_equal(
        visual_prompt(image, proposal, 0.4, ["blur"]), render_prompts(image, mask, ["blur"])
    )
    weak = np.zeros_like(proposal)
    weak[0, :2] = 0.5  # sums to 1: the official code leaves the image as it is
    assert visual_prompt(image, weak, 0.4, ["blur"]) is image


# --- f: Grad-CAM and affinity ---------------------------------------------------------------


def test_explicit_attention_matches_multihead_attention() -> None:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected, weights = mha(x, x, x, need_weights=True)
        out, averaged = vit.attention(mha, x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(averaged, weights, atol=1e-7, rtol=0)
    assert vit.attention(mha, x, average=False)[1] is None


def test_position_embedding_resize_keeps_the_trained_grid(tiny_model: str, weights) -> None:
    from autolabel.models.clip import load_clip

    visual = load_clip(tiny_model, None, weights["f"], "cpu").model.visual
    same = vit.position_embedding(visual, vit.grid_size(visual))
    assert torch.equal(same, visual.positional_embedding.detach().half().float())
    wide = vit.position_embedding(visual, (3, 7))
    assert wide.shape == (1 + 21, visual.positional_embedding.shape[1])
    assert torch.equal(wide, wide.half().float())  # rounded through fp16 like the official code


def test_cams_are_per_class_normalised_at_patch_grid(tiny_model: str, weights) -> None:
    from autolabel.models.clip import load_clip

    clip = load_clip(tiny_model, None, weights["f"], "cpu")
    image = np.array(draw_scene(60, 44, 3))
    pixels = gradcam.cam_pixels(image, clip.patch_size, clip.mean, clip.std, None)
    assert pixels.shape[-2:] == (48, 64)  # rounded up to multiples of the patch size (8)
    state = gradcam.encode_cam_images(clip.model.visual, pixels, [image.shape[:2]], False)[0]
    fg = clip.encode_text(["red square", "blue disc", "green bar"])
    bg = clip.encode_text(["a clean origami sky."])
    scale = clip.model.logit_scale.exp()
    cams, backwards = gradcam.grad_cams(clip.model.visual, state, fg, bg, scale)
    assert cams.shape == (3, 6, 8) and backwards == 1
    assert float(cams.min()) >= 0
    for cam in cams:
        assert float(cam.max()) in (0.0, 1.0) or abs(float(cam.max()) - 1) < 1e-6
    for index in range(3):
        single, _ = gradcam.grad_cam_single(clip.model.visual, state, fg, bg, scale, index)
        torch.testing.assert_close(single, cams[index], atol=1e-5, rtol=0)
    assert gradcam.upsample(cams, (44, 60)).shape == (3, 44, 60)


def test_box_mask_follows_clip_es() -> None:
    cam = np.zeros((6, 8), np.float32)
    cam[1:3, 1:3] = 1.0
    cam[4, 5] = 0.5  # below 0.6 * max: no box of its own
    box = gradcam.box_mask(cam, 0.6)
    assert box[1:3, 1:3].all() and box.sum() == 4
    cam[3:6, 6:8] = 0.9  # touches the bottom-right corner: the clamp drops the last row/column
    box = gradcam.box_mask(cam, 0.6)
    assert box[3:5, 6].all() and not box[5].any() and not box[:, 7].any()
    assert gradcam.box_mask(np.zeros((4, 4), np.float32), 0.4).sum() == 0


def test_affinity_refinement_batched_equals_per_class() -> None:
    torch.manual_seed(0)
    maps = [(8 * torch.rand(13, 13)).softmax(dim=-1) for _ in range(10)]
    trans = gradcam.sinkhorn_affinity(maps)
    torch.testing.assert_close(trans, trans.T)
    assert trans.shape == (12, 12)
    # Only the last AFFINITY_LAYERS maps count.
    torch.testing.assert_close(gradcam.sinkhorn_affinity(maps[-8:]), trans)
    cams = torch.rand(3, 3, 4)
    boxes = torch.from_numpy(np.stack([gradcam.box_mask(c.numpy(), 0.4) for c in cams]))
    refined = gradcam.refine(trans, cams, boxes)
    for i in range(3):
        single = gradcam.refine_single(maps[-8:], cams[i], boxes[i])
        torch.testing.assert_close(single, refined[i], atol=1e-5, rtol=0)
    assert (
        refined.amin(dim=(1, 2)).eq(0).all()
        and refined.amax(dim=(1, 2)).sub(1).abs().lt(1e-6).all()
    )


def test_length_77_quirk_only_under_parity(tiny_model: str, weights) -> None:
    from autolabel.models.clip import load_clip

    visual = load_clip(tiny_model, None, weights["f"], "cpu").model.visual
    layers = len(visual.transformer.resblocks)
    assert vit.trunk_depth(visual, 77, parity=True) == layers
    assert vit.trunk_depth(visual, 77, parity=False) == layers - 1
    assert vit.trunk_depth(visual, 78, parity=True) == layers - 1


# --- g and the recurrence -------------------------------------------------------------------


def test_score_ensemble_is_a_softmax_of_summed_softmaxes() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]]])
    expected = (logits.softmax(-1).sum(0)).softmax(-1).numpy()
    np.testing.assert_allclose(_ensemble(logits), expected, rtol=1e-6)
    assert _ensemble(torch.zeros(15, 1, 1))[0, 0] == 1.0


def test_recurrence_prunes_by_theta_and_stops_when_nothing_changes() -> None:
    rec = Recurrence([0, 1, 2, 3])
    props = np.ones((4, 2, 2), np.float32)
    rec.advance(props, np.array([0.7, 0.1, 0.65, 0.2]), 0.6, parity=False)
    assert rec.live == [0, 2] and not rec.done  # step 1 never stops
    rec.advance(props[:2], np.array([0.9, 0.5]), 0.6, parity=False)
    assert rec.live == [0] and not rec.done
    rec.advance(props[:1], np.array([1.0]), 0.6, parity=False)
    assert rec.done and rec.live == [0] and rec.step == 3 and rec.scores.tolist() == [1.0]
    # Nothing passes: the best query is kept; a single query then stops the loop.
    rec = Recurrence([0, 1])
    rec.advance(props[:2], np.array([0.2, 0.3]), 0.6, parity=False)
    assert rec.live == [1] and not rec.done
    # Nothing dropped at step 1 still needs a confirming second step.
    rec = Recurrence([0, 1])
    rec.advance(props[:2], np.array([0.7, 0.8]), 0.6, parity=False)
    assert not rec.done
    rec.advance(props[:2], np.array([0.7, 0.8]), 0.6, parity=False)
    assert rec.done and rec.live == [0, 1]


def test_all_zero_proposals_fall_back_to_the_previous_step() -> None:
    first = np.stack([np.full((2, 2), v, np.float32) for v in (0.1, 0.2, 0.3)])
    zero = np.zeros((2, 2, 2), np.float32)
    for parity, rows in ((False, 2), (True, 3)):
        rec = Recurrence([0, 1, 2])
        rec.advance(first, np.array([0.9, 0.1, 0.8]), 0.5, parity)
        rec.advance(zero, np.array([0.9, 0.8]), 0.5, parity)
        assert rec.done and len(rec.proposals) == rows
        if not parity:  # the rows of the surviving queries 0 and 2
            assert rec.proposals[:, 0, 0].tolist() == pytest.approx([0.1, 0.3])


def test_cam_text_switches_to_the_template_from_step_two(tiny_model: str, weights) -> None:
    seg = build(settings(tiny_model, weights), "cpu")
    assert seg._cam_text("dog", 0) == "dog"
    assert seg._cam_text("dog", 1) == "a clean origami dog."
    seg = build(settings(tiny_model, weights, cam_text="template"), "cpu")
    assert seg._cam_text("dog", 0) == seg._cam_text("dog", 1) == "a clean origami dog."
    seg = build(settings(tiny_model, weights, cam_text="template", parity=True), "cpu")
    assert seg._cam_text("dog", 0) == "dog"


def test_settings_defaults_parity_and_errors(tiny_model: str) -> None:
    paper = CaRSettings.from_dict({})
    assert (paper.model, paper.pretrained) == ("ViT-B-16", "openai")
    assert (paper.classifier_model, paper.classifier_pretrained) == ("ViT-L-14", "openai")
    assert paper.templates == list(SEMANTIC_TEMPLATES) and paper.cam_max_side == 1024
    toy = CaRSettings.from_dict({"model": "toy"})
    assert toy.classifier_model == "toy" and toy.pretrained is None
    local = CaRSettings.from_dict({"checkpoint": "f.pt", "classifier_pretrained": "none"})
    assert local.pretrained is None and local.classifier_pretrained is None
    strict = CaRSettings.from_dict({"parity": True, "classifier_skip_last": 0, "refine_cams": 0})
    assert strict.classifier_skip_last and strict.refine_cams
    parity = CaRSettings.from_dict({"parity": True, "cam_text": "raw"})
    assert (parity.cam_text, parity.crf_image, parity.cam_max_side) == (
        "official",
        "official",
        None,
    )
    for bad, named in (
        ({"theta": 1}, "settings.theta: unknown setting"),
        ({"confidence_threshold": 2}, "settings.confidence_threshold: must be at most 1"),
        ({"visual_prompts": ["glow"]}, "settings.visual_prompts[0]: must be one of"),
        ({"visual_prompts": "blur"}, "settings.visual_prompts: expected a list"),
        ({"cam_text": "x"}, "settings.cam_text: must be one of"),
        ({"templates": ["no slot"]}, "settings.templates[0]: a template must contain"),
        ({"cam_max_side": 16}, "settings.cam_max_side: must be at least 32"),
        ({"refine_cams": 0}, "settings.refine_cams: expected true or false"),
    ):
        with pytest.raises(UsageError, match=r"^method car: " + re.escape(named)):
            CaRSettings.from_dict(bad)


def test_bundled_recipes_load(tiny_model: str) -> None:
    from autolabel.config import load_recipe

    for name, theta in (("voc", 0.6), ("coco-object", 0.3), ("context", 0.25), ("car", None)):
        recipe = load_recipe(name)
        assert recipe.method == "car"
        s = CaRSettings.from_dict(recipe.settings)
        assert theta is None or s.confidence_threshold == theta
        if recipe.background:  # valid next to the dataset's own class names
            assert not {w.lower() for w in recipe.background} & set(s.stuff_classes)
    default = CaRSettings.from_dict(load_recipe("car").settings)
    assert default == CaRSettings.from_dict({})  # the recipe spells out the built-in defaults


# --- the whole method -----------------------------------------------------------------------


@contextmanager
def counting(module: torch.nn.Module) -> Iterator[list[int]]:
    """Batch sizes of every call to `module` inside the block."""
    seen: list[int] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    try:
        yield seen
    finally:
        handle.remove()


def test_fast_path_equals_reference_path(tiny_model: str, weights, images) -> None:
    fast = build(settings(tiny_model, weights), "cpu")
    ref = build(settings(tiny_model, weights, engine="reference"), "cpu")
    assert fast.f is ref.f and fast.f is not fast.g
    with counting(fast.g.model.visual.conv1) as g_images:
        out_fast = fast.segment_batch(images, VOCAB)
    fast_g = sum(g_images)
    with counting(fast.g.model.visual.conv1) as g_images:
        out_ref = ref.segment_batch(images, VOCAB)
    ref_g = sum(g_images)
    survivors = [int((r.scores > 0).sum()) for r in out_fast]
    assert survivors == [2, 1], "the seeded weights should prune one and two of three queries"
    for a, b in zip(out_fast, out_ref, strict=True):
        assert np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert a.probs.shape == (4, *a.labels.shape)
    # The reference encodes every prompted image once per template and runs one backward per
    # query per step; the fast path encodes each distinct image once, one backward per step.
    assert ref_g % len(SEMANTIC_TEMPLATES) == 0 and ref_g >= 15 * 3 * len(images)
    assert 0 < fast_g <= ref_g // len(SEMANTIC_TEMPLATES)
    assert fast.engine.stats["backwards"] < ref.engine.stats["backwards"]


def test_engines_agree_step_by_step(tiny_model: str, weights, images) -> None:
    fast = build(settings(tiny_model, weights), "cpu")
    ref = build(settings(tiny_model, weights, engine="reference"), "cpu")
    texts = ["red square", "a clean origami blue disc.", "green bar"]
    bg = ["a clean origami sky."]
    for image in images:
        cams_fast = fast.engine.propose(fast.engine.prepare([image])[0], texts, bg)
        cams_ref = ref.engine.propose(ref.engine.prepare([image])[0], texts, bg)
        assert cams_fast.shape == (3, *image.shape[:2])
        np.testing.assert_allclose(cams_fast, cams_ref, atol=1e-4)
        prompted = [visual_prompt(image, c, 0.4, ["circle", "blur"]) for c in cams_fast]
        (p_fast,) = fast.engine.classify([prompted], [texts])
        (p_ref,) = ref.engine.classify([prompted], [texts])
        np.testing.assert_allclose(p_fast, p_ref, atol=1e-5)
        np.testing.assert_allclose(p_fast.sum(axis=1), 1, atol=1e-5)


def test_unrefined_proposals_are_the_upsampled_grad_cams(tiny_model: str, weights, images) -> None:
    seg = build(settings(tiny_model, weights, refine_cams=False), "cpu")
    ref = build(settings(tiny_model, weights, refine_cams=False, engine="reference"), "cpu")
    texts, bg = ["red square", "green bar"], ["a clean origami sky."]
    state = seg.engine.prepare(images[:1])[0]
    proposals = seg.engine.propose(state, texts, bg)
    f = seg.f
    cams, _ = gradcam.grad_cams(
        f.model.visual, state, f.encode_text(texts), f.encode_text(bg), f.model.logit_scale.exp()
    )
    np.testing.assert_array_equal(proposals, gradcam.upsample(cams, images[0].shape[:2]))
    same = ref.engine.propose(ref.engine.prepare(images[:1])[0], texts, bg)
    np.testing.assert_allclose(same, proposals, atol=1e-4)


def test_classifier_skips_its_last_block_unless_told(tiny_model: str, weights, images) -> None:
    calls = {}
    for skip in (True, False):
        seg = build(settings(tiny_model, weights, classifier_skip_last=skip), "cpu")
        last = seg.g.model.visual.transformer.resblocks[-1]
        prompted = [images[0], images[0][::-1].copy()]
        seg.engine.prepare(images[:1])  # a fresh batch: no cached image embeddings
        with counting(last.ln_1) as seen:
            seg.engine.classify([prompted], [["red square", "blue disc"]])
        calls[skip] = sum(seen)
    assert calls == {True: 0, False: 2}


def test_segment_batch_outputs(tiny_model: str, weights, images) -> None:
    seg = build(settings(tiny_model, weights), "cpu")
    results = seg.segment_batch(images, VOCAB)
    for image, res in zip(images, results, strict=True):
        assert res.labels.shape == image.shape[:2] and res.labels.dtype == np.int32
        assert set(np.unique(res.labels)) <= {0, 1, 2, 3}
        assert res.scores.shape == (3,) and (res.scores > 0).any()
        pruned = res.scores == 0
        assert (res.probs[1:][pruned] == 0).all()
        assert not np.isin(np.nonzero(pruned)[0] + 1, res.labels).any()
        np.testing.assert_allclose(
            res.probs[[0, *(np.nonzero(~pruned)[0] + 1)]].sum(0), 1, atol=1e-4
        )
    # One image alone gives the same answer as inside a batch.
    alone = seg.segment_batch(images[1:], VOCAB)[0]
    assert np.array_equal(alone.labels, results[1].labels)
    assert seg.describe()["classifier"]["weights"] == seg.settings.classifier_checkpoint


def test_synonyms_join_into_one_query_and_recipes_rename(tiny_model: str, weights) -> None:
    seg = build(
        settings(tiny_model, weights, queries={"Person": "person with clothes,people"}), "cpu"
    )
    vocab = Vocabulary.from_dict(
        {"classes": [{"name": "backpack", "synonyms": ["bag"]}, {"name": "person"}]}
    )
    assert [seg.query(c) for c in vocab.classes] == ["backpack,bag", "person with clothes,people"]


def test_stuff_pass_uses_things_as_background(tiny_model: str, weights, images) -> None:
    seg = build(settings(tiny_model, weights, stuff_classes=["green bar"]), "cpu")
    things, stuff = seg.passes(VOCAB)
    assert things.classes == [0, 1] and things.background == ["sky", "wall"]
    assert stuff.classes == [2] and stuff.background == ["red square", "blue disc"]
    assert stuff.prompts == ["blur", "gray"]
    res = seg.segment_batch(images[:1], VOCAB)[0]
    assert res.scores[2] > 0  # a lone query in its pass always survives


def test_crf_runs_on_background_and_the_last_proposals() -> None:
    from autolabel.refine.crf import dense_crf
    from autolabel.refine.finish import CarPass, car_crf_image, car_pass_output

    image = np.array(draw_scene(64, 48, 4))
    yy, xx = np.mgrid[:48, :64]
    left = np.clip(1.2 - np.hypot(yy - 14, xx - 16) / 12, 0, 1).astype(np.float32)
    right = np.clip(1.2 - np.hypot(yy - 34, xx - 46) / 12, 0, 1).astype(np.float32)
    rec = Recurrence([0, 2], proposals=np.stack([left, right]), scores=np.array([0.7, 0.9]))
    run = Pass(classes=[0, 1, 2], background=[], prompts=["blur"], bg_factor=2.0)
    assert pass_of(rec, run) == CarPass(rec.proposals, [1, 3], [0.7, 0.9], 2.0)
    out = car_pass_output(image, pass_of(rec, run), crf=True, parity=False)
    bg = (1 - np.maximum(left, right)) ** 2.0
    winner = dense_crf(image, np.stack([bg, left, right])).argmax(axis=0)
    assert np.array_equal(out.labels, np.select([winner == 1, winner == 2], [1, 3], 0))
    assert out.scores == {1: pytest.approx(0.7), 3: pytest.approx(0.9)}
    assert set(out.probs) == {1, 3} and (out.labels == 3).any()
    # Parity: a trailing class that wins no pixel loses its mask and score (F.one_hot + zip).
    rec.proposals = np.stack([left, right * 0.01])
    parity = car_pass_output(image, pass_of(rec, run), True, True, "official")
    bg = (1 - np.maximum(left, right * 0.01)) ** 2.0
    official = car_crf_image(image, "official")
    winner = dense_crf(official, np.stack([bg, left, right * 0.01])).argmax(axis=0)
    assert winner.max() == 1 and np.array_equal(parity.labels, (winner == 1).astype(np.int32))
    assert set(parity.scores) == {1}
    fixed = car_pass_output(image, pass_of(rec, run), crf=True, parity=False)
    assert not (fixed.labels == 3).any() and set(fixed.scores) == {1, 3}


def test_parity_crf_image_wraps_like_the_official_uint8_cast() -> None:
    from autolabel.refine.finish import car_crf_image

    pixel = np.array([[[0, 200, 255]]], np.uint8)
    # BGR (255, 200, 0) minus (104.008, 116.669, 122.675) = (150.99, 83.33, -122.675)
    assert car_crf_image(pixel, "official").tolist() == [[[150, 83, 134]]]
    assert car_crf_image(pixel, "rgb") is pixel


def test_runs_through_the_cli(
    tmp_path: Path, image_folder: Path, vocab_file: Path, tiny_model: str, weights
) -> None:
    import json

    from autolabel.cli import main

    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(tmp_path / "o"),
            "--method", "car", "--model", tiny_model, "--checkpoint", weights["f"],
            "--classifier-model", tiny_model, "--classifier-checkpoint", weights["g"],
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    coco = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and coco["categories"][0]["name"] == "red square"
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["method"] == "car" and run["models"]["classifier"]["weights"] == weights["g"]
