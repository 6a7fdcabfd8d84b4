"""autolabel: training-free open-vocabulary segmentation for dataset labelling.

The public API: `Labeler` (label images, arrays and folders), `Instances` / `Instance` (one
image's result), `Vocabulary`, and the errors. They import lazily, so `import autolabel` (and the
CLI's `--help`) stays fast.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("autolabel")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

_EXPORTS = {
    "Labeler": "autolabel.api",
    "Instances": "autolabel.instances",
    "Instance": "autolabel.instances",
    "Vocabulary": "autolabel.vocab",
    "AutolabelError": "autolabel.errors",
    "UsageError": "autolabel.errors",
    "ModelLoadError": "autolabel.errors",
    "ImageError": "autolabel.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autolabel' has no attribute {name!r}")
