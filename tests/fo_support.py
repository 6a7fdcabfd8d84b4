"""FiftyOne test support: a private database, plugins folder and model zoo folder per session.

Test modules load it with `pytest_plugins = ["fo_support"]` (and never import it directly, so
pytest can register it as a plugin). Without FiftyOne or a working
mongod the tests skip, except under CI=true where they fail: CI must exercise them.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "integrations" / "fiftyone"


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where FiftyOne and mongod are installed on purpose."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"FiftyOne is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fiftyone_env() -> Iterator[dict[str, str]]:
    """Environment of a private FiftyOne: its own database folder, a plugins folder that holds
    this repository's plugin the way a user installs it (a link in the plugins dir), and its own
    model zoo folder, where registered zoo sources are copied.

    The folder is not under pytest's basetemp: a second pytest session of the same user deletes
    older basetemps when it starts, which would pull the live database out from under mongod.
    It stays in the system temp folder afterwards, because mongod only stops at interpreter exit.
    """
    base = Path(tempfile.mkdtemp(prefix="autolabel-fiftyone-"))
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "autolabel").symlink_to(PLUGIN_DIR, target_is_directory=True)
    env = {
        "FIFTYONE_DATABASE_DIR": str(base / "db"),
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_MODEL_ZOO_DIR": str(base / "zoo"),
        "FIFTYONE_PLUGINS_DIR": str(plugins),
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def fo(fiftyone_env: dict[str, str]) -> ModuleType:
    """The fiftyone module, connected to the session's private database (mongod started)."""
    try:
        import fiftyone
    except ImportError as exc:
        unavailable(f"fiftyone is not installed ({exc})")
    # FiftyOne reads its config at import; set it again in case it was imported earlier.
    config = fiftyone.config
    config.database_dir = fiftyone_env["FIFTYONE_DATABASE_DIR"]
    config.database_validation = False
    config.do_not_track = True
    config.plugins_dir = fiftyone_env["FIFTYONE_PLUGINS_DIR"]
    config.model_zoo_dir = fiftyone_env["FIFTYONE_MODEL_ZOO_DIR"]
    config.show_progress_bars = False
    try:
        fiftyone.list_datasets()
    except Exception as exc:  # missing or broken mongod surfaces as various errors
        unavailable(f"FiftyOne's database did not start ({type(exc).__name__}: {exc})")
    return fiftyone


@pytest.fixture
def dataset_name() -> str:
    """A fresh dataset name (datasets are non-persistent and die with the session's DB)."""
    return f"autolabel-test-{uuid.uuid4().hex[:10]}"
