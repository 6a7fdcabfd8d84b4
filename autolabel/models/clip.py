"""open_clip loading (names, pretrained tags, local checkpoints, the bundled toy model) and a
text-embedding cache. Models are loaded once per process and shared by every method."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from autolabel.errors import ModelLoadError
from autolabel.models.checkpoints import create_from_checkpoint, wants_quick_gelu
from autolabel.models.precision import full_precision
from autolabel.models.vit import encode_tokens
from autolabel.toyworld import TOY_NAME

TOY_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"
# OpenAI's CLIP image normalisation; open_clip models carry their own in preprocess_cfg.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
NO_WEIGHTS = frozenset({"", "none", "random"})  # --pretrained none: random weights


@dataclass
class ClipModel:
    """A loaded open_clip model plus what methods need around it."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str  # where the weights came from: pretrained tag, checkpoint path, or "random"
    device: torch.device
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def patch_size(self) -> int:
        """ViT patch size in pixels."""
        patch = self.model.visual.patch_size
        return int(patch[0] if isinstance(patch, tuple | list) else patch)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(prompts) x D), cached per prompt string."""
        with self._lock:
            missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
            if missing:
                tokens = self.tokenizer(missing).to(self.device)
                # fp32 under any --precision: each prompt is encoded once per process and cached,
                # so a run's embeddings must not depend on the precision that encoded them first.
                with full_precision(self.device):
                    feats = encode_tokens(self.model, tokens).float()
                feats = feats / feats.norm(dim=-1, keepdim=True)
                for prompt, feat in zip(missing, feats, strict=True):
                    self._text_cache[prompt] = feat
            return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def encode_templates(self, names: list[str], templates: list[str]) -> torch.Tensor:
        """Per name, the re-normalised mean of its template embeddings (len(names) x D)."""
        prompts = [t.format(n) for n in names for t in templates]
        feats = self.encode_text(prompts).view(len(names), len(templates), -1).mean(dim=1)
        return feats / feats.norm(dim=-1, keepdim=True)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] to the model's input normalisation."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; 'cpu', 'cuda', 'cuda:N' are taken as given."""
    from autolabel.errors import UsageError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device name (auto, cpu, cuda:N)") from exc


# Vision-tower settings autolabel's ViT code does not implement: it runs open_clip's standard
# attention blocks by hand (models/vit.py, methods/gradcam.py: no layer scale, no custom
# attention) and reads every token out through ln_post and proj (no attentional pooler, no
# LayerNorm after pooling, no (pooled, tokens) output).
UNSUPPORTED_VISION = {
    "attentional_pool": "attentional pooling",
    "final_ln_after_pool": "LayerNorm after pooling",
    "ls_init_value": "layer scale",
    "output_tokens": "token outputs",
    "qk_norm": "custom attention blocks",
    "scaled_cosine_attn": "custom attention blocks",
    "scale_heads": "custom attention blocks",
    "scale_attn_inner": "custom attention blocks",
    "scale_attn": "custom attention blocks",
    "scale_fc": "custom attention blocks",
}


def check_model_name(name: str, option: str = "--model") -> None:
    """Raise UsageError unless `name` is a CLIP backbone autolabel can run (before any load).

    name: "toy", an open_clip model name or the path of an open_clip model config .json; only
    the config is read, no model is built and no weights are fetched.
    """
    from autolabel.errors import UsageError

    if name == TOY_NAME:
        return
    config = _read_config(Path(name), option) if name.endswith(".json") else _known_config(name)
    if config is None:
        raise UsageError(
            f"{option} {name}: unknown model; `autolabel models` lists the models autolabel runs"
        )
    problem = _unsupported(config)
    if problem:
        raise UsageError(
            f"{option} {name}: {problem}; autolabel runs plain ViT CLIP models only, "
            "`autolabel models` lists them"
        )


def supported_models() -> list[tuple[str, list[str]]]:
    """The open_clip models check_model_name accepts, each with its pretrained tags."""
    import open_clip

    return [
        (name, open_clip.list_pretrained_tags_by_model(name))
        for name in open_clip.list_models()
        if name != TOY_NAME and not _unsupported(open_clip.get_model_config(name))
    ]


