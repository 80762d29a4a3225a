"""One error hierarchy: the library raises these, only the CLI prints them and picks exit codes."""

from __future__ import annotations


class QdsError(Exception):
    """Base class. ``str(err)`` is one line fit for stderr; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ImageLoadError(QdsError):
    """An input could not be read as an image (the message names the file and the reason)."""


class BackendUnavailable(QdsError):
    """A backend's engine is not installed or cannot run here."""


class ModelError(QdsError):
    """A model is missing, fails its sha256 check, or does not match this runtime."""
