"""The reasoner on llama.cpp (llama-cpp-python), from a GGUF written by ``export/gguf_export.py``.

The runtime never tokenizes: it passes input *embeddings* (token rows and visual tokens it built
itself) through llama.cpp's low-level batch API and reads back the logits of the last position.
The KV cache is F32, so an F32 GGUF matches the PyTorch reference to float rounding.

    reasoner = GGUFReasoner("critic-reasoner-q8_0.gguf")
    session = reasoner.start()
    logits = session.step(glance_embeddings)   # (16, d_model) -> (vocab,)
    logits = session.step(next_token_row[None])
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qds_lite.errors import BackendUnavailable, ModelError

_GGML_TYPE_F32 = 0
_backend_ready = False
_quiet_log = None  # the no-op log callback; kept referenced for as long as llama.cpp may call it


def model_params(ll, n_gpu_layers: int):
    """llama.cpp's default model parameters with ``n_gpu_layers`` offloaded and no weight repacking.

    Repacking (llama.cpp's "extra buffer types", on by default since mid-2025) rearranges Q4_0/Q8_0 weights
    into interleaved blocks for the CPU's wide SIMD products. Built with GCC 12 for an AVX-512 CPU,
    llama-cpp-python 0.3.36 then crashes in the first llama_decode, on our reasoner and on the tiny test VLM
    alike (f32 models are unaffected; ggml-org/llama.cpp#16479 reports the same with GCC 12.2 on Q4_0
    models). Versions without the field ignore it."""
    params = ll.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = False
    return params


def _import_llama_cpp(verbose: bool):
    global _backend_ready, _quiet_log
    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError as e:
        raise BackendUnavailable("llama-cpp-python is not installed", hint="pip install 'qds-lite[gguf]'") from e
    # llama.cpp logs through one process-wide callback. llama-cpp-python's own prints every message
    # unless told otherwise, and even quietened it prints loading our vocabulary ("SPM vocabulary, but
    # newline token not found", logged as an error, harmless: nothing is ever tokenized). So by default
    # install a no-op; verbose=True puts llama-cpp-python's printing callback back.
    if verbose:
        _logger.set_verbose(True)
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    else:
        if _quiet_log is None:
            _quiet_log = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


class GGUFReasoner:
    """A GGUF reasoner loaded into one llama.cpp context (one sequence at a time)."""

    def __init__(self, path: str | os.PathLike, n_threads: int | None = None, n_gpu_layers: int = 0,
                 verbose: bool = False) -> None:
        # n_threads defaults to 1: on this tiny model, more threads mostly wait on each other (and on
        # busy cores were far slower); raise it for large batches on idle machines.
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"GGUF model not found: {self.path}", hint="run export/gguf_export.py to write it")
        self._ll = ll = _import_llama_cpp(verbose)
        self._model = self._ctx = self._batch = None

        mparams = model_params(ll, n_gpu_layers)
        self._model = ll.llama_model_load_from_file(os.fsencode(self.path), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.path}", hint="pass verbose=True to see why")
        self.n_embd = ll.llama_model_n_embd(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self._model))
        self.n_ctx = ll.llama_model_n_ctx_train(self._model)

        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = n_threads or 1
        cparams.type_k = cparams.type_v = _GGML_TYPE_F32  # the default F16 cache: up to 6e-4 in the logits
        # Flash attention ("auto" turns it on) works in F16 on the CPU even over an F32 cache: 5e-4 in the
        # logits against 1e-6 without it, and single-token steps took 3x longer with it (0.8 vs 0.27 ms).
        cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise ModelError(f"llama.cpp could not create a context for {self.path}")
        self._batch = ll.llama_batch_init(self.n_ctx, self.n_embd, 1)
        self._generation = 0  # bumped by start(); older sessions then refuse to step

    def start(self) -> GGUFSession:
        """A fresh sequence: clears the KV cache (earlier sessions become unusable)."""
        if self._ctx is None:
            raise RuntimeError("GGUFReasoner is closed")
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self._ctx), True)
        self._generation += 1
        return GGUFSession(self, self._generation)

    def _decode(self, embeddings: np.ndarray, n_past: int) -> np.ndarray:
        ll, b = self._ll, self._batch
        n = embeddings.shape[0]
        ctypes.memmove(b.embd, embeddings.ctypes.data, embeddings.nbytes)
        for i in range(n):
            b.pos[i] = n_past + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == n - 1
        b.n_tokens = n
        rc = ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        ptr = ll.llama_get_logits_ith(self._ctx, n - 1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        """Free the batch, context and model (also done on garbage collection)."""
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> GGUFReasoner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class GGUFSession:
    """One sequence being decoded; ``step`` appends embeddings at the next positions."""

    def __init__(self, reasoner: GGUFReasoner, generation: int) -> None:
        self._reasoner = reasoner
        self._generation = generation
        self.n_past = 0

    def step(self, embeddings: np.ndarray) -> np.ndarray:
        """embeddings: (n, d_model) float32 -> logits (vocab,) float32 of the last appended position."""
        r = self._reasoner
        if r._ctx is None or self._generation != r._generation:
            raise RuntimeError("this session was superseded by a later start() or its reasoner was closed")
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != r.n_embd or x.shape[0] == 0:
            raise ValueError(f"embeddings must be (n >= 1, {r.n_embd}), got {x.shape}")
        if self.n_past + x.shape[0] > r.n_ctx:
            raise ValueError(f"sequence would reach {self.n_past + x.shape[0]} positions; the context holds {r.n_ctx}")
        logits = r._decode(x, self.n_past)
        self.n_past += x.shape[0]
        return logits


class GGUFBackend:
    """Reasoner on llama.cpp; the encoder on onnxruntime where installed, else the NumPy encoder."""

    name = "gguf"

    def __init__(self, files, weights: Mapping[str, np.ndarray], threads: int | None) -> None:
        self.reasoner = GGUFReasoner(files.path("reasoner_gguf"))  # one thread, as on onnx: onnx_backend.py
        try:
            from .onnx_backend import OnnxEncoder

            self.encode = OnnxEncoder(files.path("encoder_onnx"), threads)
        except BackendUnavailable:
            from .numpy_backend import NumpyEncoder

            self.encode = NumpyEncoder(files.config, weights)

    def start(self) -> GGUFSession:
        return self.reasoner.start()
