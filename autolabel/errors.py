"""Exceptions that the CLI turns into clear messages instead of tracebacks."""


class AutolabelError(Exception):
    """Base class: a problem the user can act on; the message says what and where."""


class UsageError(AutolabelError):
    """Bad options, vocabulary, recipe or output folder (CLI exit code 2)."""


class ModelLoadError(AutolabelError):
    """Weights or model configs could not be loaded (offline, bad checkpoint, unknown name)."""
