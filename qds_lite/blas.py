"""NumPy's BLAS held to the critic's own thread count while it scores.

NumPy hands the loop's small matrix products (the projection of pooled features to visual tokens, the
diagnosis heads; the numpy backend's convolutions too) to OpenBLAS, which by default runs them on every
core, and whose worker threads then spin for a while after each product: on the very cores that
onnxruntime's encoder, a triage worker next door or the app's own threads are about to use. The products
are far too small to gain from a second thread. threadpoolctl (the library scikit-learn relies on for
this) sets the limit for the length of one call and restores the app's own setting after it: a library
embedded in an app must not change process-wide state for good.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # finds the BLAS libraries loaded (once: ~1 ms)


def limited(threads: int | None) -> AbstractContextManager:
    """A context in which NumPy's BLAS runs on at most ``threads`` threads (None: 1, the runtime's default)."""
    return _controller().limit(limits=threads or 1, user_api="blas")
