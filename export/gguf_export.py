"""Write the critic's reasoner as a llama.cpp GGUF (arch ``llama``) and check it against the reference.

The reasoner in ``kernels/model.py`` *is* a llama.cpp ``llama`` model: RMSNorm, SwiGLU, no biases, and
rotary attention over adjacent pairs (x[2i], x[2i+1]) with angle pos * theta^(-2i/head_dim), which is
llama.cpp's LLAMA_ROPE_TYPE_NORM. So the weights go in unchanged: no Q/K row permutation (that is only
for Hugging Face checkpoints, whose rotate-half RoPE pairs x[i] with x[i + head_dim/2]).

Only the decoder goes in the file (``dec.tok_embd``, the layers, ``dec.out_norm``, ``dec.output``).
The encoder, projection and slot embeddings stay with the runtime, which feeds the reasoner
*embeddings* and never asks llama.cpp to tokenize, so the vocabulary below exists only so that the
model loads: the protocol's tokens, all marked CONTROL.

    python -m export.gguf_export --weights critic.npz --config config.json --out DIR --qtype q8_0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import gguf
import numpy as np

from kernels.model import CriticConfig
from qds_lite import protocol

CONTEXT_LENGTH = 256  # trajectories are < 64 tokens
QTYPES = {  # --qtype -> (matrix type, general.file_type)
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

# export() fails when llama.cpp's logits differ from the reference run on the weights *as stored* by
# more than this fraction of the reference logits' standard deviation. That isolates the runtime from
# the (chosen) quantization loss, which is only reported. Measured on random inits (tests/test_gguf.py):
# f32 1.2e-6, f16 1.4e-3 (llama.cpp rounds activations to F16 for F16 weights), q8_0 and q4_0 0.028
# (activations rounded to q8_0).
VERIFY_TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 0.1, "q4_0": 0.1}

_T = gguf.MODEL_TENSOR


def _name(t: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    return gguf.TENSOR_NAMES[t].format(bid=bid) + ".weight"


def tensor_map(cfg: CriticConfig) -> dict[str, str]:
    """Our parameter name -> GGUF tensor name (shapes need no change: numpy (out, in) is GGUF ne (in, out))."""
    m = {"dec.tok_embd": _name(_T.TOKEN_EMBD), "dec.out_norm": _name(_T.OUTPUT_NORM), "dec.output": _name(_T.OUTPUT)}
    per_layer = {"attn_norm": _T.ATTN_NORM, "wq": _T.ATTN_Q, "wk": _T.ATTN_K, "wv": _T.ATTN_V, "wo": _T.ATTN_OUT,
                 "ffn_norm": _T.FFN_NORM, "w_gate": _T.FFN_GATE, "w_up": _T.FFN_UP, "w_down": _T.FFN_DOWN}
    for i in range(cfg.n_layers):
        m |= {f"dec.{i}.{k}": _name(t, i) for k, t in per_layer.items()}
    return m


def _tensor_type(ours: str, arr: np.ndarray, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Norms, and any tensor whose rows are not whole quantization blocks, stay F32.

    The token table stays F32 too: llama.cpp never reads it (the runtime passes embeddings), and F32
    keeps it identical to the rows the runtime looks up itself (it is 24 KB)."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if arr.ndim != 2 or ours == "dec.tok_embd" or arr.shape[-1] % block:
        return gguf.GGMLQuantizationType.F32
    return qtype


def write_reasoner_gguf(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: str | os.PathLike,
                        qtype: str = "q8_0", name: str = "qds-critic") -> None:
    """Write the reasoner part of ``arrays`` (our flat parameter dict) to ``path`` as a GGUF."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r} not in {sorted(QTYPES)}")
    if len(protocol.VOCAB) != cfg.vocab_size:
        raise ValueError(f"cfg.vocab_size {cfg.vocab_size} != protocol vocabulary {len(protocol.VOCAB)}")
    mtype, ftype = QTYPES[qtype]
    head_dim = cfg.d_model // cfg.n_heads

    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_file_type(ftype)
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_heads)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    # A vocabulary only so that llama.cpp loads the model; never used to tokenize text.
    w.add_tokenizer_model("llama")
    w.add_token_list(list(protocol.VOCAB))
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_types([gguf.TokenType.CONTROL] * cfg.vocab_size)
    w.add_bos_token_id(protocol.BOS)
    w.add_eos_token_id(protocol.EOS)
    w.add_pad_token_id(protocol.PAD)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    for ours, theirs in tensor_map(cfg).items():
        arr = np.ascontiguousarray(arrays[ours], dtype=np.float32)
        ttype = _tensor_type(ours, arr, mtype)
        if ttype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(theirs, gguf.quants.quantize(arr, ttype))
        else:  # quantized: bytes (rows, row_bytes) with the element type given explicitly
            w.add_tensor(theirs, gguf.quants.quantize(arr, ttype), raw_dtype=ttype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantized_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                       cfg: CriticConfig) -> dict[str, np.ndarray]:
    """``arrays`` with the reasoner weights replaced by what the GGUF at ``path`` actually stores."""
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    out = dict(arrays)
    for ours, theirs in tensor_map(cfg).items():
        t = stored[theirs]
        out[ours] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(arrays[ours].shape).astype(np.float32)
    return out


