"""A real Label Studio server on loopback for the integration tests (a pytest plugin).

The server lives in its own virtualenv, made by .ci/setup_labelstudio.sh and found through
AUTOLABEL_LS_VENV (default $HOME/.cache/autolabel-ci/lsvenv). Without it the tests skip, except
under CI=true, where they fail: CI must not pass without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

VENV_ENV = "AUTOLABEL_LS_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "autolabel-ci" / "lsvenv"
USER = "autolabel-tests@example.com"
PASSWORD = "autolabel-tests-password"
TOKEN = "autolabeltoken0123456789"
# With the migrated template a start takes about 10 s; without it, migrations take minutes.
START_TIMEOUT_S = 90.0
COLD_START_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 20.0
# Variables LS reads as settings (it falls back from LABEL_STUDIO_X to plain X): never inherit.
CLEARED_ENV = ("HOST", "PORT", "USERNAME", "PASSWORD", "DJANGO_DB", "DATABASE_NAME")


@dataclass
class LabelStudioServer:
    """A running server: its address, the API token, and its LOCAL_FILES_DOCUMENT_ROOT."""

    url: str
    api_key: str
    document_root: Path
    log: Path


def _venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Label Studio integration tests cannot run under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode}:\n{_tail(log)}")
        if "Trying to start at" in log.read_text(errors="replace"):
            # LS moves to the next port when ours was taken: not the server we would talk to.
            raise RuntimeError(f"port of {url} was taken; label-studio moved:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"label-studio not up after {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """Start Label Studio (sqlite, a temp data dir, a token user) and stop it at the end.

    Its LOCAL_FILES_DOCUMENT_ROOT is pytest's base temp folder, so every test's tmp_path can
    hold images that LS serves through a Local Storage.
    """
    venv = _venv()
    exe = venv / "bin" / "label-studio"
    if not exe.is_file():
        _unavailable(f"no Label Studio server at {exe}; run .ci/setup_labelstudio.sh")
    data_dir = tmp_path_factory.mktemp("label-studio-data")
    template = venv / "autolabel-template"
    warm = (template / "label_studio.sqlite3").is_file()
    if warm:
        shutil.copytree(template, data_dir, dirs_exist_ok=True)
    document_root = tmp_path_factory.getbasetemp().resolve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(
        LABEL_STUDIO_USERNAME=USER,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LATEST_VERSION_CHECK="false",
        # A backend on loopback: LS refuses both the backend URL and the /webhook it registers
        # for it unless these two guards are off.
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LOG_LEVEL="WARNING",
    )
    log = data_dir / "server.log"
    command = [
        str(exe), "start", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
        "--port", str(port), "--no-browser", "--enable-legacy-api-token",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_up(proc, url, log, START_TIMEOUT_S if warm else COLD_START_TIMEOUT_S)
        whoami = httpx.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {TOKEN}"}
        )
        assert whoami.status_code == 200, f"token refused: {whoami.text[:300]}"
        yield LabelStudioServer(url, TOKEN, document_root, log)
    except RuntimeError as exc:
        _stop(proc)
        _unavailable(str(exc))
    finally:
        _stop(proc)
