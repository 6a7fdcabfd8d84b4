"""autolabel: training-free open-vocabulary segmentation for dataset labelling."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autolabel")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
