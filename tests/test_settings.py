"""Method settings: one validator per method, one registry entry per method."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from autolabel.errors import UsageError
from autolabel.methods.base import (
    METHODS,
    MethodSpec,
    build_segmenter,
    method_names,
    search_space,
    validate_settings,
)
from autolabel.methods.settings import (
    PNP_CRF,
    CaRSettings,
    DenseSettings,
    MethodSettings,
    PnPSettings,
)
from autolabel.models.zeroshot import DEFAULT_TEMPLATES, SEMANTIC_TEMPLATES


def refused(method: str, settings: dict, *named: str) -> str:
    """The UsageError message for bad settings; each `named` line must be in it."""
    with pytest.raises(UsageError) as info:
        validate_settings(method, settings)
    message = str(info.value)
    for line in named:
        assert re.search(rf"^method {method}: {re.escape(line)}", message, re.M), message
    return message


def test_fast_refuses_what_it_used_to_accept() -> None:
    message = refused(
        "fast",
        {"window_batch": 0, "logit_scale": "forty", "stride": -3},
        "settings.window_batch: must be at least 1 (got 0)",
        "settings.logit_scale: expected a number (got 'forty')",
        "settings.stride: must be at least 1 (got -3)",
    )
    assert len(message.splitlines()) == 3  # one error, one line per bad setting
    refused("fast", {"window_batch": True}, "settings.window_batch: expected a whole number")
    refused("fast", {"logit_scale": 0}, "settings.logit_scale: must be more than 0")
    refused("fast", {"prob_threshold": 1.5}, "settings.prob_threshold: must be at most 1")
    refused("fast", {"templates": ["a {} of {}"]}, "settings.templates[0]: a template must")
    refused("fast", {"templates": ["{} {x}"]}, "settings.templates[0]: a template is a format")
    refused("fast", {"templates": []}, "settings.templates: must not be empty")
    refused("fast", {"short_side": "336"}, "settings.short_side: expected a whole number")
    message = refused("fast", {"windw": 224}, "settings.windw: unknown setting")
    assert "known settings: checkpoint, crf, logit_scale, model" in message


def test_car_and_pnp_errors_name_the_setting() -> None:
    refused("car", {"mask_threshold": 1.5}, "settings.mask_threshold: must be at most 1.0")
    refused("car", {"theta": 0.5}, "settings.theta: unknown setting")
    refused("car", {"stuff_visual_prompts": []}, "settings.stuff_visual_prompts: must not be")
    refused("car", {"engine": "turbo"}, "settings.engine: must be one of 'fast' or 'reference'")
    refused("car", {"parity": 1}, "settings.parity: expected true or false (got 1)")
    refused("car", {"queries": {"dog": 3}}, "settings.queries.dog: expected a string")
    refused("pnp", {"head": "x"}, "settings.head: expected a whole number (got 'x')")
    refused("pnp", {"heads": 3}, "settings.heads: unknown setting")
    refused("pnp", {"threshold": True}, "settings.threshold: expected a number (got True)")
    refused("pnp", {"crf": {"sxy": 3}}, "settings.crf: unknown crf key(s) sxy")
    refused("pnp", {"crf": {"iterations": "ten"}}, "settings.crf: iterations: expected a whole")
    refused("pnp", {"crf": "yes"}, "settings.crf: must be true, false or a mapping")
    refused("pnp", {"checkpoint": "/x.pt"}, "--checkpoint does not apply")
    with pytest.raises(UsageError, match="unknown method 'fastest'; choose one of: fast, car, pnp"):
        validate_settings("fastest", {})


def test_defaults_and_bundled_recipes_pass() -> None:
    from autolabel.config import list_recipes, load_recipe

    assert validate_settings("fast", {}) == DenseSettings()
    assert DenseSettings().templates == list(DEFAULT_TEMPLATES)
    assert validate_settings("car", {}) == CaRSettings()
    assert CaRSettings().templates == list(SEMANTIC_TEMPLATES)
    pnp = validate_settings("pnp", {})
    assert pnp == PnPSettings() and pnp.crf == PNP_CRF
    for name in list_recipes():
        recipe = load_recipe(name)
        settings = {**recipe.settings, "model": recipe.model, "pretrained": recipe.pretrained}
        validated = validate_settings(recipe.method, settings)
        assert type(validated) is METHODS[recipe.method].settings_type()
        json.dumps(validated.to_json())  # JSON-ready for run.json


def test_method_rules() -> None:
    # fast: the toy model keeps its input size; CaR's keys and parity are ignored.
    assert validate_settings("fast", {"model": "toy"}).short_side is None
    assert validate_settings("fast", {"model": "toy", "short_side": 256}).short_side == 256
    ignored = {"parity": True, "classifier_model": "x", "classifier_checkpoint": "g.pt"}
    assert validate_settings("fast", ignored) == DenseSettings()
    # car: the toy model plays both roles; parity forces the quirks; 'none' = random weights.
    toy = validate_settings("car", {"model": "toy"})
    assert (toy.classifier_model, toy.pretrained, toy.classifier_pretrained) == ("toy", None, None)
    parity = validate_settings("car", {"parity": True, "cam_text": "raw", "refine_cams": False})
    assert (parity.cam_text, parity.crf_image) == ("official", "official")
    assert parity.cam_max_side is None and parity.refine_cams and parity.classifier_skip_last
    local = validate_settings("car", {"checkpoint": "f.pt", "classifier_pretrained": "none"})
    assert local.pretrained is None and local.classifier_pretrained is None
    # pnp: CLIP-only keys are ignored, empty --pretrained/--checkpoint too; crf true/false/map.
    assert validate_settings("pnp", {**ignored, "pretrained": None}) == PnPSettings()
    assert validate_settings("pnp", {"crf": True}).crf == PNP_CRF
    assert validate_settings("pnp", {"crf": False}).crf is None
    crf = validate_settings("pnp", {"crf": {"iterations": 3, "gaussian_sxy": 2}}).crf
    assert (crf.iterations, crf.gaussian_sxy, crf.bilateral_sxy) == (3, 2.0, 50.0)
    assert validate_settings("pnp", {"crf": {"iterations": 3}}).to_json()["crf"]["iterations"] == 3


def test_settings_are_frozen_and_json_ready() -> None:
    settings = validate_settings("car", {"queries": {"person": "person,people"}})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        settings.mask_threshold = 0.9  # type: ignore[misc]
    data = settings.to_json()
    assert data["visual_prompts"] == ["circle", "blur"] and data["queries"] == {
        "person": "person,people"
    }
    assert CaRSettings.from_dict(data) == settings  # run.json settings validate again


def test_backbone_names_go_through_check_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from autolabel.models import clip

    seen: list[tuple[str, str]] = []

    def check(name: str, option: str = "--model") -> None:
        seen.append((name, option))
        if name == "bad":
            raise UsageError(f"{option} {name}: not a CLIP autolabel can run")

    monkeypatch.setattr(clip, "check_model_name", check)
    validate_settings("fast", {"model": "ViT-B-32"})
    validate_settings("car", {"model": "ViT-B-32", "classifier_model": "ViT-L-14"})
    validate_settings("pnp", {"clip_model": "ViT-B-32"})
    assert seen == [
        ("ViT-B-32", "--model"),
        ("ViT-B-32", "--model"),
        ("ViT-L-14", "--classifier-model"),
        ("ViT-B-32", "settings.clip_model"),
    ]
    refused("car", {"classifier_model": "bad"}, "settings.classifier_model: --classifier-model bad")
    refused("pnp", {"clip_model": "bad"}, "settings.clip_model: bad: not a CLIP")


def test_convolutional_clips_are_refused() -> None:
    # Needs autolabel.models.clip.check_model_name's real check (plain ViTs only).
    refused("fast", {"model": "RN50"}, "settings.model: --model RN50: ")
    refused("car", {"model": "RN50"}, "settings.model: ")
    refused("car", {"classifier_model": "RN50"}, "settings.classifier_model: --classifier-model")
    refused("pnp", {"clip_model": "RN50"}, "settings.clip_model: RN50: ")


def test_registry_lists_every_method_with_a_description() -> None:
    assert method_names() == ["fast", "car", "pnp"] == list(METHODS)
    for name, spec in METHODS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name and spec.description
        assert issubclass(spec.settings_type(), MethodSettings)
        assert name == spec.settings_type().METHOD
    with pytest.raises(UsageError, match="method fast cannot be tuned; tunable methods: car, pnp"):
        search_space("fast", {}, "cpu")
    assert set(search_space("car", {}, "cpu")) == {
        "mask_threshold", "confidence_threshold", "clipes_threshold", "visual_prompts"
    }  # fmt: skip
    with pytest.raises(TypeError):
        build_segmenter("car", DenseSettings(), "cpu")


def test_registry_and_validation_load_no_torch() -> None:
    # A fresh interpreter: this test process has imported torch already.
    script = (
        "import sys\n"
        "import autolabel.methods.base as base\n"
        "from autolabel.errors import UsageError\n"
        "early = [m for m in ('pydantic', 'numpy', 'torch') if m in sys.modules]\n"
        "assert not early, early\n"
        "base.validate_settings('fast', {'window_batch': 4, 'templates': ['{}']})\n"
        "base.validate_settings('car', {'mask_threshold': 0.5, 'parity': True})\n"
        "base.validate_settings('pnp', {'model': 'org/blip', 'head': None, 'crf': False})\n"
        "bad = {'fast': {'stride': 0}, 'car': {'x': 1}, 'pnp': {'model': 'm', 'head': 'x'}}\n"
        "for method, settings in bad.items():\n"
        "    try:\n"
        "        base.validate_settings(method, settings)\n"
        "    except UsageError:\n"
        "        pass\n"
        "sys.exit('torch imported' if 'torch' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
