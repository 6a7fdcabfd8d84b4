"""Hugging Face image-text-matching models (BLIP, BridgeTower) for PnP-OVSS.

Loads a hub id or a folder written by `save_pretrained`, and runs the ITM head while reading one
text-side cross-attention layer with its gradient. Neither model exposes cross-attention
through `output_attentions` (transformers' modeling_blip.py and modeling_bridgetower.py), so a
forward hook on the layer's attention module takes it from the module's return value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from autolabel.errors import ModelLoadError
from autolabel.models.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    hub_fix,
    hub_offline_if_unreachable,
    hub_source,
    offline_message,
    resolve_device,
)

# BLIP ViT-L with Flickr30k ITM: the HF port of the LAVIS checkpoint PnP-OVSS uses
# (model_large_retrieval_flickr.pth in github.com/letitiabanana/PnP-OVSS "Files to replace for
# BLIP/blip_itm_large.yaml").
DEFAULT_BLIP = "Salesforce/blip-itm-large-flickr"
DEFAULT_BRIDGETOWER = "BridgeTower/bridgetower-large-itm-mlm-itc"
# model_type in config.json -> the transformers class with an ITM head
ITM_CLASSES = {
    "blip": "BlipForImageTextRetrieval",
    "bridgetower": "BridgeTowerForImageAndTextRetrieval",
}
ENC_TOKEN = "[ENC]"


@dataclass
class ItmModel:
    """A loaded ITM model, its tokenizer, and the numbers PnP needs about it."""

    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "blip" or "bridgetower"
    name: str  # the id or folder it was loaded from
    device: torch.device
    patch_size: int
    num_layers: int  # text-side cross-attention layers
    num_heads: int
    max_text_tokens: int
    enc_token_id: int | None  # BLIP's [ENC] id (replaces [CLS] as in original BLIP ITM)
    mean: tuple[float, float, float] = OPENAI_MEAN  # both processors use CLIP's statistics
    std: tuple[float, float, float] = OPENAI_STD

    def cross_attention(self, layer: int) -> torch.nn.Module:
        """The attention module (text queries over image keys) of cross-attention layer `layer`."""
        return _cross_layers(self.model, self.kind)[layer].crossattention.self

    def match_logits_and_attention(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        layer: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ITM "match" logits (B,) and layer's cross-attention (B, heads, T, 1+N), in the graph.

        Weights are frozen, so autograd records nothing until the hooked layer: its query input is
        made a graph leaf there. d(logit)/d(attention) is unaffected, and the vision tower and the
        earlier text layers keep no activations.
        """
        module = self.cross_attention(layer)
        captured: dict[str, torch.Tensor] = {}

        def start_graph(_mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
            return args, kwargs

        def keep_attention(_mod: torch.nn.Module, _args: tuple, output: Any) -> None:
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                captured["attention"] = output[1]

        handles = [
            module.register_forward_pre_hook(start_graph, with_kwargs=True),
            module.register_forward_hook(keep_attention),
        ]
        try:
            with torch.enable_grad():
                logits = self._itm_logits(pixel_values, input_ids, attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        if "attention" not in captured:
            raise ModelLoadError(
                f"{self.name}: this transformers version does not return cross-attention "
                "probabilities from the attention module; install transformers>=4.46"
            )
        return logits[:, 1], captured["attention"]

    def _itm_logits(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        net = self.model
        if self.kind == "blip":
            # The pieces of BlipForImageTextRetrieval.forward, so that the image mask is built on
            # the right device and the vision tower runs without autograd.
            with torch.no_grad():
                image = net.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)[
                    0
                ]
            image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
            text = net.text_encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_hidden_states=image,
                encoder_attention_mask=image_mask,
                output_attentions=True,
            )[0]
            return net.itm_head(text[:, 0, :])
        out = net.bridgetower(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            interpolate_pos_encoding=True,
            output_attentions=True,
        )
        return net.itm_score(out.pooler_output)


def _cross_layers(model: torch.nn.Module, kind: str) -> torch.nn.ModuleList:
    if kind == "blip":
        return model.text_encoder.encoder.layer
    return model.bridgetower.cross_modal_text_layers


@functools.lru_cache(maxsize=2)
def load_itm(model: str = DEFAULT_BLIP, device: str = "cpu") -> ItmModel:
    """Load a BLIP or BridgeTower ITM model (hub id or save_pretrained folder) once per process."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            "method pnp needs the transformers package: pip install 'autolabel[pnp]'"
        ) from exc
    dev = resolve_device(device)
    source, local = hub_source(model, "--model")
    # Cache only when the hub's host does not resolve: no minute of retries before the message.
    with hub_offline_if_unreachable():
        try:
            config = transformers.AutoConfig.from_pretrained(source)
            kind = config.model_type
            if kind not in ITM_CLASSES:
                raise ModelLoadError(
                    f"--model {model}: a {kind!r} model; method pnp needs a BLIP or BridgeTower "
                    f"image-text-matching model such as {DEFAULT_BLIP} or {DEFAULT_BRIDGETOWER}"
                )
            cls = getattr(transformers, ITM_CLASSES[kind])
            # Attention weights only come from the eager path (transformers' BridgeTower
            # refuses sdpa).
            net, info = cls.from_pretrained(
                source, attn_implementation="eager", output_loading_info=True
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        except ModelLoadError:
            raise
        except Exception as exc:  # hub, HTTP and file errors share no base class
            if local:
                raise ModelLoadError(f"--model {model}: cannot load it ({exc})") from exc
            raise ModelLoadError(
                offline_message(
                    f"model {model!r} (Hugging Face hub)", exc, hub_fix(model, "--model"), "id"
                )
            ) from exc
    missing_head = [k for k in info.get("missing_keys", ()) if k.startswith("itm")]
    if missing_head:
        raise ModelLoadError(
            f"--model {model}: the checkpoint has no image-text-matching head "
            f"({', '.join(missing_head[:3])} missing); use an ITM checkpoint such as {DEFAULT_BLIP}"
        )
    net.requires_grad_(False)
    net.eval().to(dev)
    layers = _cross_layers(net, kind)
    text_cfg = getattr(config, "text_config", config)
    positions = int(getattr(text_cfg, "max_position_embeddings", 512))
    # RoBERTa positions start after the padding index, so two fewer are usable.
    max_tokens = min(int(getattr(tokenizer, "model_max_length", positions)), positions - 2)
    return ItmModel(
        model=net,
        tokenizer=tokenizer,
        kind=kind,
        name=model,
        device=dev,
        patch_size=int(config.vision_config.patch_size),
        num_layers=len(layers),
        num_heads=int(layers[0].crossattention.self.num_attention_heads),
        max_text_tokens=max_tokens,
        enc_token_id=_enc_token_id(tokenizer, text_cfg) if kind == "blip" else None,
    )


def _enc_token_id(tokenizer: Any, text_cfg: Any) -> int:
    """BLIP's [ENC] id: the tokenizer's own when it lists the token, else the last text id.

    BLIP extends bert-base-uncased with [DEC] then [ENC] (vocab 30522 -> 30524), so [ENC] is
    the last id of the text embedding (BLIP's `init_tokenizer`; transformers' BlipTextConfig).
    """
    token_id = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    return int(text_cfg.vocab_size) - 1
