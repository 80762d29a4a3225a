"""Backends: one small interface, three engines.

A backend turns a view (HxWx3 uint8, 256 px glance or 128 px zoom) into pooled cell features with
``encode`` (the runtime projects them to visual tokens and its diagnosis reads them) and runs the
reasoner through a :class:`Session` whose ``step`` appends input embeddings and returns the logits of
the last position. The decoding loop (qds_lite.runtime) is the same for all.

``auto`` tries onnx, then gguf, then numpy, and says so on stderr when it falls back; a backend named
explicitly never falls back.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ..errors import BackendUnavailable, QdsError
from ..model_store import ModelFiles

BACKENDS = ("onnx", "gguf", "numpy")


class Session(Protocol):
    def step(self, embeddings: np.ndarray) -> np.ndarray:
        """Append (n, d_model) input embeddings; return the (vocab,) logits of the last position."""


class Backend(Protocol):
    name: str

    def encode(self, view: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 view -> (cells, feat_dim) float32 pooled features (kernels.model.trunk_features)."""

    def start(self) -> Session:
        """A fresh reasoner sequence."""


def create(name: str, files: ModelFiles, weights: Mapping[str, np.ndarray], threads: int | None) -> Backend:
    """Instantiate one backend by name (raises BackendUnavailable if its engine is missing)."""
    if name == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend(files, weights)
    if name == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(files, threads)
    if name == "gguf":
        from .gguf_backend import GGUFBackend

        return GGUFBackend(files, weights, threads)
    raise QdsError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")


def select(name: str, files: ModelFiles, weights: Mapping[str, np.ndarray], threads: int | None) -> Backend:
    if name != "auto":
        return create(name, files, weights, threads)
    reasons = []
    for candidate in BACKENDS:
        try:
            backend = create(candidate, files, weights, threads)
        except BackendUnavailable as e:
            reasons.append(f"{candidate}: {e.message}")
            continue
        if reasons:
            print(f"qds: using the {candidate} backend ({'; '.join(reasons)})", file=sys.stderr)
        return backend
    raise BackendUnavailable("no backend available: " + "; ".join(reasons))  # numpy never fails


def probe() -> dict[str, str | None]:
    """Which engines are importable: backend name -> None if usable, else the reason it is not."""
    out: dict[str, str | None] = {"numpy": None}
    for name, module, extra in (("onnx", "onnxruntime", "onnxruntime"), ("gguf", "llama_cpp", "qds-lite[gguf]")):
        try:
            __import__(module)
            out[name] = None
        except ImportError:
            out[name] = f"{module} is not installed (pip install '{extra}')"
    return out
