"""PnP-OVSS (`--method pnp`) on tiny random BLIP and BridgeTower models built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from pycocotools.coco import COCO

from autolabel.cli import main
from autolabel.errors import ModelLoadError, UsageError
from autolabel.methods import pnp
from autolabel.methods.base import build_segmenter
from autolabel.methods.settings import PNP_CRF, PnPSettings
from autolabel.models.blip import load_itm
from autolabel.models.zeroshot import clip_presence
from autolabel.refine.crf import dense_crf
from autolabel.vocab import parse_vocabulary

VOCAB = "red square\nblue disc: blue circle, round blue thing\ngreen bar\n"
WORDS = ["red", "blue", "green", "square", "disc", "circle", "round", "thing", "bar", "picture"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# 32 px images of 8 px patches: a 4 x 4 grid (N = 16 image tokens + CLS).
RES, PATCH = 32, 8


def save_tiny_blip(folder: Path) -> Path:
    """A random 3-layer BLIP ITM model and a WordPiece tokenizer, written by save_pretrained."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIALS, "a", "of", *WORDS, "##s", "##ed"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    (folder / "vocab.txt").unlink()
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config={
            "vocab_size": len(vocab) + 2,  # + [DEC], [ENC] as in BLIP
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "encoder_hidden_size": 48,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
            "bos_token_id": len(vocab),
            "sep_token_id": 3,
        },
        vision_config={
            "hidden_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "image_size": 24,  # != RES: interpolate_pos_encoding must be used
            "patch_size": PATCH,
        },
        image_text_hidden_size=16,
    )
    transformers.BlipForImageTextRetrieval(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_bridgetower(folder: Path) -> Path:
    """A random BridgeTower ITM model with 3 cross-modal layers and a byte-level BPE tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)] + ["\u0120"]  # printable ASCII and the space mark
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *chars])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.RobertaTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt")
    )
    torch.manual_seed(0)
    config = transformers.BridgeTowerConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
        },
        vision_config={
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "image_size": 24,
            "patch_size": 8,
        },
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    transformers.BridgeTowerForImageAndTextRetrieval(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny random BLIP ITM model (the local save_pretrained path of --model)."""
    return str(save_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip"))


@pytest.fixture(scope="session")
def tiny_bridgetower(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny random BridgeTower ITM model."""
    return str(save_tiny_bridgetower(tmp_path_factory.mktemp("bt") / "tiny-bridgetower"))


def settings(model: str, **extra: object) -> PnPSettings:
    """Small, fast settings on a tiny model: every class in the prompt, no CLIP."""
    base = {
        "model": model,
        "resolution": RES,
        "layer": 1,
        "head": 2,
        "class_filter": "all",
        "join_words": False,
        "dropout_passes": 3,
        "dropout_patches": 3,
    }
    return PnPSettings.from_dict({**base, **extra})


def images(count: int = 2) -> list[np.ndarray]:
    """Random RGB images of different sizes."""
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (48, 48), (30, 44)][:count]
    return [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def inputs(model: str, cfg: PnPSettings) -> tuple:
    """Pixels, token ids, mask and class weights for two prompts of different lengths."""
    itm = load_itm(model, "cpu")
    vocab = parse_vocabulary(VOCAB)
    prompts = [
        pnp.build_prompt(vocab, [0, 1, 2], cfg.prompt_prefix, cfg.join_words),
        pnp.build_prompt(vocab, [2], cfg.prompt_prefix, cfg.join_words),
    ]
    ids, mask, weights = pnp.encode_prompts(itm, prompts, cfg.enc_token)
    segmenter = pnp.PnPSegmenter(cfg, "cpu")
    return itm, segmenter._pixels(images(2)), ids, mask, weights


@pytest.mark.parametrize("which", ["tiny_blip", "tiny_bridgetower"])
def test_hooks_return_cross_attention_with_gradients(which: str, request) -> None:
    model = request.getfixturevalue(which)
    cfg = settings(model)
    itm, pixels, ids, mask, _ = inputs(model, cfg)
    logits, attention = itm.match_logits_and_attention(pixels, ids, mask, layer=1)
    grid = (RES // PATCH) ** 2
    assert attention.shape == (2, itm.num_heads, ids.shape[1], 1 + grid)
    assert attention.requires_grad
    # Softmax over the image tokens: these are text-to-image cross-attention weights.
    assert torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-5)
    (grad,) = torch.autograd.grad(logits.sum(), attention)
    assert grad[0, :, 1 : int(mask[0].sum()) - 1].abs().sum() > 0  # class-token rows
    # The logits are the model's own ITM logits (hooks change nothing).
    net = itm.model
    with torch.no_grad():
        if itm.kind == "blip":
            own = net(
                input_ids=ids, pixel_values=pixels, attention_mask=mask,
                interpolate_pos_encoding=True,
            ).itm_score[:, 1]  # fmt: skip
        else:  # the retrieval class only forwards interpolate_pos_encoding in transformers 5
            pooled = net.bridgetower(
                input_ids=ids, pixel_values=pixels, attention_mask=mask,
                interpolate_pos_encoding=True,
            ).pooler_output  # fmt: skip
            own = net.itm_score(pooled)[:, 1]
    assert torch.allclose(logits.detach(), own, atol=1e-5)


def test_blip_enc_token_and_limits(tiny_blip: str) -> None:
    itm = load_itm(tiny_blip, "cpu")
    assert itm.kind == "blip" and itm.num_layers == 3 and itm.num_heads == 4
    assert itm.enc_token_id == len(itm.tokenizer) + 1  # [DEC] then [ENC] after the vocabulary
    cfg = settings(tiny_blip)
    _, _, ids, _, _ = inputs(tiny_blip, cfg)
    assert (ids[:, 0] == itm.enc_token_id).all()
    assert load_itm(tiny_blip, "cpu") is itm  # loaded once per process


def test_gradcam_has_patch_grid_shape_and_is_nonnegative(tiny_blip: str) -> None:
    cfg = settings(tiny_blip)
    itm, pixels, ids, mask, _ = inputs(tiny_blip, cfg)
    cam = pnp.gradcam(itm, pixels, ids, mask, cfg.layer, cfg.head)
    assert cam.shape == (2, ids.shape[1], (RES // PATCH) ** 2)
    assert (cam >= 0).all() and not cam.requires_grad
    assert cam[0, 1 : int(mask[0].sum()) - 1].sum() > 0
    assert (cam[1, int(mask[1].sum()) :] == 0).all()  # padding rows of the shorter prompt
    mean_heads = pnp.gradcam(itm, pixels, ids, mask, cfg.layer, None)
    assert mean_heads.shape == cam.shape and not torch.allclose(mean_heads, cam, rtol=1e-3, atol=0)


def test_prompt_maps_each_class_to_its_tokens(tiny_blip: str) -> None:
    itm = load_itm(tiny_blip, "cpu")
    vocab = parse_vocabulary("red squares\nblue disc: blue circle\ngreen bar\n")
    prompt = pnp.build_prompt(vocab, [0, 1], "a picture of ", join_words=False)
    assert prompt.text == "a picture of red squares blue disc blue circle"
    ids, _, weights = pnp.encode_prompts(itm, [prompt], enc_token=False)
    tokens = itm.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    picked = [[tokens[t] for t in torch.nonzero(weights[0, k]).flatten()] for k in range(2)]
    assert picked == [["red", "square", "##s"], ["blue", "disc", "blue", "circle"]]
    assert torch.allclose(weights[0].sum(-1), torch.ones(2))  # a mean over each class's pieces
    joined = pnp.build_prompt(parse_vocabulary("potted plant\nt-shirt\n"), [0, 1], "", True)
    assert joined.text == "pottedplant tshirt"


def test_long_prompts_are_split_to_fit(tiny_blip: str, monkeypatch) -> None:
    itm = load_itm(tiny_blip, "cpu")
    vocab = parse_vocabulary(VOCAB)
    monkeypatch.setattr(itm, "max_text_tokens", 12)
    prompts = pnp.split_to_fit(itm, vocab, [0, 1, 2], "a picture of ", False)
    assert [c for p in prompts for c in p.classes] == [0, 1, 2] and len(prompts) > 1
    assert all(len(itm.tokenizer(p.text)["input_ids"]) <= 12 for p in prompts)


def test_salience_dropout_removes_the_scheduled_patches(tiny_blip: str) -> None:
    cfg = settings(tiny_blip, dropout_passes=3, dropout_patches=3)
    itm, pixels, ids, mask, weights = inputs(tiny_blip, cfg)
    run = pnp.salience_dropout(itm, pixels, ids, mask, weights, cfg)
    assert [int(d[0].sum()) for d in run.dropped] == [0, 3, 6]
    for t in (0, 1):
        newly = run.dropped[t + 1] & ~run.dropped[t]
        top = run.pass_salience[t].topk(3, dim=1).indices
        assert all(set(torch.nonzero(newly[r]).flatten().tolist()) == set(top[r].tolist())
                   for r in range(2))  # fmt: skip
        assert (run.pass_maps[t + 1][run.dropped[t + 1][:, None, :].expand_as(
            run.pass_maps[t + 1])] == 0).all()  # fmt: skip
    expected = 2 * run.pass_maps[0] + run.pass_maps[1] + run.pass_maps[2]
    assert torch.allclose(run.maps, expected)
    assert pnp.drop_schedule("halving", 5, 0, 441) == [220, 110, 55, 27]
    assert pnp.drop_schedule("fixed", 4, 10, 441) == [10, 10, 10]


def test_dropped_patches_are_filled_and_others_kept() -> None:
    pixels = torch.randn(1, 3, 16, 16)
    dropped = torch.tensor([[False, True, False, False]])  # 2 x 2 grid of 8 px patches
    fill = torch.tensor([0.5, -1.0, 2.0])
    out = pnp.drop_patches(pixels, dropped, 8, fill)
    assert torch.equal(out[0, :, :8, 8:], fill.view(3, 1, 1).expand(3, 8, 8))
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[:8, 8:] = False
    assert torch.equal(out[0][:, keep], pixels[0][:, keep])


def test_threshold_and_background_channel() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 4.0  # class 1 top-left
    maps[1, 3, 3] = 2.0  # class 2 bottom-right, a different scale
    maps[0, 3, 0] = 0.1  # below 15% of class 1's range: dropped
    cfg = PnPSettings(blur_sigma=0.0, crf=None, softmax=False)
    probs = pnp.refine(maps, np.zeros((4, 4, 3), np.uint8), cfg)
    labels = probs.argmax(0)
    assert probs.shape == (3, 4, 4) and np.allclose(probs.sum(0), 1)
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and labels[3, 0] == 0 and labels[1, 2] == 0


def _plain_refine(maps: torch.Tensor, size: int, **settings: object) -> np.ndarray:
    """refine() without blur, softmax or CRF, so each pixel's channels are easy to predict."""
    cfg = PnPSettings(blur_sigma=0.0, crf=None, softmax=False, **settings)
    return pnp.refine(maps, np.zeros((size, size, 3), np.uint8), cfg)


def test_background_is_where_every_upsampled_class_map_is_zero() -> None:
    """The updated code's rule: background is decided after bilinear upsampling (corners aligned:
    grid point i sits on pixel 4 i of a 13 px image), not on the patch grid."""
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0  # one salient patch
    probs = _plain_refine(maps, 13)
    labels = probs.argmax(0)
    # Inside the patch's bilinear support (rows and columns 0..3) the class is non-zero, so it is
    # never background, however small it is there.
    assert (labels[:4, :4] == 1).all() and (probs[0, :4, :4] == 0).all()
    # Pixel (3, 3) gets 1/16 of the patch: tiny, yet not background (a grid rule upsampled as a
    # soft channel gives background 15/16 there).
    assert probs[1, 3, 3] > 0 and labels[3, 3] == 1
    # From one grid cell away on, the upsampled map is exactly zero: background.
    assert (labels[4:, :] == 0).all() and (labels[:, 4:] == 0).all()


def test_two_classes_meeting_leave_no_background_between_them() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0
    maps[1, 1, 2] = 1.0
    labels = _plain_refine(maps, 13).argmax(0)
    row = labels[4]  # the grid row through both patches: pixels 4 (class 1) to 8 (class 2)
    assert list(row[4:9]) == [1, 1, 1, 2, 2] or list(row[4:9]) == [1, 1, 2, 2, 2]
    assert row[0] == 0 and row[12] == 0


def test_background_only_below_a_class_count_as_the_ade20k_scripts() -> None:
    maps = torch.zeros(3, 4, 4)
    for k in range(3):
        maps[k, k, k] = 1.0
    always = _plain_refine(maps, 13)
    assert (always.argmax(0) == 0).any()
    few = _plain_refine(maps, 13, background_below_classes=3)  # 3 classes: no background
    assert few.shape == (4, 13, 13) and (few[0] == 0).all() and (few.argmax(0) != 0).all()
    two = _plain_refine(maps[:2], 13, background_below_classes=3)
    assert (two.argmax(0) == 0).any()


def test_crf_step_is_applied_with_pnp_constants() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
    maps = torch.rand(2, 4, 4)
    with_crf = pnp.refine(maps, image, PnPSettings())
    without = pnp.refine(maps, image, PnPSettings(crf=None))
    assert not np.allclose(with_crf, without)
    assert np.allclose(with_crf, dense_crf(image, without, PNP_CRF), atol=1e-6)
    assert PnPSettings().crf == PNP_CRF and PNP_CRF.bilateral_sxy == 50


@pytest.mark.parametrize("which", ["tiny_blip", "tiny_bridgetower"])
def test_segment_batch_labels_every_image(which: str, request) -> None:
    model = request.getfixturevalue(which)
    segmenter = build_segmenter("pnp", {**settings_dict(model)}, "cpu")
    vocab = parse_vocabulary(VOCAB)
    batch = images(3)
    results = segmenter.segment_batch(batch, vocab)
    for image, result in zip(batch, results, strict=True):
        assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.int32
        assert result.probs.shape == (4, *image.shape[:2])
        assert np.allclose(result.probs.sum(0), 1, atol=1e-4)
        assert set(np.unique(result.labels)) <= {0, 1, 2, 3}
        assert np.array_equal(result.labels, result.probs.argmax(0))
    info = segmenter.describe()
    assert info["backbone"]["kind"] == ("blip" if which == "tiny_blip" else "bridgetower")


def settings_dict(model: str) -> dict:
    """The settings of `settings()` as a recipe mapping."""
    cfg = settings(model)
    keys = ("model", "resolution", "layer", "head", "class_filter", "join_words",
            "dropout_passes", "dropout_patches")  # fmt: skip
    return {k: getattr(cfg, k) for k in keys}


def test_clip_presence_filter_chooses_the_prompt(tiny_blip: str, tiny_model: str) -> None:
    from autolabel.models.clip import load_clip

    vocab = parse_vocabulary(VOCAB)
    clip = load_clip(tiny_model, None, None, "cpu")
    presence = clip_presence(clip, images(2), vocab)
    assert (
        presence.shape == (2, 3) and (presence >= 0).all() and (presence.sum(1) <= 1 + 1e-6).all()
    )
    threshold = float(np.sort(presence[0])[1])  # keeps the top two classes of image 0
    segmenter = build_segmenter(
        "pnp",
        {**settings_dict(tiny_blip), "class_filter": "clip", "clip_model": tiny_model,
         "clip_pretrained": None, "presence_threshold": threshold},
        "cpu",
    )  # fmt: skip
    result = segmenter.segment_batch(images(2), vocab)[0]
    kept = [k + 1 for k in np.flatnonzero(presence[0] >= threshold)]
    assert result.extras["prompt_classes"] == kept
    assert set(np.unique(result.labels)) <= {0, *kept}
    assert np.allclose(result.scores[np.array(kept) - 1], presence[0][np.array(kept) - 1])
    dropped = [k for k in range(3) if k + 1 not in kept]
    assert (result.scores[dropped] == 0).all() and (
        result.probs[[k + 1 for k in dropped]] == 0
    ).all()


def test_settings_errors_name_the_setting(tiny_blip: str) -> None:
    with pytest.raises(UsageError, match="unknown setting"):
        PnPSettings.from_dict({"layr": 3})
    with pytest.raises(UsageError, match="settings.threshold"):
        PnPSettings.from_dict({"threshold": "high"})
    with pytest.raises(UsageError, match="dropout_schedule"):
        PnPSettings.from_dict({"dropout_schedule": "quartering"})
    with pytest.raises(UsageError, match="--checkpoint"):
        PnPSettings.from_dict({"checkpoint": "/x.pt"})
    with pytest.raises(UsageError, match="unknown crf"):
        PnPSettings.from_dict({"crf": {"sxy": 3}})
    assert PnPSettings.from_dict({"crf": False}).crf is None
    with pytest.raises(UsageError, match="settings.layer 2"):  # the last layer has no gradient
        build_segmenter("pnp", {**settings_dict(tiny_blip), "layer": 2}, "cpu")
    with pytest.raises(UsageError, match="settings.head 4"):
        build_segmenter("pnp", {**settings_dict(tiny_blip), "head": 4}, "cpu")
    with pytest.raises(UsageError, match="multiple of the model's patch size 8"):
        build_segmenter("pnp", {**settings_dict(tiny_blip), "resolution": 30}, "cpu")


def test_model_errors_are_clear(tmp_path: Path, tiny_blip: str, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="class_filter: all"):
        build_segmenter(
            "pnp",
            {**settings_dict(tiny_blip), "class_filter": "clip", "clip_model": "ViT-B-32"},
            "cpu",
        )
    with pytest.raises(ModelLoadError, match="could not fetch weights") as info:
        load_itm("autolabel-tests/no-such-itm-model", "cpu")
    assert "--model DIR" in str(info.value) and "save_pretrained" in str(info.value)
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_itm(str(tmp_path / "missing" / "dir"), "cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_itm(str(tmp_path), "cpu")
    bert = tmp_path / "bert"
    transformers.BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8,
    ).save_pretrained(bert)  # fmt: skip
    with pytest.raises(ModelLoadError, match="a 'bert' model; method pnp needs"):
        load_itm(str(bert), "cpu")
    captioner = tmp_path / "captioner"  # a BLIP without the image-text-matching head
    config = transformers.BlipConfig.from_pretrained(tiny_blip)
    transformers.BlipForConditionalGeneration(config).save_pretrained(captioner)
    transformers.AutoTokenizer.from_pretrained(tiny_blip).save_pretrained(captioner)
    with pytest.raises(ModelLoadError, match="no image-text-matching head"):
        load_itm(str(captioner), "cpu")


def test_cli_run_method_pnp_writes_valid_coco(
    tmp_path: Path, tiny_blip: str, image_folder: Path, vocab_file: Path, capsys
) -> None:
    recipe = tmp_path / "tiny-pnp.yaml"
    recipe.write_text(
        "method: pnp\nsettings:\n  resolution: 32\n  layer: 1\n  head: 0\n"
        "  class_filter: all\n  join_words: false\n  dropout_passes: 2\n"
    )
    out = tmp_path / "out"
    args = ["run", str(image_folder), "--vocab", str(vocab_file), "-o", str(out),
            "--method", "pnp", "--recipe", str(recipe), "--model", tiny_blip,
            "--device", "cpu", "--min-area", "0"]  # fmt: skip
    code = main(args)
    text = capsys.readouterr()
    assert code == 0, text.out + text.err
    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == [
        "red square",
        "blue disc",
        "green bar",
    ]
    assert len(coco.dataset["images"]) == 3 and coco.dataset["annotations"]
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        image = coco.imgs[ann["image_id"]]
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == ann["area"] > 0 and 0.0 <= ann["score"] <= 1.0
        assert isinstance(ann["segmentation"]["counts"], str)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "pnp" and run["models"]["backbone"]["name"] == tiny_blip
    assert run["models"]["settings"]["layer"] == 1


@pytest.mark.parametrize("which", ["tiny_blip", "tiny_bridgetower"])
def test_segment_batch_runs_under_bf16(which: str, request) -> None:
    """--precision bf16 runs the ITM model under autocast; what reaches numpy is float32."""
    from autolabel.models.precision import autocast

    model = request.getfixturevalue(which)
    segmenter = build_segmenter("pnp", {**settings_dict(model)}, "cpu")
    vocab = parse_vocabulary(VOCAB)
    batch = images(2)
    with autocast(torch.device("cpu"), "bf16"):
        results = segmenter.segment_batch(batch, vocab)
    for image, result in zip(batch, results, strict=True):
        assert result.labels.shape == image.shape[:2] and result.probs.dtype == np.float32
        assert np.allclose(result.probs.sum(0), 1, atol=1e-4)
        assert np.array_equal(result.labels, result.probs.argmax(0))
