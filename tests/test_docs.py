"""The README and the repository stay honest: runnable quick start, no private citations, no
stray files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_NOTES = re.compile(
    r"car\.md|pnp_ovss\.md|ovss_landscape\.md|integrations\.md|shared/reference"
)


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_quick_start_commands_run_from_the_venv() -> None:
    """A fresh machine has no `autolabel` on PATH: the quick start must call .venv/bin/."""
    block = re.search(r"```bash\n(.*?)```", _section("30-second quick start"), re.S).group(1)
    commands = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert ".venv/bin/autolabel" in commands
    assert "autolabel" not in commands
    assert "1.5 GB" in _section("30-second quick start")


def test_no_citation_of_notes_that_are_not_in_the_repository() -> None:
    files = [ROOT / "README.md", *ROOT.glob("autolabel/**/*.py"), *ROOT.glob("recipes/*.yaml")]
    cited = [str(p.relative_to(ROOT)) for p in files if PRIVATE_NOTES.search(p.read_text("utf-8"))]
    assert cited == []


def test_no_stray_files_are_committed() -> None:
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    stray = [f for f in listed if re.search(r"\.(pid|log|tmp)$", f)]
    assert stray == []
