"""Label Studio: labeling configs, brush regions, push and pull (client side, label-studio-sdk)."""

from __future__ import annotations

from autolabel.errors import UsageError

try:
    import label_studio_sdk  # noqa: F401
except ImportError as exc:  # the SDK is an optional extra
    raise UsageError(
        "Label Studio support needs label-studio-sdk: pip install 'autolabel[labelstudio]'"
    ) from exc
