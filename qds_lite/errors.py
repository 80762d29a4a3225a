"""One error hierarchy: the library raises these, only the CLI prints them and picks exit codes."""

from __future__ import annotations


class QdsError(Exception):
    """Base class. ``str(err)`` is one line fit for stderr; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ImageLoadError(QdsError):
    """An input could not be read as an image: ``str(err)`` is "file: reason"; ``file`` is the name the loader
    knows it by (a path's base name, "<bytes>", "<array>"), so a caller that shows paths pairs its own path
    with ``reason``."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    def __reduce__(self):  # an app's worker processes hand it back pickled
        return type(self), (self.file, self.reason)


class BackendUnavailable(QdsError):
    """A backend's engine is not installed or cannot run here."""


class ModelError(QdsError):
    """A model is missing, fails its sha256 check, or does not match this runtime."""
