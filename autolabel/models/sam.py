"""Segment Anything through transformers: SamModel (SAM), SamHQModel (HQ-SAM) and Sam2Model.

A model is named by a Hugging Face hub id, a save_pretrained folder (model and processor), or
"toy" for the bundled toy-world SAM (autolabel/assets/toy_sam, trained by
`autolabel toyworld train-sam`). Offline, a hub id that is not cached fails with the same message
as the CLIP and BLIP loaders, naming --sam-model as the option that takes a local copy.

`LoadedSam.prepare` computes an image's embedding once; `LoadedSam.decode` answers any number of
point prompts from it, so the embedding is shared by every prompt of the image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.errors import ModelLoadError
from autolabel.models.clip import (
    hub_fix,
    hub_offline_if_unreachable,
    hub_source,
    offline_message,
    resolve_device,
)
from autolabel.refine.settings import DEFAULT_SAM
from autolabel.toyworld import TOY_NAME

OPTION = "--sam-model"
TOY_SAM_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_sam"
# config.model_type -> transformers model class.
SAM_CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}


@dataclass
class SamInputs:
    """One image, ready for the mask decoder: its embedding and its prompts in model space."""

    features: Any  # what get_image_embeddings returned (a tensor, a tuple or a list)
    points: torch.Tensor  # 1 x N x 1 x 2, normalised by the processor
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int] | None  # SAM / HQ-SAM: the resized image before padding


@dataclass
class LoadedSam:
    """A SAM model with its processor, on a device."""

    model: Any
    processor: Any
    kind: str  # "sam", "sam_hq" or "sam2"
    name: str
    device: torch.device

    @torch.no_grad()
    def prepare(self, image: np.ndarray, points: np.ndarray) -> SamInputs:
        """Embed an H x W x 3 uint8 image (once) with its N x 2 (x, y) pixel point prompts."""
        prompts = [[[[float(x), float(y)]] for x, y in points]]
        # A writable copy: the processor hands the array to torch.from_numpy.
        enc = self.processor(images=np.array(image), input_points=prompts, return_tensors="pt")
        pixels = enc["pixel_values"].to(self.device, self.model.dtype)
        reshaped = enc.get("reshaped_input_sizes")
        return SamInputs(
            self.model.get_image_embeddings(pixels),
            enc["input_points"].to(self.device, self.model.dtype),
            tuple(int(v) for v in enc["original_sizes"][0]),
            None if reshaped is None else tuple(int(v) for v in reshaped[0]),
        )

    @torch.no_grad()
    def decode(self, inputs: SamInputs, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts start..stop-1: (n x 3 x H x W logits at the image's size, n x 3
        predicted IoUs), SAM's three candidates per point."""
        features = inputs.features
        if self.kind == "sam_hq":
            kwargs = {"image_embeddings": features[0], "intermediate_embeddings": features[1]}
        else:
            kwargs = {"image_embeddings": features}
        out = self.model(input_points=inputs.points[:, start:stop], multimask_output=True, **kwargs)
        sizes = {"original_sizes": [inputs.original_size]}
        if inputs.reshaped_size is not None:
            sizes["reshaped_input_sizes"] = [inputs.reshaped_size]
        logits = self.processor.post_process_masks(
            out.pred_masks.float().cpu(), binarize=False, **sizes
        )[0]
        return logits, out.iou_scores[0].float().cpu()

    def describe(self) -> dict[str, Any]:
        """Provenance for run.json."""
        return {"sam_model": self.name, "sam_class": SAM_CLASSES[self.kind]}


def sam_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local) for a --sam-model value."""
    if name == TOY_NAME:
        if not (TOY_SAM_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled toy SAM is missing ({TOY_SAM_DIR}); reinstall autolabel, or "
                "retrain it with `autolabel toyworld train-sam`"
            )
        return str(TOY_SAM_DIR), True
    return hub_source(name, OPTION)


@functools.lru_cache(maxsize=2)
def load_sam(name: str = DEFAULT_SAM, device: str = "cpu") -> LoadedSam:
    """Load a SAM, HQ-SAM or SAM 2 model and its processor once per process."""
    import transformers

    dev = resolve_device(device)
    source, local = sam_source(name)
    # No "Loading weights" bar in the middle of a run's output.
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    with hub_offline_if_unreachable():
        try:
            config = transformers.AutoConfig.from_pretrained(source)
            kind = config.model_type
            if kind not in SAM_CLASSES:
                raise ModelLoadError(
                    f"{OPTION} {name}: a {kind!r} model; --sam-model takes a SAM, HQ-SAM or "
                    f"SAM 2 model ({', '.join(SAM_CLASSES.values())}) such as {DEFAULT_SAM}"
                )
            model = getattr(transformers, SAM_CLASSES[kind]).from_pretrained(source)
            processor = transformers.AutoProcessor.from_pretrained(source)
        except ModelLoadError:
            raise
        except Exception as exc:  # hub, HTTP and file errors share no base class
            if local:
                raise ModelLoadError(f"{OPTION} {name}: cannot load it ({exc})") from exc
            raise ModelLoadError(
                offline_message(
                    f"SAM model {name!r} (Hugging Face hub)", exc, hub_fix(name, OPTION), "id"
                )
            ) from exc
        finally:
            if progress:
                transformers.utils.logging.enable_progress_bar()
    model.requires_grad_(False)
    model.eval().to(dev)
    return LoadedSam(model, processor, kind, name, dev)
