"""qds-lite: an offline photo-quality critic that thinks with images.

    >>> import qds_lite
    >>> critic = qds_lite.load()            # bundled critic, best available backend
    >>> r = critic.score("photo.jpg")
    >>> r.score, r.level, r.findings

Importing this package never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backends import BACKENDS
from .backends import probe as _probe
from .critic import Critic, load
from .errors import BackendUnavailable, ImageLoadError, ModelError, QdsError
from .model_store import available_models
from .result import Finding, Result


def available_backends() -> list[str]:
    """Backends whose engines are importable here, in the order ``auto`` tries them."""
    usable = _probe()
    return [b for b in BACKENDS if usable[b] is None]


__all__ = [
    "BackendUnavailable", "Critic", "Finding", "ImageLoadError", "ModelError", "QdsError", "Result",
    "__version__", "available_backends", "available_models", "load",
]
