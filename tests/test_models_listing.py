"""Which CLIP backbones autolabel accepts (check_model_name) and lists (`autolabel models`)."""

import json
from pathlib import Path

import open_clip
import pytest

from autolabel.cli import main
from autolabel.errors import UsageError
from autolabel.models.clip import check_model_name, supported_models

# A ResNet, a timm ConvNeXt, a timm EVA, and ViTs whose blocks or pooling autolabel does not run.
REFUSED = ("RN50", "convnext_base", "EVA02-B-16", "ViT-M-16-alt", "coca_ViT-B-32",
           "ViT-L-14-CLIPA")  # fmt: skip


@pytest.fixture(autouse=True)
def no_model_is_built(monkeypatch) -> None:
    """Checking or listing names reads configs only: building a model or fetching fails here."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built or weights were fetched")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", refuse)


@pytest.mark.parametrize("name", REFUSED)
def test_backbones_autolabel_cannot_run_are_refused(name: str) -> None:
    with pytest.raises(UsageError) as info:
        check_model_name(name, "--classifier-model")
    message = str(info.value)
    assert message.startswith(f"--classifier-model {name}: ") and "autolabel models" in message


@pytest.mark.parametrize("name", ["toy", "ViT-B-16", "ViT-L-14", "ViT-B-32-quickgelu"])
def test_plain_vits_and_the_toy_model_are_accepted(name: str) -> None:
    check_model_name(name)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(UsageError, match=r"^--model ViT-Q-99: unknown model; .*autolabel models"):
        check_model_name("ViT-Q-99")


def test_model_config_files_are_checked(tmp_path: Path) -> None:
    plain = tmp_path / "mine.json"
    plain.write_text(json.dumps(open_clip.get_model_config("ViT-B-16")))
    check_model_name(str(plain))
    resnet = tmp_path / "resnet.json"
    resnet.write_text(json.dumps(open_clip.get_model_config("RN50")))
    with pytest.raises(UsageError, match="a ResNet, not a ViT"):
        check_model_name(str(resnet))
    with pytest.raises(UsageError, match="no such model config file"):
        check_model_name(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match="not an open_clip model config"):
        check_model_name(str(broken))


def test_supported_models_are_exactly_the_accepted_ones() -> None:
    listed = dict(supported_models())
    assert "openai" in listed["ViT-B-16"] and "toy" not in listed
    assert not set(REFUSED) & set(listed)
    for name in listed:
        check_model_name(name)
    refused = set(open_clip.list_models()) - set(listed) - {"toy"}
    assert refused and all(_refused(name) for name in refused)


def _refused(name: str) -> bool:
    try:
        check_model_name(name)
    except UsageError:
        return True
    return False


def test_models_command_lists_only_runnable_backbones(capsys) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split("│")[1].strip() for line in lines if line.count("│") == 3}
    assert "ViT-B-16" in names and "RN50" not in names and "convnext_base" not in names
