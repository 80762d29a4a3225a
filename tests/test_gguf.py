"""The GGUF reasoner (export/gguf_export.py -> llama.cpp) against the PyTorch reference.

A random reasoner is written as f32 / q8_0 / q4_0 GGUFs; a random (T=40, d) embedding sequence is fed
to llama.cpp in three chunks (16 "glance" rows, 1 row, 23 rows) and each chunk's last-position logits
are compared with ``kernels.model.reasoner_forward`` at that position.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qds_lite import protocol
from qds_lite.errors import BackendUnavailable, ModelError

# Max |logit - reference| allowed. The logits of this random init have std ~1.1. Measured over seeds
# 0..9 of init_head and of the inputs (n_threads=1, F32 KV cache, flash attention off):
TOLERANCE = {
    # f32: worst seen 1.2e-6 (float32 rounding, other summation order); 1e-4 leaves ~100x margin and
    # still catches real mismatches (flash attention's F16 internals alone gave 6.6e-4; a wrong RoPE
    # pairing or a missing norm moves logits by O(1)).
    "f32": 1e-4,
    # q8_0: 8-bit weights per 32-block; worst seen 0.040 (mean 0.031) -> 0.1.
    "q8_0": 0.1,
    # q4_0: 4-bit weights; worst seen 0.45 (mean 0.33) -> 1.0. A size/quality trade-off, not parity.
    "q4_0": 1.0,
}
# Against the reference run on the weights *as stored* (dequantized from the file), what is left is
# llama.cpp's CPU matmul rounding the activations to q8_0 for quantized weights: worst seen 0.028 for
# both q8_0 and q4_0 -> 0.1. This bounds the runtime itself, apart from the quantization of the weights.
TOLERANCE_STORED = {"f32": 1e-4, "q8_0": 0.1, "q4_0": 0.1}
CUTS = (0, 16, 17, 40)  # three chunks: glance tokens, one token, the rest


@pytest.fixture(scope="module")
def reasoner_setup(tmp_path_factory):
    pytest.importorskip("torch")
    from export.gguf_export import write_reasoner_gguf
    from kernels.model import CriticConfig, init_head

    cfg = CriticConfig(vocab_size=protocol.VOCAB_SIZE, n_slots=protocol.N_SLOTS)
    arrays = init_head(cfg, seed=0)
    out = tmp_path_factory.mktemp("gguf")
    paths = {}
    for qtype in ("f32", "q8_0", "q4_0"):
        paths[qtype] = out / f"reasoner-{qtype}.gguf"
        write_reasoner_gguf(arrays, cfg, paths[qtype], qtype=qtype)
    return cfg, arrays, paths


@pytest.fixture(scope="module")
def inputs_and_reference(reasoner_setup):
    import torch

    from kernels.model import reasoner_forward, to_torch

    cfg, arrays, _ = reasoner_setup
    x = np.random.default_rng(1).standard_normal((CUTS[-1], cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        ref = reasoner_forward(to_torch(arrays), cfg, torch.from_numpy(x)[None])[0].numpy()
    return x, ref


def run_chunks(session, x: np.ndarray) -> np.ndarray:
    return np.stack([session.step(x[a:b]) for a, b in zip(CUTS, CUTS[1:])])


def test_writer_layout(reasoner_setup):
    """Tensor names, types and shapes as llama.cpp's ``llama`` arch expects; norms stay F32."""
    import gguf

    cfg, arrays, paths = reasoner_setup
    reader = gguf.GGUFReader(paths["q8_0"])
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.rope.dimension_count"].contents() == cfg.d_model // cfg.n_heads
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == protocol.BOS
    types = {t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape)) for t in reader.tensors}
    assert len(types) == 3 + 9 * cfg.n_layers
    assert types["blk.0.attn_norm.weight"] == ("F32", (cfg.d_model,))
    assert types["blk.0.attn_q.weight"] == ("Q8_0", (cfg.d_model, cfg.d_model))  # ne = (in, out)
    assert types["blk.2.ffn_down.weight"] == ("Q8_0", (cfg.ffn_dim, cfg.d_model))
    assert types["token_embd.weight"] == ("F32", (cfg.d_model, cfg.vocab_size))
    assert types["output.weight"] == ("Q8_0", (cfg.d_model, cfg.vocab_size))


@pytest.mark.parametrize("qtype", ["f32", "q8_0", "q4_0"])
def test_logits_match_reference(reasoner_setup, inputs_and_reference, qtype):
    pytest.importorskip("llama_cpp")
    import torch

    from export.gguf_export import dequantized_arrays
    from kernels.model import reasoner_forward, to_torch
    from qds_lite.backends.gguf_backend import GGUFReasoner

    cfg, arrays, paths = reasoner_setup
    x, ref = inputs_and_reference
    with GGUFReasoner(paths[qtype]) as reasoner:
        got = run_chunks(reasoner.start(), x)
    last = [b - 1 for b in CUTS[1:]]
    with torch.no_grad():
        stored = dequantized_arrays(paths[qtype], arrays, cfg)
        ref_stored = reasoner_forward(to_torch(stored), cfg, torch.from_numpy(x)[None])[0].numpy()
    for what, want, tol in (("reference", ref[last], TOLERANCE[qtype]),
                            ("reference on the stored weights", ref_stored[last], TOLERANCE_STORED[qtype])):
        err = np.abs(got - want)
        chunk, tok = np.unravel_index(err.argmax(), err.shape)
        assert err.max() <= tol, (
            f"{qtype}: max |logit - {what}| = {err.max():.3g} > {tol} at chunk {chunk} (position "
            f"{CUTS[chunk + 1] - 1}), token {protocol.VOCAB[tok]}; per chunk: {err.max(axis=1)}")


def test_start_clears_the_sequence(reasoner_setup, inputs_and_reference):
    pytest.importorskip("llama_cpp")
    from qds_lite.backends.gguf_backend import GGUFReasoner

    _, _, paths = reasoner_setup
    x, _ = inputs_and_reference
    with GGUFReasoner(paths["f32"]) as reasoner:
        first = run_chunks(reasoner.start(), x)
        stale = reasoner.start()
        stale.step(x[:5])  # leave something in the cache
        second = run_chunks(reasoner.start(), x)
        with pytest.raises(RuntimeError, match="superseded"):
            stale.step(x[:1])
    np.testing.assert_array_equal(first, second)


def test_missing_file(tmp_path):
    from qds_lite.backends.gguf_backend import GGUFReasoner

    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelError, match="GGUF model not found") as info:
        GGUFReasoner(missing)
    assert str(missing) in str(info.value) and info.value.hint


def test_llama_cpp_missing(tmp_path, monkeypatch):
    from qds_lite.backends.gguf_backend import GGUFReasoner

    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(BackendUnavailable, match="llama-cpp-python is not installed") as info:
        GGUFReasoner(path)
    assert "qds-lite[gguf]" in info.value.hint