def _known_config(name: str) -> dict | None:
    """open_clip's config of a model it lists (other names would be fetched from the hub)."""
    import open_clip

    return open_clip.get_model_config(name) if name in open_clip.list_models() else None


def _read_config(path: Path, option: str) -> dict:
    import json

    from autolabel.errors import UsageError

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{option} {path}: no such model config file") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{option} {path}: not an open_clip model config ({exc})") from exc
    if not isinstance(config, dict):
        raise UsageError(f"{option} {path}: not an open_clip model config (not a JSON object)")
    return config


def _unsupported(config: dict) -> str | None:
    """Why autolabel cannot run a model config, or None for a plain ViT CLIP."""
    vision = config.get("vision_cfg")
    if not isinstance(vision, dict):
        return "no vision_cfg, not an open_clip model config"
    if vision.get("timm_model_name"):
        return f"a timm backbone ({vision['timm_model_name']}), not a ViT"
    layers = vision.get("layers")
    if isinstance(layers, list | tuple):
        return "a ResNet, not a ViT"
    if not isinstance(layers, int) or "patch_size" not in vision:
        return "not a ViT (needs whole-number layers and a patch_size)"
    if "multimodal_cfg" in config:
        return "a CoCa captioning model"
    problems = {label for key, label in UNSUPPORTED_VISION.items() if vision.get(key)}
    if vision.get("block_type") not in (None, "default"):
        problems.add("custom attention blocks")
    if vision.get("pool_type", "tok") not in ("tok", "avg"):
        problems.add(f"pool_type {vision['pool_type']!r}")
    return f"a ViT with {', '.join(sorted(problems))}" if problems else None


