"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint (Hugging Face layout) with no download.

The architecture is the real one (``Qwen2_5_VLForConditionalGeneration``, M-RoPE text decoder, windowed
vision transformer with 2x2 patch merger), shrunk to 2 text layers of width 64 and 3 vision blocks of
width 64, so that ``export.vlm_convert`` exercises exactly the code paths a 7B checkpoint takes.

The tokenizer cannot be Qwen's (its 151k-token vocabulary is a download), so a small SentencePiece
model is trained here on the protocol's own text, with byte fallback (every string can be encoded)
and the Qwen control tokens as user-defined symbols. llama.cpp's converter takes the SentencePiece
route for it (``tokenizer.model``); real Qwen checkpoints take its BPE route, whose pre-tokenizer is
recognised by hash, which a home-made BPE vocabulary can never match.

Run ``python -m tests.vlm_tiny OUT_DIR`` to write one by hand. :func:`convert` turns it into a qds VLM critic
folder the way a user does (``export.vlm_convert``); the ``tiny_vlm`` test fixture and
``benchmarks/vlm_overhead.py`` both use it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root (export.vlm_convert runs from there)
NAME = "qds-tiny-vlm"

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>")
# Qwen2.5-VL's own chat template (images and text parts, no tools), shortened.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "You are a photo quality critic. Look at the image, zoom into regions that decide its quality, "
    "then answer with a score from 0 to 100.",
    "<think>The sky looks noisy, the subject is sharp.</think><zoom>[0.55,0.10,0.80,0.35]</zoom>",
    "<find>noise 0.6 [0.55,0.10,0.80,0.35]</find><answer>63</answer>",
    "blur motion_blur defocus noise jpeg banding overexposure underexposure low_contrast color_cast",
    "oversharpen haze upscale_artifacts generative_artifacts 0123456789 [ ] , . < > / = \" ' :",
)
QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")  # what the tests convert the tiny checkpoint to
# VLMCritic settings that keep a test run short; one llama.cpp thread: on a busy 2-core machine two made it 100x slower
FAST = {"n_threads": 1, "n_ctx": 4096, "glance_side": 224, "think_chars": 48}
VOCAB_SIZE = 512  # 256 byte pieces + specials + a few hundred merges; the embedding is padded to this
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}}
# depth >= 3: llama.cpp maps the merger's "mlp.2" through its per-block name table, sized by depth
VISION = {"depth": 3, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 64,
          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [2]}


def build_tokenizer(out: Path) -> dict[str, int]:
    """Train the SentencePiece model into ``out``; returns the special tokens' ids."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False, byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", user_defined_symbols=list(SPECIALS),
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, character_coverage=1.0, minloglevel=2, num_threads=1)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = {tok: sp.piece_to_id(tok) for tok in SPECIALS}
    decoder = {str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                        "single_word": False} for t, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "added_tokens_decoder": decoder, "chat_template": CHAT_TEMPLATE}, indent=1))
    return ids


def build(out: str | Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, the tokenizer and preprocessor config to ``out``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(out)
    config = Qwen2_5_VLConfig(
        text_config={**TEXT, "vocab_size": VOCAB_SIZE, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"]}, vision_config=VISION,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2,
        "temporal_patch_size": 2, "min_pixels": 56 * 56, "max_pixels": 448 * 448,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return out


def convert(hf_dir: str | Path, out: str | Path, quants: tuple[str, ...] = QUANTS) -> subprocess.CompletedProcess:
    """Convert a checkpoint written by :func:`build` with ``python -m export.vlm_convert`` (a subprocess from
    the repository root, as a user runs it) into the qds VLM critic folder ``out``; returns the finished
    process (its return code and captured output are the caller's to check)."""
    return subprocess.run([sys.executable, "-m", "export.vlm_convert", str(hf_dir), "--out", str(out),
                           "--name", NAME, "--quant", *quants], cwd=ROOT, capture_output=True, text=True)


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "build/vlm_tiny_hf"))
