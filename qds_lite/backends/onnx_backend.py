"""The onnxruntime backend: int8 encoder, fp32 reasoner (re-run over the whole short sequence)."""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailable
from ..model_store import ModelFiles


def session(path, threads: int | None):
    """An onnxruntime CPU session (raises BackendUnavailable if onnxruntime is missing)."""
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

    def __call__(self, view: np.ndarray) -> np.ndarray:
        x = (view.astype(np.float32) * np.float32(1 / 255)).transpose(2, 0, 1)[None]
        return self.session.run(None, {"pixels": np.ascontiguousarray(x)})[0][0]


class OnnxSession:
    """The reasoner graph has no cache input: sequences are < 64 tokens, so each step re-runs them all."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.seq: list[np.ndarray] = []

    def step(self, embeddings: np.ndarray) -> np.ndarray:
        self.seq.append(embeddings.astype(np.float32))
        x = np.concatenate(self.seq)[None]
        return self.graph.run(None, {"embeddings": x})[0][0, -1]


class OnnxBackend:
    name = "onnx"

    def __init__(self, files: ModelFiles, threads: int | None) -> None:
        self.encode = OnnxEncoder(files.path("encoder_onnx"), threads)
        self.reasoner = session(files.path("reasoner_onnx"), threads)

    def start(self) -> OnnxSession:
        return OnnxSession(self.reasoner)
