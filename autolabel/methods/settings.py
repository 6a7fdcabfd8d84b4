"""Every method's settings, checked in one place before anything is written or loaded.

Each method has one pydantic model: every setting with its type, range or choices, the defaults
with the papers they come from, and the method's own rules (the toy model, parity, ...).
`MethodSettings.from_dict` is the entry point for recipe/CLI settings: it drops the model keys
the method does not use and turns pydantic's errors into one UsageError that names the method
and each bad setting.

This module loads no torch, so that `validate_settings` is cheap. The names of backbones and
weights belong to autolabel.models.clip / autolabel.models.blip, which do import torch; they are
imported only where a backbone name is given (or pnp's default BLIP id is needed).

Sources of the defaults, in short form below:
- fast: NACLIP (Hajimiri et al., WACV 2025, arXiv:2404.08181) and its evaluation harness,
  github.com/sinahmr/NACLIP (inherited from SCLIP, github.com/wangf3014/SCLIP);
- car: CaR (Sun et al., CVPR 2024, arXiv:2312.07661), "CaR code" = its official code,
  github.com/google-research/google-research, folder clip_as_rnn/;
- pnp: PnP-OVSS (Luo et al., CVPR 2024, arXiv:2311.17095), official code
  github.com/letitiabanana/PnP-OVSS: "updated code" = commit e439962
  (PnP_OVSS_0514_updated_segmentation*.py, Run_seg*.sh), "CVPR-era" = commit 687a4e5.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from typing import Annotated, Any, ClassVar, Literal, Self, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from autolabel.errors import UsageError
from autolabel.models.zeroshot import CAM_TEMPLATE, DEFAULT_TEMPLATES, SEMANTIC_TEMPLATES
from autolabel.refine.crf import CRFParams
from autolabel.toyworld import TOY_NAME

# ------------------------------------------------------------------ shared setting types


def _one_slot(template: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"a template must contain exactly one '{{}}' (got {template!r})")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise ValueError(
            f"a template is a format string whose only field is '{{}}' (got {template!r})"
        ) from None
    return template


Template = Annotated[str, AfterValidator(_one_slot)]
Templates = Annotated[list[Template], Field(min_length=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# CaR's visual prompts; autolabel.methods.prompts draws them in this fixed order.
PromptKind = Literal["blur", "gray", "black", "circle", "rectangle", "contour"]
PromptKinds = Annotated[list[PromptKind], Field(min_length=1)]


def _clip_name(option: str) -> AfterValidator:
    """Check a CLIP backbone name with autolabel.models.clip.check_model_name."""

    def check(name: str) -> str:
        from autolabel.models.clip import check_model_name

        try:
            check_model_name(name, option)
        except UsageError as exc:
            # The error line already names a settings.* key; a CLI option stays in the reason.
            prefix = f"{option} " if option.startswith("settings.") else ""
            raise ValueError(str(exc).removeprefix(prefix)) from None
        return name

    return AfterValidator(check)


def _is_toy(name: Any) -> bool:
    """Whether a given backbone name is the bundled toy model (no name given: not the toy)."""
    return isinstance(name, str) and name == TOY_NAME


def _weights_tag(values: dict[str, Any], tag: str, checkpoint: str, toy: bool) -> Any:
    """The pretrained tag: explicit ('none' = random weights), else 'openai' unless a local
    checkpoint or the toy model supplies the weights."""
    if tag in values:
        value = values[tag]
        if not isinstance(value, str):
            return value  # refused by the field's type
        from autolabel.models.clip import NO_WEIGHTS

        return None if value.lower() in NO_WEIGHTS else value
    if values.get(checkpoint) or toy:
        return None
    return "openai"


# ----------------------------------------------------------------------- the converter

_TYPE_NAMES = {
    "float_type": "a number",
    "int_type": "a whole number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
}


def _location(loc: tuple[str | int, ...]) -> str:
    out = "settings"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (a key)"
        else:
            out += f".{part}"
    return out


def _reason(error: Mapping[str, Any]) -> str:
    """A pydantic error as a short reason with the offending value."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]} (got {got!r})"
    if kind == "extra_forbidden":
        return "unknown setting"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]} (got {got!r})"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']} (got {got!r})"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx["error"])
    return f"{error['msg']} (got {got!r})"


def error_lines(exc: ValidationError) -> list[str]:
    """'settings.key: reason' (or the reason alone, for the whole mapping) per error."""
    out = []
    for error in exc.errors(include_url=False):
        reason = _reason(error)
        out.append(f"{_location(error['loc'])}: {reason}" if error["loc"] else reason)
    return out


