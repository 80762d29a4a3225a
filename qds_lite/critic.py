"""The public Critic: load a model once, score images one by one or as a stream."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from . import backends, blas
from . import protocol as P
from .diagnosis import Diagnosis
from .errors import QdsError
from .io import LoadedImage, Source, load_image
from .model_store import ModelFiles, load_weights, resolve
from .result import Result, build_result
from .runtime import Reasoner
from .scale import ScoreScale, glance_detail


class Critic:
    """A loaded critic on one backend. Thread-compatible, not thread-safe: use one per thread."""

    def __init__(self, files: ModelFiles, backend: backends.Backend, weights: Mapping[str, np.ndarray],
                 max_zooms: int = P.DEFAULT_ZOOMS, threads: int | None = None) -> None:
        self.files = files
        self.backend = backend
        self.max_zooms = max_zooms
        self.threads = threads  # also NumPy's BLAS threads while scoring (qds_lite.blas)
        self._reasoner = Reasoner(backend, weights, Diagnosis.of_model(weights, files.config))
        self.scale = ScoreScale.of_config(files.config)
        self.glance_scale = ScoreScale.of_config(files.config, glance_alone=True)  # for a zoom budget of 0
        self.model = {"name": files.name, "sha256": files.sha256}

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, **options) -> Critic:
        """Same as :func:`qds_lite.load` (``Critic.load()`` reads well in apps)."""
        return load(model, **options)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def score(self, image: Source | LoadedImage, *, zooms: int | None = None, look: Sequence[int] = ()) -> Result:
        """Score a path, bytes, PIL image, HxWx3 uint8 array or an already loaded image (whose timings then
        report the decode it had when it was loaded).

        ``look``: grid cells (row-major, 0 to ``protocol.N_CELLS`` - 1) the first zooms must go to, as far as
        the zoom budget goes, instead of where the reasoner would look: two images scored looking at the
        same cells are compared on the same evidence (refine judges a local edit so).
        """
        loaded = image if isinstance(image, LoadedImage) else load_image(image)
        budget = self.max_zooms if zooms is None else zooms
        if not 0 <= budget <= P.N_CELLS:
            raise QdsError(f"zoom budget must be between 0 and {P.N_CELLS}, not {budget}")
        if budget and not loaded.native:
            raise QdsError(f"{loaded.name}: loaded for a glance only, so it cannot be zoomed into",
                           hint="load it with load_image(...) in full, or score it with zooms=0")
        if len(set(look)) != len(look) or not all(0 <= c < P.N_CELLS for c in look):
            raise QdsError(f"cells to look at must be distinct, from 0 to {P.N_CELLS - 1}: {list(look)}")
        with blas.limited(self.threads):
            traj = self._reasoner.run(loaded, budget, look)
        timings = {"decode": loaded.load_ms, "model": traj.model_ms}
        return build_result(loaded.name, traj, loaded.original_size, self.model, self.backend.name, timings,
                            self.scale if budget else self.glance_scale, glance_detail(loaded.glance))

    def score_many(self, images: Iterable[Source], *, zooms: int | None = None) -> Iterator[Result | QdsError]:
        """Stream results in input order; a bad input yields its QdsError instead of stopping the stream.

        The next image is decoded in a background thread while the model looks at the current one.
        """
        for item in load_ahead(images):
            if isinstance(item, QdsError):
                yield item
                continue
            try:
                yield self.score(item, zooms=zooms)
            except QdsError as e:
                yield e


class load_ahead(Iterator[LoadedImage | QdsError]):  # noqa: N801 - used like a generator function
    """Iterate over loaded images (or the QdsError of each bad one) while a thread decodes the next.

    Decoding starts as soon as this is constructed, so a caller can load the critic meanwhile:
    Pillow and onnxruntime release the GIL, so on two cores the decode is nearly free. At most
    ``depth`` images wait decoded beyond the one being scored, which keeps memory flat.
    """

    def __init__(self, sources: Iterable[Source | LoadedImage], depth: int = 1) -> None:
        self._sources = iter(sources)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="qds-load")
        self._pending: deque[Future] = deque()
        for _ in range(depth + 1):
            self._submit()

    def _submit(self) -> None:
        for source in self._sources:
            self._pending.append(self._pool.submit(_load_or_error, source))
            return
        self._pool.shutdown(wait=False)

    def __next__(self) -> LoadedImage | QdsError:
        if not self._pending:
            raise StopIteration
        item = self._pending.popleft().result()
        self._submit()
        return item


def _load_or_error(source: Source | LoadedImage) -> LoadedImage | QdsError:
    if isinstance(source, LoadedImage):
        return source
    try:
        return load_image(source)
    except QdsError as e:
        return e


def load(model: str | os.PathLike | None = None, *, backend: str = "auto", threads: int | None = None,
         zooms: int = P.DEFAULT_ZOOMS) -> Critic:
    """Load a critic: a bundled name (default ``qds-small-v1``) or a folder with a manifest.json.

    ``backend`` is ``auto`` (onnx, then gguf, then numpy, with a notice on stderr when it falls back)
    or one of ``onnx``, ``gguf``, ``numpy`` (never falls back)."""
    files = resolve(model)
    weights = load_weights(files)
    return Critic(files, backends.select(backend, files, weights, threads), weights, zooms, threads)
