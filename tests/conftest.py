from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
SAMPLES = sorted(DATA.glob("*.jpg"))


@pytest.fixture(scope="session")
def model_files():
    from qds_lite.model_store import resolve

    return resolve()


@pytest.fixture(scope="session")
def weights(model_files):
    from qds_lite.model_store import load_weights

    return load_weights(model_files)


def torch_device() -> str:
    """The reference runs on CUDA where a GPU is present (CI never needs one)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL (tests/vlm_tiny.py) converted by export.vlm_convert to every quantization in
    vlm_tiny.QUANTS: built once per session, shared by tests/test_vlm.py and tests/test_distill.py."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    from tests import vlm_tiny

    tmp = tmp_path_factory.mktemp("vlm")
    vlm_tiny.build(tmp / "hf")
    out = tmp / "critic"
    done = vlm_tiny.convert(tmp / "hf", out)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "[1/6] language model (Qwen2_5_VLForConditionalGeneration)" in done.stdout
    assert done.stdout.count("wrote ") == len(vlm_tiny.QUANTS) + 2  # the GGUFs, the mmproj, manifest.json
    return out
