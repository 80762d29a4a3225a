"""PyTorch reference -> ONNX: the encoder (fp32 and static int8 QDQ) and the reasoner (fp32).

Every export is run back through onnxruntime against the reference before it is accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernels.model import CriticConfig, encoder_forward, reasoner_forward, to_torch, trunk_features

OPSET = 18


class _Fn(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _export(fn, example: torch.Tensor, path: Path, in_name: str, out_name: str, dyn: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(_Fn(fn), (example,), str(path), input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: dyn}, opset_version=OPSET, dynamo=False)


def export_trunk(arrays: dict[str, np.ndarray], path: Path) -> None:
    """pixels (N,3,H,W) in [0,1] -> pooled trunk features (N, cells, feat_dim); used to cache training data."""
    p = to_torch(arrays)
    _export(lambda x: trunk_features(p, x), torch.rand(1, 3, 256, 256), path, "pixels", "features",
            {0: "n", 2: "h", 3: "w"})


def export_encoder(arrays: dict[str, np.ndarray], path: Path) -> None:
    """pixels (1,3,H,W) in [0,1] -> visual tokens (1, cells, d_model)."""
    p = to_torch(arrays)
    _export(lambda x: encoder_forward(p, x), torch.rand(1, 3, 256, 256), path, "pixels", "tokens",
            {2: "h", 3: "w"})


def export_reasoner(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: Path) -> None:
    """embeddings (1, T, d_model) -> logits (1, T, vocab)."""
    p = to_torch(arrays)
    _export(lambda x: reasoner_forward(p, cfg, x), torch.randn(1, 12, cfg.d_model), path, "embeddings",
            "logits", {1: "t"})


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of NCHW float views."""

    def __init__(self, views: list[np.ndarray]) -> None:
        self._it = iter({"pixels": v[None]} for v in views)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - protocol method onnxruntime may call
        pass


def quantize_encoder(fp32_path: Path, out_path: Path, calibration_views: list[np.ndarray]) -> None:
    """Static int8 QDQ of the convolutions (per-channel weights, reduce_range for accuracy on AVX2).

    Only Conv is quantized: onnxruntime fuses it into QLinearConv, where the speed is; the pooling
    statistics and the small MLP stay fp32 because squaring int8 activations for the std loses too much."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre), str(out_path), _Calibration(calibration_views), quant_format=QuantFormat.QDQ,
        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
    )
    pre.unlink()


def verify_encoder(arrays: dict[str, np.ndarray], path: Path, views: list[np.ndarray], atol: float) -> float:
    """Max abs difference of an exported encoder's tokens from the reference on the given NCHW views."""
    import onnxruntime as ort

    p = to_torch(arrays)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for v in views:
        with torch.no_grad():
            ref = encoder_forward(p, torch.from_numpy(v[None])).numpy()
        worst = max(worst, float(np.abs(sess.run(None, {"pixels": v[None]})[0] - ref).max()))
    if worst > atol:
        raise SystemExit(f"{path}: tokens differ from the reference by {worst:.3g} > {atol}")
    return worst


def encoder_sqnr(arrays: dict[str, np.ndarray], path: Path, views: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio (dB) of a quantized encoder's tokens against the reference."""
    import onnxruntime as ort

    p = to_torch(arrays)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sig = noise = 0.0
    for v in views:
        with torch.no_grad():
            ref = encoder_forward(p, torch.from_numpy(v[None])).numpy()
        sig += float((ref ** 2).sum())
        noise += float(((sess.run(None, {"pixels": v[None]})[0] - ref) ** 2).sum())
    return 10 * np.log10(sig / max(noise, 1e-30))


def verify_reasoner(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: Path, atol: float = 1e-4) -> float:
    import onnxruntime as ort

    x = torch.randn(1, 40, cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reasoner_forward(to_torch(arrays), cfg, x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"embeddings": x.numpy()})[0]
    worst = float(np.abs(got - ref).max())
    if worst > atol:
        raise SystemExit(f"{path}: logits differ from the reference by {worst:.3g} > {atol}")
    return worst
