"""The model_version string stamped on every prediction autolabel sends to Label Studio."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

PREFIX = "autolabel"


def model_version(
    method: str,
    settings: dict[str, Any],
    models: dict[str, Any],
    vocabulary: str,
    max_side: int | None,
    min_area: int | None,
) -> str:
    """`autolabel-<method>-<model>-<hash>`: the hash covers everything that shapes the masks.

    A run with other settings, weights or vocabulary gets another version, so LS keeps both
    prediction sets; the same recipe pushed by the CLI or served by the backend gets the same
    one, so LS does not ask the backend again for tasks a push already pre-annotated.
    `vocabulary` is Vocabulary.fingerprint().
    """
    identity = {
        "method": method,
        "settings": settings,
        "models": models,
        "vocabulary": vocabulary,
        "max_side": max_side,
        "min_area": min_area,
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()[:8]
    model = settings.get("model") or models.get("backbone", {}).get("name") or "default"
    # LS joins a task's versions with commas in its task list; keep the name to a safe alphabet.
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{method}-{model}")
    return f"{PREFIX}-{name}-{digest}"
