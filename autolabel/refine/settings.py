"""What --refine / --sam-model and a recipe's `refine:` and `sam:` keys may say, checked before
anything is written or loaded (no torch here).

--refine picks the post-processing after the method: `crf` (the method's dense CRF), `sam`
(CaR + SAM's matching, autolabel.refine.sam), `crf+sam` (the paper's CaR + SAM) or `none`.
Without it each method keeps its paper's default (car and pnp: CRF; fast: none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autolabel.errors import UsageError
from autolabel.methods.settings import Fraction, error_lines
from autolabel.toyworld import TOY_NAME

REFINE_CHOICES = ("crf", "sam", "crf+sam", "none")
# HQ-SAM ViT-H, the paper's SAM (CaR §3.4, official configs/voc.yaml `sam:` block), as converted
# for transformers by the HQ-SAM authors (hub account syscv-community).
DEFAULT_SAM = "syscv-community/sam-hq-vit-huge"


class SamSettings(BaseModel):
    """SAM's model, automatic-mask generator and CaR's matching thresholds.

    Defaults: the generator settings of CaR's configs (`sam:` block: points_per_side 64,
    pred_iou_thresh 0.88, stability_score_thresh 0.95, box_nms_thresh 0.7, crop_n_layers 0) and
    the paper's thresholds (§4.1: phi_iom = phi_iou = 0.7); min_pred_threshold 0.05 is the VOC
    config's. The recipes set the official configs' iom_thres per dataset.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = DEFAULT_SAM  # hub id, save_pretrained folder, or "toy"
    points_per_side: int = Field(64, ge=1, le=256)
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: Fraction = 0.88
    stability_score_thresh: Fraction = 0.95
    box_nms_thresh: Fraction = 0.7
    iom_thres: Fraction = 0.7
    min_pred_threshold: Fraction = 0.05
    matching_thresh: Fraction = 0.7


@dataclass(frozen=True)
class RefinePlan:
    """The checked refinement: the CRF switch (None: the method's default) and SAM's settings
    (None: no SAM stage)."""

    refine: str | None
    crf: bool | None
    sam: SamSettings | None


def check_refine(
    refine: str | None,
    sam: Mapping[str, Any] | None = None,
    sam_model: str | None = None,
    backbone: str | None = None,
) -> RefinePlan:
    """Validate --refine, the recipe's `sam:` mapping and --sam-model; UsageError naming each bad
    one. Without --sam-model or a recipe's sam.model, the toy backbone gets the toy SAM."""
    if refine is not None and refine not in REFINE_CHOICES:
        raise UsageError(f"--refine {refine!r}: choose one of {', '.join(REFINE_CHOICES)}")
    if sam is not None and not isinstance(sam, Mapping):
        raise UsageError(f"recipe key sam: must be a mapping of SAM settings (got {sam!r})")
    values = dict(sam or {})
    if sam_model is not None:
        values["model"] = sam_model
    elif "model" not in values and backbone == TOY_NAME:
        values["model"] = TOY_NAME
    try:
        settings = SamSettings.model_validate(values)
    except ValidationError as exc:
        lines = [line.replace("settings.", "sam.", 1) for line in error_lines(exc)]
        raise UsageError("\n".join(lines)) from None
    if refine is None:
        return RefinePlan(None, None, None)
    return RefinePlan(refine, refine in ("crf", "crf+sam"), settings if "sam" in refine else None)