def cache_dir() -> Path:
    """Where downloaded weights go (the Hugging Face hub cache that open_clip uses)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub)
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return Path(home) / "hub"


def _register_toy() -> None:
    import open_clip

    config = TOY_DIR / f"{TOY_NAME}.json"
    if not config.exists():
        raise ModelLoadError(f"the bundled toy model config is missing ({config})")
    if TOY_NAME not in open_clip.list_models():
        open_clip.add_model_config(config)


def offline_message(subject: str, exc: BaseException, fix: str, unknown: str = "tag") -> str:
    """The one wording every model loader uses when weights cannot be fetched."""
    # Hub errors often end their text with a period already.
    reason = str(exc).strip().rstrip(". \t\r\n") or type(exc).__name__
    return (
        f"could not fetch weights for {subject}: {reason}.\n"
        f"autolabel downloads weights on first use into {cache_dir()}; this machine seems to be "
        f"offline or the {unknown} is unknown.\n"
        f"Fix: {fix}"
    )


def hub_source(model: str, option: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder) for a transformers model
    named by `option`: a hub id or a save_pretrained folder."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{option} {model}: no config.json there; pass a folder written by "
                "save_pretrained (model and processor) or a Hugging Face model id"
            )
        return str(path.resolve()), True
    # A hub id is "name" or "owner/name"; anything else that does not exist is a missing folder.
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise ModelLoadError(f"{option} {model}: no such folder")
    return model, False


def hub_fix(model: str, option: str) -> str:
    """How to get a hub model onto an offline machine and pass it with `option`."""
    return (
        "on a connected machine run\n"
        '  python -c "from transformers import AutoModel, AutoProcessor; '
        f"m='{model}'; AutoModel.from_pretrained(m).save_pretrained('DIR'); "
        "AutoProcessor.from_pretrained(m).save_pretrained('DIR')\"\n"
        f"then copy DIR here and pass {option} DIR, or copy that cache folder here."
    )


def _register_config(path: Path) -> str:
    """Register a custom open_clip model config file; its stem becomes the model name."""
    import open_clip

    if not path.is_file():
        raise ModelLoadError(f"--model {path}: no such model config file")
    try:
        open_clip.add_model_config(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--model {path}: not an open_clip model config ({exc})") from exc
    return path.stem


def _offline_message(name: str, pretrained: str, exc: BaseException) -> str:
    return offline_message(
        f"model {name!r} (pretrained={pretrained!r})",
        exc,
        "download the checkpoint on a connected machine and pass it with --checkpoint PATH "
        "for --model, or --classifier-checkpoint PATH for --classifier-model (CaR's "
        "classifier); an open_clip .pt/.bin/.safetensors or an OpenAI-CLIP state dict. Or "
        "copy that cache folder here. `autolabel models` lists names and tags.",
    )


def _fetch_pretrained(name: str, tag: str) -> None:
    """Download (or find in the cache) a tag's weights before the model is built, so that an
    offline machine fails within a second with the clear message instead of after the build."""
    from open_clip import pretrained as registry

    cfg = registry.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = registry.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"model {name!r} has no pretrained tag {tag!r}; known tags: "
            f"{', '.join(tags) or 'none (use --checkpoint PATH)'}"
        )
    try:
        with hub_offline_if_unreachable():
            registry.download_pretrained(cfg)
    except Exception as exc:  # hub and HTTP errors share no base class
        raise ModelLoadError(_offline_message(name, tag, exc)) from exc


@contextlib.contextmanager
def hub_offline_if_unreachable() -> Iterator[None]:
    """Use only the local cache when the hub's host does not resolve (and no proxy is set).

    Otherwise the hub client retries each file for about 25 s and prints every retry before the
    offline message; the cache still serves weights that were downloaded earlier.
    """
    from huggingface_hub import constants

    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    unreachable = False
    if not constants.HF_HUB_OFFLINE and not any(os.environ.get(v) for v in proxies):
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            unreachable = True
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or unreachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


@functools.lru_cache(maxsize=4)
def load_clip(
    name: str,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
) -> ClipModel:
    """Load an open_clip model once per process.

    name: an open_clip model name, "toy" for the bundled toy-world model, or the path of an
    open_clip model config .json (custom architectures; its file stem becomes the name).
    pretrained: an open_clip pretrained tag (downloaded on first use), or None / "none".
    checkpoint: a local weights file; wins over pretrained.
    With neither, the architecture is built with random weights (for tests and cost checks).
    """
    import open_clip

    dev = resolve_device(device)
    if pretrained is not None and pretrained.lower() in NO_WEIGHTS:
        pretrained = None
    if name.endswith(".json"):
        name = _register_config(Path(name))
    if name == TOY_NAME:
        _register_toy()
        # The toy model has exactly one set of weights, the bundled one, unless a file is given.
        if checkpoint is None:
            checkpoint = str(TOY_DIR / f"{TOY_NAME}.pt")
            if not Path(checkpoint).is_file():
                raise ModelLoadError(
                    f"the bundled toy model weights are missing ({checkpoint}); "
                    "reinstall autolabel, or retrain them with `autolabel toyworld train`"
                )
        pretrained = None
    if name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model {name!r}; `autolabel models` lists the architectures open_clip knows"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ModelLoadError(f"--checkpoint {checkpoint}: no such file")
    try:
        if checkpoint is not None:
            model = create_from_checkpoint(name, checkpoint, pretrained, dev)
        else:
            if pretrained:
                _fetch_pretrained(name, pretrained)
            # open_clip only warns when a tag was trained with QuickGELU (every 'openai' tag) but
            # the named config uses GELU; build the activation the weights were trained with.
            model = open_clip.create_model(
                name,
                pretrained=pretrained or None,
                device=dev,
                force_quick_gelu=wants_quick_gelu(name, pretrained),
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # hub, HTTP, pickle and shape errors share no base class
        if checkpoint:
            raise ModelLoadError(
                f"checkpoint {checkpoint}: cannot load it into model {name!r} ({exc})"
            ) from exc
        raise ModelLoadError(_offline_message(name, str(pretrained), exc)) from exc
    model.eval()
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, tuple | list) else image_size)
    return ClipModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        source=str(checkpoint or pretrained or "random"),
        device=dev,
        image_size=image_size,
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
    )
