"""Every error autolabel raises, under one base; the CLI turns them into clear messages."""

from __future__ import annotations


class AutolabelError(Exception):
    """Base class: a problem the user can act on; the message says what and where."""


class UsageError(AutolabelError):
    """Bad options, vocabulary, recipe, settings or output folder (CLI exit code 2)."""


class ModelLoadError(AutolabelError):
    """Weights or model configs could not be loaded (offline, bad checkpoint, unknown name)."""


class MediaError(AutolabelError):
    """An image a platform asked about could not be fetched (URL, size, permissions)."""


class ImageError(AutolabelError):
    """One image could not be labelled; a run records it and goes on with the others.

    stage: where it failed: "load" (unreadable, corrupt, too large), "segment" (the method
    raised), "post" (instances could not be made) or "write" (outputs could not be written).
    """

    STAGES = ("load", "segment", "post", "write")

    def __init__(self, file: str, reason: str, stage: str = "load") -> None:
        if stage not in self.STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
        self.stage = stage