def verify_gguf(path: str | os.PathLike, arrays: dict[str, np.ndarray], cfg: CriticConfig,
                n_tokens: int = 57, seed: int = 0) -> dict[str, float]:
    """Run the GGUF through llama-cpp-python on a random embedding sequence, fed in three chunks, and
    compare each chunk's last-position logits with ``kernels.model.reasoner_forward``.

    Returns the max abs logit difference against the float reference (``vs_float``: runtime error plus
    quantization error), against the reference run on the weights as stored (``vs_stored``), and the
    standard deviation of the reference logits (``logit_std``), for scale."""
    import torch

    from kernels.model import reasoner_forward, to_torch
    from qds_lite.backends.gguf_backend import GGUFReasoner

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, cfg.d_model)).astype(np.float32)
    cuts = [0, n_tokens // 3, 2 * n_tokens // 3, n_tokens]
    with torch.no_grad():
        refs = {k: reasoner_forward(to_torch(a), cfg, torch.from_numpy(x)[None])[0].numpy()
                for k, a in (("vs_float", arrays), ("vs_stored", dequantized_arrays(path, arrays, cfg)))}
    with GGUFReasoner(path) as reasoner:
        session = reasoner.start()
        got = np.stack([session.step(x[a:b]) for a, b in zip(cuts, cuts[1:])])
    last = [b - 1 for b in cuts[1:]]
    errors = {k: float(np.abs(got - ref[last]).max()) for k, ref in refs.items()}
    return errors | {"logit_std": float(refs["vs_float"].std())}


def export(arrays: dict[str, np.ndarray], cfg: CriticConfig, path: str | os.PathLike,
           qtype: str = "q8_0", name: str = "qds-critic") -> Path:
    """Write, verify against the reference (raises if llama.cpp disagrees with it), and print
    ``wrote PATH (sha256 ..., N bytes)``."""
    path = Path(path)
    write_reasoner_gguf(arrays, cfg, path, qtype=qtype, name=name)
    diffs = verify_gguf(path, arrays, cfg)
    print(f"{path.name}: max |logit - reference| = {diffs['vs_float']:.3g} (vs the weights as stored: "
          f"{diffs['vs_stored']:.3g}; reference logits std {diffs['logit_std']:.3g})")
    if diffs["vs_stored"] > VERIFY_TOLERANCE[qtype] * diffs["logit_std"]:
        path.unlink()
        raise RuntimeError(f"{path} (removed): llama.cpp logits differ from the reference by {diffs['vs_stored']:.3g}, "
                           f"over {VERIFY_TOLERANCE[qtype]} x logit std; the GGUF does not match kernels/model.py")
    data = path.read_bytes()
    print(f"wrote {path} (sha256 {hashlib.sha256(data).hexdigest()}, {len(data)} bytes)")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="critic .npz (our flat parameter names)")
    ap.add_argument("--config", required=True, help="config.json with CriticConfig fields")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--qtype", default="q8_0", choices=sorted(QTYPES))
    ap.add_argument("--name", default="qds-critic")
    args = ap.parse_args(argv)
    with np.load(args.weights) as z:
        arrays = {k: z[k] for k in z.files}
    fields = set(CriticConfig.__dataclass_fields__)
    cfg = CriticConfig(**{k: v for k, v in json.loads(Path(args.config).read_text()).items() if k in fields})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export(arrays, cfg, out / f"{args.name}-reasoner-{args.qtype}.gguf", qtype=args.qtype, name=args.name)


if __name__ == "__main__":
    main()
