"""Local weights: open_clip checkpoints and OpenAI-CLIP state dicts, each with its activation."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import convert_weights_to_fp16

from autolabel.errors import ModelLoadError
from autolabel.models.checkpoints import create_from_checkpoint, looks_openai, read_state_dict
from autolabel.models.clip import load_clip, wants_quick_gelu
from autolabel.models.vit import encode_tokens

CPU = torch.device("cpu")


def _activation(model: torch.nn.Module) -> str:
    return type(model.visual.transformer.resblocks[0].mlp.gelu).__name__


@pytest.fixture(scope="module")
def openai_model(tiny_model: str) -> torch.nn.Module:
    """A QuickGELU model whose weights went through OpenAI's fp16 conversion, as released."""
    torch.manual_seed(3)
    model = open_clip.create_model(tiny_model, force_quick_gelu=True)
    convert_weights_to_fp16(model)
    return model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.float().encode_image(torch.randn(2, 3, 32, 32))


def test_openai_state_dicts_get_quick_gelu(tiny_model: str, openai_model, tmp_path: Path) -> None:
    expected = _outputs(openai_model)
    cuda_style = tmp_path / "cuda.pt"  # clip.load on CUDA: fp16 conv/linear, fp32 LayerNorm
    torch.save(openai_model.state_dict(), cuda_style)
    cpu_style = tmp_path / "cpu.pt"  # clip.load on CPU: .float() of the fp16 values
    torch.save(openai_model.float().state_dict(), cpu_style)
    assert openai_model.state_dict()["visual.conv1.weight"].dtype == torch.float32
    for path in (cuda_style, cpu_style):
        state, scripted = read_state_dict(path)
        assert looks_openai(state, scripted) and not scripted
        model = create_from_checkpoint(tiny_model, str(path), None, CPU)
        assert _activation(model) == "QuickGELU"
        torch.testing.assert_close(_outputs(model), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_openai_extra_keys_and_torchscript(tiny_model: str, openai_model, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in openai_model.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16))
    extra = tmp_path / "extra.pt"
    torch.save(state, extra)
    assert _activation(create_from_checkpoint(tiny_model, str(extra), None, CPU)) == "QuickGELU"
    torch.manual_seed(4)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(open_clip.create_model(tiny_model)), scripted)
    assert read_state_dict(scripted)[1]
    model = create_from_checkpoint(tiny_model, str(scripted), None, CPU)
    assert _activation(model) == "QuickGELU"


def test_open_clip_checkpoints_keep_the_config_activation(tiny_model: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    trained = open_clip.create_model(tiny_model)
    wrapped = tmp_path / "epoch_1.pt"  # what open_clip training saves
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                           trained.state_dict().items()}}, wrapped)  # fmt: skip
    state, scripted = read_state_dict(wrapped)
    assert not looks_openai(state, scripted) and "visual.proj" in state
    model = create_from_checkpoint(tiny_model, str(wrapped), None, CPU)
    assert _activation(model) == "GELU"
    torch.testing.assert_close(_outputs(model), _outputs(trained))
    # An explicit pretrained tag decides the activation, as open_clip's tags do.
    assert wants_quick_gelu("ViT-B-16", "openai") and not wants_quick_gelu("ViT-B-16", None)
    assert not wants_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")


def test_bad_files_are_model_load_errors(tiny_model: str, openai_model, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.pt"):
        create_from_checkpoint(tiny_model, str(junk), None, CPU)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), other)
    with pytest.raises(ModelLoadError, match="do not fit"):
        create_from_checkpoint(tiny_model, str(other), None, CPU)


def test_load_clip_reads_openai_checkpoints(tiny_model: str, openai_model, tmp_path: Path) -> None:
    path = tmp_path / "for-load-clip.pt"
    torch.save(openai_model.state_dict(), path)
    clip = load_clip(tiny_model, None, str(path), "cpu")
    assert _activation(clip.model) == "QuickGELU" and clip.source == str(path)


def test_text_encoding_skips_padding_exactly(tiny_model: str, openai_model) -> None:
    tokenizer = open_clip.get_tokenizer(tiny_model)
    tokens = tokenizer(["a", "There is a medium red square in the scene.", "cat"])
    full = tokens.argmax(dim=-1).max() + 1
    assert full < tokens.shape[1]  # the fast path really runs on a shorter sequence
    with torch.no_grad():
        torch.testing.assert_close(
            encode_tokens(openai_model, tokens), openai_model.encode_text(tokens), atol=1e-5, rtol=0
        )


def test_no_random_init_warning_when_a_checkpoint_loads(
    tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(6)
    path = tmp_path / "weights.pt"
    torch.save(open_clip.create_model(tiny_model).state_dict(), path)
    notice = "No pretrained weights loaded"
    caplog.clear()
    with caplog.at_level("WARNING"):
        create_from_checkpoint(tiny_model, str(path), None, CPU)
    assert notice not in caplog.text
    # Truly random weights still get open_clip's notice: the filter is gone afterwards.
    with caplog.at_level("WARNING"):
        open_clip.create_model(tiny_model)
    assert notice in caplog.text


def test_vit_surgery_matches_open_clip(tiny_model: str) -> None:
    from autolabel.models import vit

    torch.manual_seed(7)
    model = open_clip.create_model(tiny_model).eval()
    visual = model.visual
    pixels = torch.randn(2, 3, 32, 32)
    tokens = open_clip.get_tokenizer(tiny_model)(["a red square", "There is a blue disc."])
    with torch.no_grad():
        # The public-attribute token embedder is open_clip's private one, bit for bit.
        x = vit.embed_tokens(visual, pixels, resize_positions=False)
        assert torch.equal(x, visual._embeds(pixels))
        # At the trained grid the resized embedding only differs by its fp16 rounding.
        torch.testing.assert_close(vit.embed_tokens(visual, pixels), x, atol=1e-3, rtol=0)
        block = visual.transformer.resblocks[0]
        expected = block(x)
        torch.testing.assert_close(vit.block_forward(block, x), expected, atol=1e-5, rtol=0)
        out, weights = vit.block_with_attention(block, x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        assert weights.shape == (2, x.shape[1], x.shape[1])
        last = vit.block_forward(
            visual.transformer.resblocks[-1], vit.last_block_input(visual, pixels)
        )
        torch.testing.assert_close(vit.project_cls(visual, last), visual(pixels), atol=1e-5, rtol=0)
        # The training text encoder computes what inference's encode_tokens does.
        torch.testing.assert_close(
            vit.encode_text(model, tokens), encode_tokens(model, tokens), atol=1e-5, rtol=0
        )
