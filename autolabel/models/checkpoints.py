"""Local CLIP weights: open_clip checkpoints and OpenAI-CLIP state dicts or TorchScript archives.

An OpenAI-format state dict (`torch.save(model.state_dict())` on a model from OpenAI's `clip`
package) has the same key names as an open_clip ViT CLIP, but OpenAI's models were trained with
QuickGELU while open_clip's plain configs (e.g. "ViT-B-16") use GELU. Loading OpenAI weights into
a GELU model runs without error and silently gives other features, so the activation is decided
here: an explicit open_clip pretrained tag wins (its `quick_gelu` flag), otherwise files that look
OpenAI-made (TorchScript archive, OpenAI's extra keys, or OpenAI's fp16-valued weights) get
QuickGELU, and everything else follows the named open_clip config.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from autolabel.errors import ModelLoadError

# Keys a TorchScript OpenAI model carries in its state dict besides the weights.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensors whose dtype and values tell OpenAI's release apart from an open_clip training run:
# OpenAI converted conv/linear weights to fp16 and left LayerNorms in fp32.
_PROBE_WEIGHT = "visual.conv1.weight"
_PROBE_NORM = "ln_final.weight"


def wants_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether an open_clip pretrained tag was trained with QuickGELU (e.g. every 'openai' tag)."""
    import open_clip

    if not pretrained:
        return False
    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def _unwrap(checkpoint: object) -> dict[str, torch.Tensor]:
    state = checkpoint
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError("it holds no state dict")
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zip files with a constants.pkl; torch.save archives have none.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") for n in archive.namelist())


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a checkpoint file, and whether it was a TorchScript archive (OpenAI's .pt).

    Pickled files are memory-mapped when possible, so inspecting a large file reads little of it.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path))), False
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            scripted = torch.jit.load(str(path), map_location="cpu")
        return dict(scripted.state_dict()), True
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) serialisation cannot be memory-mapped.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap(loaded), False


def looks_openai(state: dict[str, torch.Tensor], scripted: bool) -> bool:
    """Whether a state dict was made by OpenAI's `clip` package (so the model needs QuickGELU)."""
    if scripted or any(k in state for k in OPENAI_EXTRA_KEYS):
        return True
    weight, norm = state.get(_PROBE_WEIGHT), state.get(_PROBE_NORM)
    if weight is None or norm is None:
        return False
    if weight.dtype == torch.float16:
        # clip.load on CUDA: fp16 conv/linear weights next to fp32 LayerNorms.
        return norm.dtype == torch.float32
    if weight.dtype == torch.float32:
        # clip.load on CPU calls .float() on weights that OpenAI released in fp16.
        return bool(torch.equal(weight, weight.half().float()))
    return False


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_from_checkpoint(
    name: str, checkpoint: str, pretrained: str | None, device: torch.device
) -> torch.nn.Module:
    """Build open_clip architecture `name` and load a local open_clip or OpenAI-format file."""
    import open_clip

    path = Path(checkpoint)
    try:
        state, scripted = read_state_dict(path)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"--checkpoint {checkpoint}: cannot read it ({exc})") from exc
    openai = looks_openai(state, scripted)
    quick_gelu = wants_quick_gelu(name, pretrained) if pretrained else openai
    # open_clip announces "initialized randomly" here; the weights load right below, so the
    # notice would mislead every --checkpoint (and --model toy) user.
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
    except RuntimeError as exc:
        raise ModelLoadError(f"model {name!r}: cannot build it ({exc})") from exc
    finally:
        logging.getLogger().removeFilter(notice)
    try:
        if openai:
            # A scripted model also saves buffers that open_clip keeps out of its state dict.
            transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
            skip = transient.union(OPENAI_EXTRA_KEYS)
            weights = {k: v for k, v in state.items() if k not in skip}
            model.load_state_dict(weights, strict=True)
        else:
            del state  # open_clip re-reads the file with its own format conversions
            open_clip.load_checkpoint(model, str(path))
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        raise ModelLoadError(
            f"--checkpoint {checkpoint}: its weights do not fit model {name!r} ({exc})"
        ) from exc
    return model.to(device).eval()
