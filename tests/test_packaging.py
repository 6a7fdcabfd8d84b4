"""The wheel built from the Label Studio image's build context ships the code and the recipes."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "integrations" / "label_studio" / "Dockerfile"


def _copy_docker_context(dest: Path) -> None:
    """Copy what the Dockerfile's COPY lines copy, symlinks as links, as `docker build` does."""
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0] != "COPY":
            continue
        *sources, target = parts[1:]
        for source in sources:
            path = ROOT / source
            into = dest / target / path.name if target.endswith("/") else dest / target
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(path, into, symlinks=True, ignore=ignore)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)


def _build_wheel(context: Path, dist: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(dist), str(context)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=context)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("autolabel-*.whl")
    return wheel


@pytest.mark.integration
def test_wheel_from_docker_context_ships_recipes(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _copy_docker_context(context)
    wheel = _build_wheel(context, tmp_path / "dist")

    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (ROOT / "recipes").iterdir() if p.is_file())
    assert "voc.yaml" in recipes
    assert not [n for n in recipes if f"autolabel/recipes/{n}" not in names]
    # pyproject.toml lists the packages: a new subpackage must be listed to be shipped.
    files = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "autolabel").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(files - names) == []

    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
           str(wheel)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    script = (
        "import autolabel\n"
        "from autolabel.config import load_recipe\n"
        "print(autolabel.__file__)\n"
        "print(load_recipe('voc').method)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    where, method = result.stdout.splitlines()
    assert Path(where).is_relative_to(target)
    assert method == yaml.safe_load((ROOT / "recipes" / "voc.yaml").read_text())["method"]
