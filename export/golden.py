"""Golden vectors: reference inputs and PyTorch outputs that the parity tests read without torch.

Like llm.c's state file: the reference writes a versioned file of inputs and outputs, the fallback's
test only reads and compares it. Regenerate with ``python -m export.golden`` after changing the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qds_lite import protocol as P
from qds_lite.model_store import sha256_file
from qds_lite.pixel_cues import window_cues

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "reference.npz"
GOLDEN_VERSION = 3  # 2: the encoder's pooled features, and the diagnosis on them; 3: the zoom's pixel cues
ZOOM_CELL = 5  # the cell the golden zoom is read as (the diagnosis' zoom head takes its glance features)


def reference_views() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic glance and zoom with edges, texture, gradients and noise (no external files)."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:P.GLANCE_SIZE, 0:P.GLANCE_SIZE].astype(np.float32)
    base = np.stack([xx, yy, (xx + yy) / 2], -1) * (255 / P.GLANCE_SIZE)
    base[64:160, 96:200] = [200, 40, 60]
    base += 12 * np.sin(xx / 3)[..., None] + rng.normal(0, 6, base.shape)
    glance = np.clip(base, 0, 255).astype(np.uint8)
    return glance, np.ascontiguousarray(glance[40:40 + P.ZOOM_SIZE, 70:70 + P.ZOOM_SIZE])


def reference_embeddings(d_model: int, length: int = 40) -> np.ndarray:
    return np.random.default_rng(99).standard_normal((length, d_model)).astype(np.float32)


def compute(weights: dict[str, np.ndarray], cfg, device: str = "cpu") -> dict[str, np.ndarray]:
    """Reference outputs for the golden inputs (device 'cuda' where a GPU is present).

    torch is imported here, not at module level, so the tests can read GOLDEN without it."""
    import torch

    from kernels.model import (
        diagnose_cues,
        diagnose_glance,
        diagnose_zoom,
        encoder_forward,
        reasoner_forward,
        to_torch,
        trunk_features,
    )

    p = to_torch(weights, device)
    glance, zoom = reference_views()
    out = {"glance": glance, "zoom": zoom, "embeddings": reference_embeddings(cfg.d_model)}
    with torch.no_grad():
        for name in ("glance", "zoom"):
            x = torch.from_numpy(out[name].astype(np.float32).transpose(2, 0, 1)[None] / 255.0).to(device)
            out[f"{name}_features"] = trunk_features(p, x)[0].cpu().numpy()
            out[f"{name}_tokens"] = encoder_forward(p, x)[0].cpu().numpy()
        if "diag.glance.w1" in p:  # the cell diagnosis, on the features above (a zoom on cell ZOOM_CELL)
            glance, zoom = (torch.from_numpy(out[f"{v}_features"]).to(device) for v in ("glance", "zoom"))
            out["glance_diagnosis"] = diagnose_glance(p, glance).cpu().numpy()
            out["zoom_diagnosis"] = diagnose_zoom(p, glance[ZOOM_CELL], zoom).cpu().numpy()
        if "diag.cues.w1" in p:  # the pixel-cue head on the zoom's cues (qds_lite.pixel_cues: NumPy is the spec)
            out["zoom_cues"] = window_cues(out["zoom"])
            out["cue_diagnosis"] = diagnose_cues(p, torch.from_numpy(out["zoom_cues"]).to(device)).cpu().numpy()
        x = torch.from_numpy(out["embeddings"][None]).to(device)
        out["logits"] = reasoner_forward(p, cfg, x)[0].cpu().numpy()
    return out


def write(weights: dict[str, np.ndarray], cfg, path: Path = GOLDEN) -> None:
    from export.manifest import wrote
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    out = compute(weights, cfg)
    out["version"] = np.array(GOLDEN_VERSION)
    out["weights_sha256"] = np.array(sha256_file(BUNDLED_DIR / DEFAULT_MODEL / "critic.npz"))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    wrote(path)


def main() -> None:
    from export.build import critic_config
    from qds_lite.model_store import load_weights, resolve

    write(load_weights(resolve()), critic_config())


if __name__ == "__main__":
    main()
