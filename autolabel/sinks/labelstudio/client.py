"""Connecting to a Label Studio server, with its failures turned into clear messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from autolabel.errors import AutolabelError, UsageError
from autolabel.sinks.labelstudio.config import LabelTarget, find_target, parse_interface

# Imports of big chunks can take a while on a busy server.
TIMEOUT_S = 300.0


@contextlib.contextmanager
def api_errors(what: str, hints: dict[int, str] | None = None) -> Iterator[None]:
    """Translate SDK and network errors raised inside the block into AutolabelErrors.

    hints: HTTP status -> advice; such an answer becomes a UsageError with the advice.
    """
    try:
        yield
    except ApiError as exc:
        body = str(exc.body)[:300]
        if hints and exc.status_code in hints:
            raise UsageError(
                f"{what}: Label Studio answered HTTP {exc.status_code}: {body}; "
                f"{hints[exc.status_code]}"
            ) from exc
        if exc.status_code in (401, 403):
            raise UsageError(
                f"{what}: Label Studio refused the API key (HTTP {exc.status_code}); use the "
                "token from Account & Settings (a personal access token or a legacy token)"
            ) from exc
        if exc.status_code == 404:
            raise UsageError(f"{what}: not found (HTTP 404)") from exc
        raise AutolabelError(
            f"{what}: Label Studio answered HTTP {exc.status_code}: {body}"
        ) from exc
    except httpx.HTTPError as exc:
        raise UsageError(
            f"{what}: cannot reach Label Studio ({type(exc).__name__}: {exc})"
        ) from exc


def connect(url: str, api_key: str) -> LabelStudio:
    """A client for the server at url, after checking that it answers and accepts the key."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: give the server's address with http:// or https://")
    if not api_key:
        raise UsageError("--api-key is empty; pass it or set LABEL_STUDIO_API_KEY")
    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=TIMEOUT_S)
    with api_errors(f"Label Studio at {url}"):
        client.users.whoami()
    return client


@dataclass
class Project:
    """A project's id, title, labeling config and where brush masks go in it."""

    id: int
    title: str
    label_config: str
    target: LabelTarget

    @property
    def where(self) -> str:
        """How messages name this project."""
        return f"project {self.id} ({self.title!r})"


def get_project(client: LabelStudio, project_id: int) -> Project:
    """Fetch a project and locate its brush control; errors name the project."""
    with api_errors(f"project {project_id}"):
        raw = client.projects.get(id=project_id)
    where = f"project {project_id} ({raw.title!r})"
    target = find_target(parse_interface(raw.label_config or "", where), where)
    return Project(int(raw.id), str(raw.title or ""), str(raw.label_config), target)


def find_project_by_title(client: LabelStudio, title: str) -> int | None:
    """The id of the project with exactly this title; an error if several share it."""
    with api_errors(f"project list of {title!r}"):
        found = [p.id for p in client.projects.list(title=title) if p.title == title]
    if len(found) > 1:
        raise UsageError(
            f"--title {title!r}: {len(found)} projects have this title ({found}); use --project ID"
        )
    return found[0] if found else None


def list_tasks(client: LabelStudio, project_id: int, **fields: Any) -> Iterator[dict]:
    """Every task of a project as plain dicts (paged by the SDK)."""
    with api_errors(f"tasks of project {project_id}"):
        for task in client.tasks.list(project=project_id, **fields):
            yield task.model_dump(exclude_none=True)
