"""Provenance: the package versions a run records, and the model_version stamped on predictions.

Both are derived from data every labelling path has: `Labeler.identity()` and the loaded
models' description (`Labeler.describe()["models"]`), or the same fields read back from a
run folder's run.json (`RunFolder.identity()`, `RunFolder.models`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from autolabel import __version__

VERSIONED_PACKAGES = ("torch", "open_clip_torch", "numpy", "pillow", "pycocotools", "transformers")
PREFIX = "autolabel"
# The identity fields that shape the masks; the recipe's name does not (its settings do).
VERSIONED_IDENTITY = ("method", "settings", "vocabulary", "max_side", "min_area")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the outputs, for run.json."""
    versions = {"autolabel": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_version(identity: Mapping[str, Any], models: Mapping[str, Any]) -> str:
    """`autolabel-<method>-<model>-<hash>`: the hash covers everything that shapes the masks.

    identity: `Labeler.identity()` (or `RunFolder.identity()`): method, settings, vocabulary
    fingerprint, max_side and min_area count; models: the loaded models' description. A run with
    other settings, weights or vocabulary gets another version, so Label Studio keeps both
    prediction sets; the same recipe pushed by the CLI or served by the backend gets the same
    one, so Label Studio does not ask the backend again for tasks a push already pre-annotated.
    """
    fields = {key: identity.get(key) for key in VERSIONED_IDENTITY}
    settings = fields["settings"] = fields["settings"] or {}
    blob = json.dumps({**fields, "models": models}, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()[:8]
    model = settings.get("model") or models.get("backbone", {}).get("name") or "default"
    # LS joins a task's versions with commas in its task list; keep the name to a safe alphabet.
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{fields['method']}-{model}")
    return f"{PREFIX}-{name}-{digest}"
