"""Int8 / mixed recipes for the critic's encoder in onnxruntime: accuracy against the fp32 reference and speed.

    OMP_NUM_THREADS=1 python -m export.quant_study [--only RECIPE ...] [--e2e ENCODER ...] [--sensitivity]

Each recipe below is a function that quantizes the fp32 encoder export (after quant_pre_process), calibrated
on export.build's 48 views (12 dev photos x glance + 3 zooms). Accuracy: 40 other dev views (10 photos)
against kernels.model's PyTorch encoder: SQNR of the tokens and of the pooled mean / std features, and the
std features' relative bias. Speed: median of 200 session.run (1 thread, after 20 warm-up) on a 256 px
glance and a 128 px zoom, interleaved with the fp32 encoder; "x fp32" is the ratio of the two medians in
the same loop (the fp32 row shows its noise; the ms drift with the shared machine's load). End to end:
qds_lite's onnx backend with the encoder swapped in (build/quant/model) vs the numpy backend (fp32) on
tests/data/*.jpg, examples/coffee.jpg and 20 synthetic degradations of test photos; contract |diff| <= 1.

qds-small-v1 (manifest sha256 a0a7330ebaef), onnxruntime 1.32.0, AMD EPYC Zen 3 (AVX2, no VNNI):

recipe                        tokens   mean    std std bias   glance  x fp32   zoom  x fp32
                              (SQNR dB vs PyTorch, held-out)   (ms)             (ms)
fp32                          125.3  125.1  127.4    +0.0%     9.49   1.00    2.70   1.02
a_current                      12.1   10.4   17.4    -1.9%    11.19   1.17    3.18   1.17
b_full_range                    7.7    6.5   15.7    -2.5%    11.28   1.17    3.26   1.18
c_int8_symmetric               10.8    9.5   16.6    -2.0%    15.20   1.62    4.19   1.60
d_percentile                   12.1   10.5   17.1    -1.8%    12.12   1.18    4.53   1.20
d_entropy                      11.5   10.5   17.7    -1.9%    11.59   1.19    3.17   1.17
e_pointwise_only               17.0   16.1   22.6    -0.6%    11.81   1.30    3.40   1.24
f_fp32_taps                    12.1   10.4   17.5    -1.9%    10.83   1.21    2.91   1.19
g_qoperator                    12.1   10.5   17.5    -1.9%    10.63   1.17    3.09   1.18
h_dynamic_mlp                  38.7  125.1  127.4    +0.0%     9.01   1.00    2.65   1.01
j_conv_clip                    15.6   13.8   21.7    -0.9%     7.34   0.76    2.17   0.80
k_conv_clip_add                15.5   13.8   21.7    -0.8%     7.67   0.77    2.02   0.78
l_clip_fp32_head2              26.0   22.1   29.6    -0.1%     8.32   0.80    2.29   0.82
l_clip_fp32_head3              27.6   24.0   31.2    +0.1%    11.39   0.87    2.30   0.83
m_clip_add_fp32_head2          25.9   22.1   29.3    -0.0%     7.73   0.82    3.10   0.84
n_clip_pointwise_only          19.8   17.6   25.5    +0.2%     7.67   0.79    2.20   0.83
o_clip_fp32_head3_taps         28.1   24.4   31.4    +0.0%     8.05   0.87    2.38   0.89
p_clip_fp32_head3_percentile   21.5   21.2   21.2    -1.2%     7.90   0.82    2.30   0.84
q_clip_qoperator               15.6   13.8   21.9    -0.9%     7.36   0.77    2.12   0.79

end to end (25 images)        max |score diff|, images > 1.0, images whose finding types change
fp32                            0.00   0/25   0/25
j_conv_clip                    76.99  14/25   8/25
o_clip_fp32_head3_taps         18.89   5/25   3/25
fp32 + 30 dB token noise        0.07   0/25   0/25   (white noise added to the fp32 tokens)
fp32 + 40 dB token noise        2.78   1/25   1/25   (a borderline image: plasma_summer_1am+low_contrast)
fp32 + 50 dB token noise        0.01   0/25   0/25

--sensitivity (one conv + its ReLU6 quantized as in j, all else fp32), tokens SQNR: conv0 24.5 dB,
block 1-2 convs 18.0 (b1.dw) to 31.1, blocks 3-4 32.1-40.2, blocks 5-13 38.9-47.3.

Findings
* The current recipe's main defect: with op_types_to_quantize=["Conv"] every conv output is quantized over
  its pre-ReLU6 range (tens of units) and the Clip runs in float between DQ and Q. Adding "Clip" makes the
  quantizer use the [0, 6] output range and drop the Clip: 12.1 -> 15.6 dB, and int8 goes from 1.17x slower
  to 0.76-0.80x the fp32 time (j). Quantizing the residual Adds too (k) or QOperator (g, q) change nothing.
* The hypothesis has the wrong sign: quantization *deflates* the std features (-1.9 %: coarse steps flatten
  low-contrast texture), and the mean features lose more (10.4 dB) than the std features (17.4 dB). Keeping
  the tap convs fp32 (f) does not help: the error is already in their inputs.
* reduce_range=False is worse (u8 x s8 on AVX2 without VNNI saturates in vpmaddubsw); QInt8 symmetric
  activations take onnxruntime's slow s8s8 path (1.6x); Entropy / Percentile ranges (collected per view size)
  do not beat MinMax, and percentile clipping of the ReLU6 ranges hurts (p).
* The sensitive layers are the first ones (full resolution, where image noise and fine texture live): fp32
  up to block 2 or 3 gives 26-28 dB at 0.80-0.89x. The rest is many layers at ~40-47 dB each, which add up
  to ~27 dB; no per-tensor int8 activation recipe gets past that.
* The contract needs >= ~50 dB (white noise at 40 dB already moves a borderline image by 2.8 points), and
  quantization error is structured, so worse than white: the most accurate int8 (28 dB) moves scores by
  up to 19 points. Even one int8 conv alone is at 39-47 dB.
* (h) int8 MatMul for the MLP alone: 38.7 dB and no speed (the MLP is ~0 % of the time).
* (i) fp16: not built (onnxconverter-common is not installed), and pointless here: onnxruntime 1.32's CPU
  EP runs an fp16 Conv as Cast -> fp32 Conv -> Cast on this CPU (checked on a one-node model).
Verdict: keep the fp32 encoder; the best int8 saves ~2 ms per glance and ~0.5 ms per zoom and breaks the
score contract by one to two orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.build import calibration_views
from export.onnx_export import _Calibration, export_encoder
from kernels.model import encoder_forward, project_features, to_torch, trunk_features
from qds_lite.model_store import load_weights, resolve, sha256_file

WORK = Path("build") / "quant"  # scratch, relative to the repository root like the rest of export/
# export.onnx_export.quantize_encoder, the recipe that measured 11.2 dB
CURRENT = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
               activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
               calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"])
MEAN_IDX = np.r_[0:32, 64:160]  # pooled features: mean(tap6) std(tap6) mean(tap13) std(tap13)
STD_IDX = np.r_[32:64, 160:256]


@dataclass
class Study:
    weights: dict[str, np.ndarray]
    pre: Path  # fp32 encoder after quant_pre_process: what every static recipe quantizes
    cal: list[np.ndarray]  # 12 dev photos x (glance + 3 zooms), as export.build calibrates
    held: list[np.ndarray]  # 10 other dev photos x (glance + 3 zooms)
    conv: dict[str, str]  # Conv node name -> weight name in critic.npz

    def nodes(self, *suffixes: str) -> list[str]:
        """Conv nodes whose weight name ends with one of ``suffixes``, plus the Clip / residual Add reading
        their output (so that excluding a conv keeps its activation fp32 under any op_types_to_quantize)."""
        convs = [n for n, w in self.conv.items() if w.endswith(suffixes)]
        g = onnx.load(self.pre).graph
        outs = {n.output[0] for n in g.node if n.name in convs}
        return convs + [n.name for n in g.node if n.op_type in ("Clip", "Add") and outs & set(n.input)]

    def head(self, last_block: int) -> list[str]:
        """``nodes`` of the first conv and blocks 1..last_block."""
        return self.nodes("conv0.w", *(f"b{i}.{k}.w" for i in range(1, last_block + 1)
                                       for k in ("expand", "dw", "project")))


def setup() -> Study:
    WORK.mkdir(parents=True, exist_ok=True)
    weights = load_weights(resolve())
    fp32, pre = WORK / "fp32.onnx", WORK / "pre.onnx"
    export_encoder(weights, fp32)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    g = onnx.load(pre).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    conv = {n.name: next(k for k, w in weights.items() if w.shape == inits[n.input[1]].shape
                         and np.array_equal(w, inits[n.input[1]])) for n in g.node if n.op_type == "Conv"}
    return Study(weights, pre, calibration_views("dev", 12, 0), calibration_views("dev", 22, 1)[48:], conv)


def _static(s: Study, out: Path, extra: dict | None = None, **kw) -> None:
    """quantize_static with CURRENT's arguments updated by ``kw``. An Add or Clip is only ever quantized in
    the trunk (ReLU6, residual), never in the pooling (variance clamp, epsilon) or the MLP (biases)."""
    args = CURRENT | kw
    g = onnx.load(s.pre).graph
    conv_out = {n.output[0] for n in g.node if n.op_type == "Conv"}
    args["nodes_to_exclude"] = args.get("nodes_to_exclude", []) + [
        n.name for n in g.node if n.op_type in ("Add", "Clip") and not conv_out & set(n.input)]
    args["extra_options"] = args.get("extra_options", {}) | (extra or {})
    quantize_static(str(s.pre), str(out), _Calibration(s.cal), **args)


def _histogram_overrides(s: Study, method: CalibrationMethod, ops: list[str]) -> dict:
    """Entropy/percentile ranges collected one view size at a time (the collectors stack the arrays of
    one batch, so 256 and 128 px views cannot share one), handed to quantize_static as rmin/rmax."""
    cal = create_calibrator(s.pre, ops, WORK / "augmented.onnx", calibrate_method=method)
    for size in (256, 128):
        cal.collect_data(_Calibration([v for v in s.cal if v.shape[-1] == size]))
    ranges = {k: td.range_value for k, td in cal.compute_data().data.items()}
    for n in onnx.load(s.pre).graph.node:  # what quantize_static does for a removed Clip
        if n.op_type == "Clip" and "Clip" in ops and n.output[0] in ranges:
            ranges[n.input[0]] = ranges[n.output[0]]
    return {k: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for k, (lo, hi) in ranges.items()}


# --- the recipes: each writes one encoder file -----------------------------------------------
def a_current(s, out):
    _static(s, out)


def b_full_range(s, out):
    _static(s, out, reduce_range=False)


def c_int8_symmetric(s, out):
    _static(s, out, activation_type=QuantType.QInt8, extra={"ActivationSymmetric": True})


def d_percentile(s, out):
    _static(s, out, extra={"TensorQuantOverrides": _histogram_overrides(s, CalibrationMethod.Percentile, ["Conv"])})


def d_entropy(s, out):
    _static(s, out, extra={"TensorQuantOverrides": _histogram_overrides(s, CalibrationMethod.Entropy, ["Conv"])})


def e_pointwise_only(s, out):
    _static(s, out, nodes_to_exclude=s.nodes("conv0.w", ".dw.w"))


def f_fp32_taps(s, out):
    _static(s, out, nodes_to_exclude=s.nodes("b6.project.w", "b13.project.w"))


def g_qoperator(s, out):
    _static(s, out, quant_format=QuantFormat.QOperator)


def h_dynamic_mlp(s, out):
    quantize_dynamic(str(s.pre), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)


def j_conv_clip(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"])


def k_conv_clip_add(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip", "Add"])


def l_clip_fp32_head2(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"], nodes_to_exclude=s.head(2))


def l_clip_fp32_head3(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"], nodes_to_exclude=s.head(3))


def m_clip_add_fp32_head2(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip", "Add"], nodes_to_exclude=s.head(2))


def n_clip_pointwise_only(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"], nodes_to_exclude=s.nodes("conv0.w", ".dw.w"))


def o_clip_fp32_head3_taps(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"],
            nodes_to_exclude=s.head(3) + s.nodes("b6.project.w", "b13.project.w"))


def p_clip_fp32_head3_percentile(s, out):
    ranges = _histogram_overrides(s, CalibrationMethod.Percentile, ["Conv", "Clip"])
    _static(s, out, op_types_to_quantize=["Conv", "Clip"], nodes_to_exclude=s.head(3),
            extra={"TensorQuantOverrides": ranges})


def q_clip_qoperator(s, out):
    _static(s, out, op_types_to_quantize=["Conv", "Clip"], quant_format=QuantFormat.QOperator)


E2E = ["j_conv_clip", "o_clip_fp32_head3_taps"]  # the fastest recipe and the most accurate one
VARIANTS = [a_current, b_full_range, c_int8_symmetric, d_percentile, d_entropy, e_pointwise_only, f_fp32_taps,
            g_qoperator, h_dynamic_mlp, j_conv_clip, k_conv_clip_add,
            l_clip_fp32_head2, l_clip_fp32_head3, m_clip_add_fp32_head2, n_clip_pointwise_only,
            o_clip_fp32_head3_taps, p_clip_fp32_head3_percentile, q_clip_qoperator]


# --- measuring ---------------------------------------------------------------------------------
def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()  # as qds_lite's onnx backend: one thread, all graph optimizations
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((got - ref) ** 2).sum(), 1e-30)))


def accuracy(s: Study, path: Path) -> dict:
    """SQNR (dB) on the held-out views of the tokens (the encoder's features projected as the runtime does)
    and of the pooled mean / std features, and the relative bias of the std features (positive:
    quantization noise inflates them)."""
    sess, p = _session(path), to_torch(s.weights)
    ref, got = [], []
    for v in s.held:
        with torch.no_grad():
            features = torch.from_numpy(sess.run(None, {"pixels": v[None]})[0])
            ref.append((encoder_forward(p, torch.from_numpy(v[None])).numpy(),
                        trunk_features(p, torch.from_numpy(v[None])).numpy()))
            got.append((project_features(p, features).numpy(), features.numpy()))

    def cat(rows, i, idx=slice(None)):
        return np.concatenate([r[i][..., idx].ravel() for r in rows])

    return {"tokens": _sqnr(cat(ref, 0), cat(got, 0)), "mean": _sqnr(cat(ref, 1, MEAN_IDX), cat(got, 1, MEAN_IDX)),
            "std": _sqnr(cat(ref, 1, STD_IDX), cat(got, 1, STD_IDX)),
            "std_bias": float(cat(got, 1, STD_IDX).mean() / cat(ref, 1, STD_IDX).mean() - 1)}


def speed(path: Path, base: Path, runs: int = 200, warm: int = 20) -> dict:
    """Median ms of session.run on a glance and on a zoom, interleaved run by run with ``base`` (whose
    order alternates), and the ratio to ``base``'s median in the same loop."""
    sess = {"new": _session(path), "base": _session(base)}
    out = {}
    for size in (256, 128):
        x = {"pixels": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
        times: dict[str, list[float]] = {"new": [], "base": []}
        for i in range(warm + runs):
            for k in (("new", "base") if i % 2 else ("base", "new")):
                t = time.perf_counter()
                sess[k].run(None, x)
                if i >= warm:
                    times[k].append((time.perf_counter() - t) * 1e3)
        new, base_ms = statistics.median(times["new"]), statistics.median(times["base"])
        out[size] = (new, new / base_ms)
    return out


HEADER = ("recipe                        tokens   mean    std std bias   glance  x fp32   zoom  x fp32\n"
          "                              (SQNR dB vs PyTorch, held-out)   (ms)             (ms)")


def row(name: str, acc: dict, sp: dict) -> str:
    return (f"{name:<28} {acc['tokens']:6.1f} {acc['mean']:6.1f} {acc['std']:6.1f} {acc['std_bias']:+8.1%}"
            f"   {sp[256][0]:6.2f}  {sp[256][1]:5.2f}   {sp[128][0]:5.2f}  {sp[128][1]:5.2f}")


# --- end to end with the real runtime -----------------------------------------------------------
def model_folder(encoder: Path, root: Path = WORK / "model") -> Path:
    """The shipped critic with ``encoder`` in place of encoder.onnx, manifest entry re-pinned."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(resolve().root, root)
    shutil.copyfile(encoder, root / "encoder.onnx")
    doc = json.loads((root / "manifest.json").read_text())
    entry = next(f for f in doc["files"] if f["path"] == "encoder.onnx")
    entry |= {"sha256": sha256_file(root / "encoder.onnx"), "size": (root / "encoder.onnx").stat().st_size}
    doc["total_size"] = sum(f["size"] for f in doc["files"])
    (root / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    return root


def e2e_images(n: int = 20) -> list[tuple[str, np.ndarray | Path]]:
    from PIL import Image

    from export import synth
    from export.data import pristine_photos

    repo = Path(__file__).resolve().parents[1]
    files = [*sorted((repo / "tests" / "data").glob("*.jpg")), repo / "examples" / "coffee.jpg"]
    out: list = [(p.name, p) for p in files]
    rng = np.random.default_rng(7)
    for p in pristine_photos("test")[:n]:
        degs = synth.sample(rng, p_clean=0.0)
        img = synth.apply(np.asarray(Image.open(p).convert("RGB")), degs)
        out.append((f"{p.stem}+{'+'.join(d.kind for d in degs)}", img))
    return out


def _e2e(critic, refs: list, images: list) -> str:
    """Max |score diff| against the numpy backend's results and how many images change finding types."""
    got = [critic.score(img) for _, img in images]
    diff = max(abs(a.score - b.score) for a, b in zip(got, refs))
    moved = [n for (n, _), a, b in zip(images, got, refs)
             if sorted(f.type for f in a.findings) != sorted(f.type for f in b.findings)]
    over = sum(abs(a.score - b.score) > 1.0 for a, b in zip(got, refs))
    return (f"max |score diff| {diff:6.2f}, > 1.0 on {over}/{len(images)}, "
            f"finding types differ on {len(moved)}/{len(images)} {moved}")


def end_to_end(names: list[str], noise_db: tuple[float, ...] = (30, 40, 50)) -> None:
    """qds_lite onnx backend with each encoder vs the numpy backend (fp32); then, to see what accuracy
    the contract needs, the fp32 encoder with white noise added to its output (the pooled features; the
    tokens before the encoder stopped at the features) at a given SQNR."""
    import qds_lite

    images = e2e_images()
    refs = [qds_lite.load(backend="numpy").score(img) for _, img in images]
    for name in names:
        print(f"{name:<28} {_e2e(qds_lite.load(model_folder(WORK / f'{name}.onnx'), backend='onnx'), refs, images)}",
              flush=True)
    rng = np.random.default_rng(0)
    for db in noise_db:
        critic = qds_lite.load(backend="onnx")
        clean = critic.backend.encode

        def noisy(view, clean=clean, db=db):
            t = clean(view)
            return t + rng.standard_normal(t.shape).astype(np.float32) * np.sqrt((t ** 2).mean() / 10 ** (db / 10))

        critic.backend.encode = noisy
        print(f"{f'fp32 + {db} dB feature noise':<28} {_e2e(critic, refs, images)}", flush=True)


def sensitivity(s: Study) -> None:
    """Tokens SQNR with a single conv (and its Clip) quantized as in j_conv_clip, everything else fp32."""
    g = onnx.load(s.pre).graph
    clip = {n.input[0]: n.name for n in g.node if n.op_type == "Clip"}
    for n in (n for n in g.node if n.op_type == "Conv"):
        one = [n.name, *([clip[n.output[0]]] if n.output[0] in clip else [])]
        _static(s, WORK / "one.onnx", op_types_to_quantize=["Conv", "Clip"], nodes_to_quantize=one)
        print(f"{s.conv[n.name]:<22} {accuracy(s, WORK / 'one.onnx')['tokens']:5.1f} dB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="recipes to run (default: all)")
    ap.add_argument("--e2e", nargs="*", default=["fp32", *E2E], help="encoders to check end to end")
    ap.add_argument("--sensitivity", action="store_true", help="also quantize one conv at a time")
    a = ap.parse_args()
    s = setup()
    fp32 = WORK / "fp32.onnx"
    print(f"model {resolve().name} (manifest sha256 {resolve().sha256[:12]}), onnxruntime {ort.__version__}")
    print(HEADER)
    print(row("fp32", accuracy(s, fp32), speed(fp32, fp32)), flush=True)
    for fn in VARIANTS:
        if not a.only or fn.__name__ in a.only:
            path = WORK / f"{fn.__name__}.onnx"
            fn(s, path)
            print(row(fn.__name__, accuracy(s, path), speed(path, fp32)), flush=True)
    if a.e2e:
        end_to_end(a.e2e)
    if a.sensitivity:
        sensitivity(s)


if __name__ == "__main__":
    main()
