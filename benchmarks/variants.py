"""Critic variants the accuracy benchmark runs beside the shipped backends (issue: every backend and
quantization in the same run): the PyTorch fp32 reference, the static int8 encoder, the dynamic int8
ONNX reasoner and the GGUF Q4_0 reasoner.

None of them ships. Each is built here from the shipped weights (``critic.npz``), the same way
``export.build`` makes the shipped files, and cached under ``build/bench/variants/<model sha256>/``:

* ``torch``: ``kernels.model`` itself (on CUDA when a GPU is present) behind the runtime's backend
  interface, so the same decoding loop runs on the reference maths;
* ``onnx-int8``: the fp32 encoder quantized by ``export.onnx_export.quantize_encoder`` (calibrated on
  dev-split photos, never test), with the fp32 ONNX reasoner;
* ``onnx-int8-reasoner``: the fp32 encoder with the reasoner's MatMuls dynamically quantized to int8 by
  ``export.onnx_export.quantize_reasoner`` (the part of the critic the GGUF files quantize);
* ``gguf-q4_0``: the gguf backend with the reasoner written as Q4_0 by ``export.gguf_export`` (checked
  against the reference there) instead of the shipped Q8_0.

They need the ``train`` extra (torch, onnx, gguf); without it :func:`load` raises ImportError and the
benchmark skips that variant with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

VARIANTS = ("torch", "onnx-int8", "onnx-int8-reasoner", "gguf-q4_0")
CACHE = Path(__file__).resolve().parents[1] / "build" / "bench" / "variants"


class TorchBackend:
    """The PyTorch reference (kernels.model) behind the runtime's Backend interface."""

    name = "torch"

    def __init__(self, weights, cfg: dict) -> None:
        import torch

        from kernels.model import CriticConfig, to_torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.p = to_torch({k: np.asarray(v, np.float32) for k, v in weights.items()}, self.device)
        self.cfg = CriticConfig(**{k: cfg[k] for k in CriticConfig.__dataclass_fields__})

    def encode(self, view: np.ndarray) -> np.ndarray:
        from kernels.model import trunk_features

        x = self.torch.from_numpy(view.astype(np.float32).transpose(2, 0, 1)[None] / 255.0).to(self.device)
        with self.torch.no_grad():
            return trunk_features(self.p, x)[0].cpu().numpy()

    def start(self) -> TorchSession:
        return TorchSession(self)


class TorchSession:
    def __init__(self, backend: TorchBackend) -> None:
        cfg, torch = backend.cfg, backend.torch
        self.backend = backend
        shape = (cfg.n_layers, 1, 0, cfg.n_heads, cfg.d_model // cfg.n_heads)
        self.k = self.v = torch.zeros(shape, device=backend.device)

    def step(self, embeddings: np.ndarray) -> np.ndarray:
        from kernels.model import reasoner_step

        b = self.backend
        x = b.torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))[None].to(b.device)
        with b.torch.no_grad():
            logits, self.k, self.v = reasoner_step(b.p, b.cfg, x, self.k, self.v)
        return logits[0].cpu().numpy()


def _built(path: Path, build: Callable[[Path], None]) -> Path:
    """``path``, made by ``build(path)`` the first time it is asked for."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build(path)
    return path


def _int8_encoder(files, folder: Path) -> Path:
    def build(path: Path) -> None:
        from export.build import SEED, calibration_views
        from export.onnx_export import quantize_encoder

        quantize_encoder(files.path("encoder_onnx"), path, calibration_views("dev", 12, SEED))

    return _built(folder / "encoder.int8.onnx", build)


def _int8_reasoner(files, folder: Path) -> Path:
    def build(path: Path) -> None:
        from export.onnx_export import quantize_reasoner

        quantize_reasoner(files.path("reasoner_onnx"), path)

    return _built(folder / "reasoner.int8.onnx", build)


def _q4_0_reasoner(files, weights, folder: Path) -> Path:
    def build(path: Path) -> None:
        from export.build import critic_config
        from export.gguf_export import export

        export({k: np.asarray(v, np.float32) for k, v in weights.items()}, critic_config(), path, qtype="q4_0",
               name=files.name)

    return _built(folder / "reasoner.q4_0.gguf", build)


def load(name: str, model: str | None = None, threads: int | None = None, cache: Path = CACHE,
         zooms: int | None = None):
    """A :class:`qds_lite.Critic` running variant ``name`` (one of :data:`VARIANTS`) of ``model``."""
    from qds_lite import protocol as P
    from qds_lite.critic import Critic
    from qds_lite.model_store import load_weights, resolve

    files = resolve(model)
    weights = load_weights(files)
    folder = cache / files.sha256[:16]
    if name == "torch":
        backend = TorchBackend(weights, files.config)
    elif name == "onnx-int8":
        from qds_lite.backends.onnx_backend import OnnxBackend, OnnxEncoder

        backend = OnnxBackend(files, threads)
        backend.encode = OnnxEncoder(_int8_encoder(files, folder), threads)
        backend.name = name
    elif name == "onnx-int8-reasoner":
        from qds_lite.backends.onnx_backend import OnnxBackend, session

        backend = OnnxBackend(files, threads)
        backend.reasoner = session(_int8_reasoner(files, folder), 1)
        backend.name = name
    elif name == "gguf-q4_0":
        from qds_lite.backends.gguf_backend import GGUFBackend, GGUFReasoner

        backend = GGUFBackend(files, weights, threads)
        backend.reasoner = GGUFReasoner(_q4_0_reasoner(files, weights, folder))
        backend.name = name
    else:
        raise ValueError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    return Critic(files, backend, weights, P.DEFAULT_ZOOMS if zooms is None else zooms)
