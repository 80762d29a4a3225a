"""PyTorch reference -> ONNX: the encoder (fp32 and static int8 QDQ) and the reasoner (fp32).

Every export is run back through onnxruntime against the reference before it is accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from kernels.model import (
    NSS_TAPS,
    CriticConfig,
    reasoner_forward,
    reasoner_step,
    to_torch,
    trunk_features,
    trunk_features_and_map,
)

OPSET = 18


class _Fn(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _export(fn, example: torch.Tensor, path: Path, in_name: str, out_names: list[str], dyn: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(_Fn(fn), (example,), str(path), input_names=[in_name], output_names=out_names,
                          dynamic_axes={in_name: dyn}, opset_version=OPSET, dynamo=False)


def export_trunk(arrays: dict[str, np.ndarray], path: Path) -> None:
    """pixels (N,3,H,W) in [0,1] -> pooled trunk features (N, cells, feat_dim) and the activation entering
    the first fine-tunable block (N, C, H/16, W/16); used to cache training data."""
    p = to_torch(arrays)
    _export(lambda x: trunk_features_and_map(p, x), torch.rand(1, 3, 256, 256), path, "pixels",
            ["features", "finetune_input"], {0: "n", 2: "h", 3: "w"})


def export_encoder(arrays: dict[str, np.ndarray], path: Path) -> None:
    """pixels (1,3,H,W) in [0,1] -> pooled cell features (1, cells, feat_dim): the runtime projects them to
    visual tokens itself (qds_lite.runtime), and its diagnosis reads them as they are."""
    p = to_torch(arrays)
    _export(lambda x: trunk_features(p, x), torch.rand(1, 3, 256, 256), path, "pixels", ["features"],
            {2: "h", 3: "w"})


def export_reasoner(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: Path) -> None:
    """One incremental step with a key/value cache, as the runtime decodes.

    embeddings (1, T, d_model), past_k / past_v (n_layers, 1, P, n_heads, head_dim)
    -> logits (1, vocab) of the last position, present_k / present_v (n_layers, 1, P + T, n_heads, head_dim).
    Re-running the whole sequence each step instead cost 2-3 ms a token (half the model time)."""
    p = to_torch(arrays)
    hd = cfg.d_model // cfg.n_heads

    class Step(torch.nn.Module):
        def forward(self, x, past_k, past_v):
            return reasoner_step(p, cfg, x, past_k, past_v)

    cache = torch.randn(cfg.n_layers, 1, 5, cfg.n_heads, hd)
    names = ["embeddings", "past_k", "past_v"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Step(), (torch.randn(1, 12, cfg.d_model), cache, cache), str(path), input_names=names,
                          output_names=["logits", "present_k", "present_v"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"embeddings": {1: "t"}, "past_k": {2: "past"}, "past_v": {2: "past"},
                                        "present_k": {2: "total"}, "present_v": {2: "total"}})


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of NCHW float views."""

    def __init__(self, views: list[np.ndarray]) -> None:
        self._it = iter({"pixels": v[None]} for v in views)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - protocol method onnxruntime may call
        pass


def window_convs(path: Path) -> list[str]:
    """Names of the scene statistics' Gaussian-window convolutions (1 x NSS_TAPS and NSS_TAPS x 1 kernels):
    they average a few grey levels over flat areas, which 8 bits cannot hold, and cost little in fp32."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}  # weights as initializers or Constant nodes
    shapes |= {n.output[0]: tuple(n.attribute[0].t.dims) for n in graph.node if n.op_type == "Constant"}
    return [n.name for n in graph.node if n.op_type == "Conv"
            and NSS_TAPS in shapes.get(n.input[1], ())[-2:]]


@contextmanager
def _preprocessed(fp32_path: Path, out_path: Path) -> Iterator[Path]:
    """onnxruntime's quantization pre-processing of ``fp32_path`` (shape inference, and the export's Constant
    weights turned into initializers, which the quantizers need), in a file beside ``out_path`` removed after."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    try:
        yield pre
    finally:
        pre.unlink(missing_ok=True)


def quantize_encoder(fp32_path: Path, out_path: Path, calibration_views: list[np.ndarray]) -> None:
    """Static int8 QDQ of the convolutions (per-channel weights, reduce_range for accuracy on AVX2).

    Only Conv is quantized: onnxruntime fuses it into QLinearConv, where the speed is; the pooling
    statistics and the small MLP stay fp32 because squaring int8 activations for the std loses too much."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _preprocessed(fp32_path, out_path) as pre:
        quantize_static(
            str(pre), str(out_path), _Calibration(calibration_views), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
            nodes_to_exclude=window_convs(pre),
        )


def quantize_reasoner(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 of the reasoner's step graph: MatMul weights int8 per output channel, activations
    quantized per call from their own range (no calibration set), except the output head's, whose logits
    choose every token: quantized too, the scores of 17 sample photos moved by up to 1.21 points (mean
    0.15), kept fp32 by up to 0.15 (0.07), as close as the GGUF Q8_0. This is the part of the critic the
    GGUF export quantizes (Q8_0, Q4_0), so ONNX and llama.cpp offer the same trade; the encoder stays fp32
    (its static int8 recipes: ``export.quant_study``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _preprocessed(fp32_path, out_path) as pre:
        head = [n.name for n in onnx.load(str(pre)).graph.node if "logits" in n.output]
        quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=head)


def verify_encoder(arrays: dict[str, np.ndarray], path: Path, views: list[np.ndarray], atol: float) -> float:
    """Max abs difference of an exported encoder's features from the reference on the given NCHW views."""
    import onnxruntime as ort

    p = to_torch(arrays)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for v in views:
        with torch.no_grad():
            ref = trunk_features(p, torch.from_numpy(v[None])).numpy()
        worst = max(worst, float(np.abs(sess.run(None, {"pixels": v[None]})[0] - ref).max()))
    if worst > atol:
        raise SystemExit(f"{path}: features differ from the reference by {worst:.3g} > {atol}")
    return worst


def encoder_sqnr(arrays: dict[str, np.ndarray], path: Path, views: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio (dB) of a quantized encoder's features against the reference."""
    import onnxruntime as ort

    p = to_torch(arrays)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sig = noise = 0.0
    for v in views:
        with torch.no_grad():
            ref = trunk_features(p, torch.from_numpy(v[None])).numpy()
        sig += float((ref ** 2).sum())
        noise += float(((sess.run(None, {"pixels": v[None]})[0] - ref) ** 2).sum())
    return 10 * np.log10(sig / max(noise, 1e-30))


def verify_reasoner(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: Path, atol: float = 1e-4) -> float:
    """Feed 40 positions in the runtime's chunk sizes (17, then 1 or 5 at a time) through the step graph and
    compare each chunk's last logits with the full-sequence reference at that position."""
    import onnxruntime as ort

    x = torch.randn(1, 40, cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reasoner_forward(to_torch(arrays), cfg, x)[0].numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    k = v = np.zeros((cfg.n_layers, 1, 0, cfg.n_heads, cfg.d_model // cfg.n_heads), np.float32)
    worst, start = 0.0, 0
    for n in (17, 1, 5, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1):
        logits, k, v = sess.run(None, {"embeddings": x[:, start:start + n].numpy(), "past_k": k, "past_v": v})
        start += n
        worst = max(worst, float(np.abs(logits[0] - ref[start - 1]).max()))
    if start != x.shape[1] or k.shape[2] != start:
        raise SystemExit(f"{path}: the cache holds {k.shape[2]} positions after {start}")
    if worst > atol:
        raise SystemExit(f"{path}: logits differ from the reference by {worst:.3g} > {atol}")
    return worst