def settings_error(method: str, exc: ValidationError, known: Iterable[str] = ()) -> UsageError:
    """One UsageError for all of a method's bad settings, one line per setting."""
    lines = [f"method {method}: {line}" for line in error_lines(exc)]
    if known and any(e["type"] == "extra_forbidden" for e in exc.errors()):
        lines.append(f"method {method}: known settings: {', '.join(sorted(known))}")
    return UsageError("\n".join(lines))


# ------------------------------------------------------------------------ the base model


class MethodSettings(BaseModel):
    """A method's validated settings (frozen); unknown keys and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    METHOD: ClassVar[str] = ""
    # Model keys the runner passes to every method (the CLI's model options) that this method
    # has no use for: dropped before validation.
    IGNORED: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> Self:
        """Validate recipe/CLI settings; every problem is one UsageError naming the setting."""
        if not isinstance(settings, Mapping):
            raise UsageError(f"method {cls.METHOD}: settings must be a mapping, not {settings!r}")
        values = {k: v for k, v in settings.items() if k not in cls.IGNORED}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise settings_error(cls.METHOD, exc, cls.model_fields) from None

    @classmethod
    def coerce(cls, settings: Mapping[str, Any] | MethodSettings) -> Self:
        """Already validated settings of this method as they are; a mapping through from_dict."""
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, MethodSettings):
            raise TypeError(f"{type(settings).__name__} given for method {cls.METHOD}")
        return cls.from_dict(settings)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data for run.json and recipes."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------- fast

# The runner's model keys that only CaR uses: its classifier g's backbone, and parity.
CAR_ONLY_KEYS = frozenset(
    {"parity", "classifier_model", "classifier_pretrained", "classifier_checkpoint"}
)


class DenseSettings(MethodSettings):
    """Settings of the fast method; defaults follow the NACLIP evaluation harness (NACLIP's
    configs/ and naclip.py)."""

    METHOD: ClassVar[str] = "fast"
    # One backbone (model, pretrained, checkpoint): CaR's classifier and parity do not apply.
    IGNORED: ClassVar[frozenset[str]] = CAR_ONLY_KEYS

    model: Annotated[str, _clip_name("--model")] = "ViT-B-16"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    templates: Templates = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    logit_scale: float = Field(40.0, gt=0)  # NACLIP's default
    # harness Resize(scale=(2048, 336)); None keeps the input size
    short_side: int | None = Field(336, ge=1)
    window: int | None = Field(None, ge=1)  # sliding-window crop; None = the model's input size
    stride: int | None = Field(None, ge=1)  # None = half the window
    prob_threshold: Fraction = 0.0  # pixels whose best class probability is below go to background
    window_batch: int = Field(16, ge=1)  # crops per forward pass
    # Dense CRF (CLIP-ES kernels, as car's) on the class probabilities; NACLIP has none
    # (--refine crf turns it on).
    crf: bool = False

    @model_validator(mode="before")
    @classmethod
    def _toy_input_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and _is_toy(data.get("model")) and "short_side" not in data:
            # The toy model reads toy scenes at its own 128 px input size; the real-photo default
            # (short side to 336 px) cut its mIoU on 24 toy scenes from 0.86 to 0.33.
            return {**data, "short_side": None}
        return data


# ----------------------------------------------------------------------------------- car

CamText = Literal["official", "template", "raw"]
CrfImage = Literal["rgb", "official"]
Engine = Literal["fast", "reference"]


class CaRSettings(MethodSettings):
    """CaR settings; defaults are the general-purpose recipe (recipes/car.yaml)."""

    METHOD: ClassVar[str] = "car"
    IGNORED: ClassVar[frozenset[str]] = frozenset()  # f's and g's backbones, and parity: all used

    model: Annotated[str, _clip_name("--model")] = "ViT-B-16"  # f, proposals (paper: ViT-B/16)
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    # g, the mask classifier (paper: ViT-L/14)
    classifier_model: Annotated[str, _clip_name("--classifier-model")] = "ViT-L-14"
    classifier_pretrained: str | None = "openai"
    classifier_checkpoint: str | None = None
    parity: bool = False  # reproduce the CaR code's quirks (see _backbones_and_parity)
    mask_threshold: Fraction = 0.4  # η: proposal binarisation for the visual prompt
    confidence_threshold: Fraction = 0.6  # θ: a query stays alive if P_ii > θ
    clipes_threshold: Fraction = 0.4  # λ: CLIP-ES box threshold (fraction of the CAM max)
    # CLIP-ES's class-aware attention-affinity refinement of the Grad-CAMs (paper Table 2); a
    # model whose attention is no affinity (the toy model) can use the Grad-CAMs as they are.
    refine_cams: bool = True
    # The official classifier skips its last block (θ is calibrated to that); a model whose
    # penultimate features are not aligned with text can use every block.
    classifier_skip_last: bool = True
    visual_prompts: PromptKinds = Field(default_factory=lambda: ["circle", "blur"])
    templates: Templates = Field(default_factory=lambda: list(SEMANTIC_TEMPLATES))
    cam_template: Template = CAM_TEMPLATE
    # Which string f's Grad-CAM targets: "official" = the raw query at step 1 and the templated
    # one from step 2 on (the official code's quirk, kept: on the toy world the consistent
    # variants were neither better nor worse); "template"/"raw" = the same string every step.
    cam_text: CamText = "official"
    crf: bool = True  # the dense CRF over the last proposals (paper §3.3); --refine none/sam: off
    crf_image: CrfImage = "rgb"  # "official": the wrapped mean-subtracted BGR image (parity quirk)
    bg_factor: float = Field(1.0, ge=0)  # background unary = (1 - max proposal) ** bg_factor
    # Pascal-Context-style two passes: these classes are segmented in a second pass whose
    # background queries are the other classes, with their own prompts (CaR paper App. E;
    # CaR code: evaluate.py `eval_semantic`).
    stuff_classes: list[str] = Field(default_factory=list)
    stuff_visual_prompts: PromptKinds = Field(default_factory=lambda: ["blur", "gray"])
    stuff_bg_factor: float = Field(1.0, ge=0)
    queries: dict[str, str] = Field(default_factory=dict)  # class name -> query string
    # bound on f's input side (the affinity costs n^3); parity lifts it
    cam_max_side: int | None = Field(1024, ge=32)
    engine: Engine = "fast"  # "reference": the official cost structure, same outputs

    @model_validator(mode="before")
    @classmethod
    def _backbones_and_parity(cls, data: Any) -> Any:
        """Weights tags, the toy model in both roles, and the quirks parity forces. A None value
        means "not given" (the default applies)."""
        if not isinstance(data, dict):
            return data
        values = {k: v for k, v in data.items() if v is not None}
        toy = _is_toy(values.get("model"))
        values["pretrained"] = _weights_tag(values, "pretrained", "checkpoint", toy)
        if toy:  # the toy world has one model; it plays both roles unless told otherwise
            values.setdefault("classifier_model", values["model"])
        classifier_toy = _is_toy(values.get("classifier_model"))
        values["classifier_pretrained"] = _weights_tag(
            values, "classifier_pretrained", "classifier_checkpoint", classifier_toy
        )
        if values.get("parity") is True:
            values.update(
                cam_text="official", crf_image="official", cam_max_side=None,
                classifier_skip_last=True, refine_cams=True,
            )  # fmt: skip
        return values


# ----------------------------------------------------------------------------------- pnp

# The PnP-OVSS updated code's dense-CRF constants (PnP_OVSS_0514_updated_segmentation.py):
# Gaussian sxy 3 / compat 7, bilateral sxy 50, srgb 5, compat 10, 10 mean-field iterations.
PNP_CRF = CRFParams(
    iterations=10,
    gaussian_sxy=3.0,
    gaussian_compat=7.0,
    bilateral_sxy=50.0,
    bilateral_srgb=5.0,
    bilateral_compat=10.0,
)
_CRF_RANGES = {
    "iterations": Field(ge=0),
    "gaussian_sxy": Field(gt=0),
    "bilateral_sxy": Field(gt=0),
    "bilateral_srgb": Field(gt=0),
}
# CRFParams' fields with their types (and ranges), strictly: a recipe's `crf:` mapping.
_CrfMapping = create_model(
    "CrfMapping",
    __config__=ConfigDict(extra="forbid", strict=True),
    **{
        name: (Annotated[kind, _CRF_RANGES.get(name, Field())], ...)
        for name, kind in get_type_hints(CRFParams).items()
    },
)


def _crf_value(value: Any) -> Any:
    """crf: true (the updated code's constants), false/null (no CRF) or a mapping of CRFParams
    fields over those constants."""
    if value is True:
        return PNP_CRF
    if value is False or value is None:
        return None
    if isinstance(value, CRFParams):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"must be true, false or a mapping of CRF params (got {value!r})")
    known = [f.name for f in fields(CRFParams)]
    unknown = sorted(set(value) - set(known), key=str)
    if unknown:
        raise ValueError(
            f"unknown crf key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}"
        )
    try:
        checked = _CrfMapping.model_validate({**asdict(PNP_CRF), **value})
    except ValidationError as exc:
        reasons = "; ".join(line.replace("settings.", "", 1) for line in error_lines(exc))
        raise ValueError(reasons) from None
    return CRFParams(**checked.model_dump())


def _default_blip() -> str:
    from autolabel.models.blip import DEFAULT_BLIP

    return DEFAULT_BLIP


class PnPSettings(MethodSettings):
    """Settings of the pnp method; each default cites where it comes from."""

    METHOD: ClassVar[str] = "pnp"
    # Keys the runner may pass to every method; pnp has no use for them. --pretrained and
    # --checkpoint are refused unless empty: pnp's --model is a Hugging Face id or folder.
    IGNORED: ClassVar[frozenset[str]] = CAR_ONLY_KEYS

    model: str = Field(default_factory=_default_blip)  # DEFAULT_BLIP (autolabel.models.blip)
    resolution: int = Field(336, ge=1)  # updated code's image_size (Run_seg.sh); CVPR-era: 768
    layer: int = Field(7, ge=0)  # --max_att_block_num 8, 0-based 7: the 8th of 12 layers
    head: int | None = Field(9, ge=0)  # --prune_att_head 9, 0-based; None = mean of heads
    threshold: Fraction = 0.15  # Run_seg*.sh --threshold
    blur_sigma: float = Field(0.05, ge=0)  # sigma = 0.05 * max(H, W) px (`blurring`); 0: no blur
    dropout_passes: int = Field(4, ge=1)  # updated code: --drop_iter 4; CVPR-era: 5
    # fixed: dropout_patches per pass (updated code); halving: N/2^(t+1) (CVPR-era *_halving.sh)
    dropout_schedule: Literal["fixed", "halving"] = "fixed"
    dropout_patches: int = Field(10, ge=0)  # updated code's save_len = 10
    # mean: 0 after normalisation (updated); black: 0 before (CVPR-era)
    drop_fill: Literal["mean", "black"] = "mean"
    normalize_passes: bool = False  # the CVPR-era code min-max normalised each pass's maps
    first_pass_weight: float = Field(2.0, ge=0)  # both code versions add pass 0 twice
    prompt_prefix: str = "A picture of "  # the authors' prompt prefix (both code versions)
    join_words: bool = True  # "potted plant" -> "pottedplant", as the authors' class lists
    enc_token: bool = True  # BLIP: [ENC] replaces [CLS] as in LAVIS blip_image_text_matching.py
    # clip: CLIP presence filter; all: every class in the prompt
    class_filter: Literal["clip", "all"] = "clip"
    presence_threshold: Fraction = 0.1  # CLIP probability a class needs to enter the prompt
    clip_model: Annotated[str, _clip_name("settings.clip_model")] = "ViT-B-16"
    clip_pretrained: str | None = "openai"
    clip_checkpoint: str | None = None
    softmax: bool = True  # updated code: softmax over channels before the CRF unary
    # The updated code's ADE20K / Context / COCO-Stuff scripts add the background channel only
    # when fewer than 3 classes are in the prompt (3 here); its VOC / COCO scripts always do (None).
    background_below_classes: int | None = Field(None, ge=1)
    crf: CRFParams | None = PNP_CRF  # None: no CRF

    @model_validator(mode="before")
    @classmethod
    def _no_clip_weights(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in ("pretrained", "checkpoint"):
            if data.get(key) is not None:
                raise ValueError(
                    f"--{key} does not apply; pass a Hugging Face model id or a folder written "
                    "by save_pretrained with --model"
                )
        return {k: v for k, v in data.items() if k not in ("pretrained", "checkpoint")}

    @field_validator("model")
    @classmethod
    def _itm_model(cls, value: str) -> str:
        if _is_toy(value):
            raise ValueError(
                "the toy model is a CLIP; pnp needs a BLIP or BridgeTower ITM model (on toy "
                "scenes: --recipe toy-pnp, which keeps the toy CLIP as presence filter)"
            )
        return value

    @field_validator("crf", mode="before")
    @classmethod
    def _crf(cls, value: Any) -> Any:
        return _crf_value(value)
