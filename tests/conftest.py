from __future__ import annotations

from pathlib import Path

import pytest

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
