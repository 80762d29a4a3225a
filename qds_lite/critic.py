"""The public Critic: load a model once, score images one by one or as a stream."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from . import backends
from . import protocol as P
from .errors import QdsError
from .io import LoadedImage, Source, load_image
from .model_store import ModelFiles, load_weights, resolve
from .result import Result, build_result
from .runtime import Reasoner


class Critic:
    """A loaded critic on one backend. Thread-compatible, not thread-safe: use one per thread."""

    def __init__(self, files: ModelFiles, backend: backends.Backend, weights: Mapping[str, np.ndarray],
                 max_zooms: int = P.DEFAULT_ZOOMS) -> None:
        self.files = files
        self.backend = backend
        self.max_zooms = max_zooms
        self._reasoner = Reasoner(backend, weights)
        self.model = {"name": files.name, "sha256": files.sha256}

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, **options) -> Critic:
        """Same as :func:`qds_lite.load` (``Critic.load()`` reads well in apps)."""
        return load(model, **options)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def score(self, image: Source | LoadedImage, *, zooms: int | None = None) -> Result:
        """Score a path, bytes, PIL image, HxWx3 uint8 array or an already loaded image."""
        t0 = time.perf_counter()
        loaded = image if isinstance(image, LoadedImage) else load_image(image)
        t1 = time.perf_counter()
        budget = self.max_zooms if zooms is None else zooms
        if not 0 <= budget <= P.N_CELLS:
            raise QdsError(f"zoom budget must be between 0 and {P.N_CELLS}, not {budget}")
        traj = self._reasoner.run(loaded, budget)
        timings = {"decode": (t1 - t0) * 1e3, "model": traj.model_ms}
        return build_result(loaded.name, traj, loaded.original_size, self.model, self.backend.name, timings)

    def score_many(self, images: Iterable[Source], *, zooms: int | None = None) -> Iterator[Result | QdsError]:
        """Stream results in input order; a bad input yields its QdsError instead of stopping the stream."""
        for image in images:
            try:
                yield self.score(image, zooms=zooms)
            except QdsError as e:
                yield e


def load(model: str | os.PathLike | None = None, *, backend: str = "auto", threads: int | None = None,
         zooms: int = P.DEFAULT_ZOOMS) -> Critic:
    """Load a critic: a bundled name (default ``qds-small-v1``) or a folder with a manifest.json.

    ``backend`` is ``auto`` (onnx, then gguf, then numpy, with a notice on stderr when it falls back)
    or one of ``onnx``, ``gguf``, ``numpy`` (never falls back)."""
    files = resolve(model)
    weights = load_weights(files)
    return Critic(files, backends.select(backend, files, weights, threads), weights, zooms)
