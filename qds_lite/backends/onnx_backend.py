"""The onnxruntime backend: the encoder graph and the reasoner's incremental step graph (key/value cache).

Threads: the encoder runs on ``threads`` (default 1). A second thread helps its convolutions only where
two cores are really free: across fifteen runs of ``python -m benchmarks.speed`` on a shared 2-core VM the
row "onnx, 2 encoder threads" took 0.75 to 1.64 times the one-thread model time. The reasoner's steps
are a few (tokens, 128) matmuls that gain nothing from threads, so its session always runs on the
calling thread alone: two multi-threaded sessions are worse than either, since after each run a
session's idle workers spin on the very cores the other session is about to use.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailable, ModelError
from ..model_store import ModelFiles


def session(path, threads: int | None):
    """An onnxruntime CPU session on ``threads`` threads (default 1); raises BackendUnavailable if
    onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable("onnxruntime is not installed", hint="pip install onnxruntime") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    def __init__(self, path, threads: int | None) -> None:
        self.session = session(path, threads)
        output = self.session.get_outputs()[0].name
        if output != "features":  # an encoder exported with the projection in it
            raise ModelError(f"{path}: the encoder outputs {output!r}, not the pooled 'features' this runtime "
                             "projects itself", hint="re-run `python -m export.build`")

    def __call__(self, view: np.ndarray) -> np.ndarray:
        x = (view.astype(np.float32) * np.float32(1 / 255)).transpose(2, 0, 1)[None]
        return self.session.run(None, {"pixels": np.ascontiguousarray(x)})[0][0]


class OnnxSession:
    """Incremental decoding: the step graph takes and returns the key/value cache."""

    def __init__(self, graph, cache_shape: tuple[int, ...]) -> None:
        self.graph = graph
        self.k = self.v = np.zeros(cache_shape, np.float32)

    def step(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(embeddings, np.float32)[None]
        logits, self.k, self.v = self.graph.run(None, {"embeddings": x, "past_k": self.k, "past_v": self.v})
        return logits[0]


class OnnxBackend:
    name = "onnx"

    def __init__(self, files: ModelFiles, threads: int | None) -> None:
        self.encode = OnnxEncoder(files.path("encoder_onnx"), threads)
        self.reasoner = session(files.path("reasoner_onnx"), 1)  # see the module docstring
        cfg = files.config
        self.cache_shape = (cfg["n_layers"], 1, 0, cfg["n_heads"], cfg["d_model"] // cfg["n_heads"])

    def start(self) -> OnnxSession:
        return OnnxSession(self.reasoner, self.cache_shape)
