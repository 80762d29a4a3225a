"""Which of refine's candidate edits to keep: a small learned judge of the critic's own verdicts on edits.

The critic's score rewards an edit that makes a photo crisper, brighter or smoother whether or not it brings
the photo closer to what it should be (a Gaussian deconvolution of camera shake rings, yet scores higher),
so "the score rose" alone kept edits that took a degraded photo further from its original in 11 % of the
development split's images. The gate is a logistic model of P(edit brings the photo closer to its original:
SSIM against the pristine photo rises) from what refine knows at that point without the original: the
operation and the finding that chose it, how much the score rose, whether the critic still reports that
fault after the edit and whether it reports new ones, and how much the edit changed the pixels. It is fit by
``python -m export.refine_gate`` on synthetic degradations of train-split photos (README, "Refine") and
ships as JSON (weights, feature names, standardisation, threshold): no pickle, NumPy to evaluate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .result import Finding, Result

GATE_PATH = Path(__file__).resolve().parent / "data" / "refine_gate.json"
OPS = ("denoise", "deblock", "deconvolve", "unsharp", "exposure", "stretch", "white_balance", "deband", "soften")
# The finding that chose an edit, where its operation does not already say it (blur, motion blur and defocus
# share deconvolution and unsharp masking; over- and underexposure, exposure; low contrast and haze, stretch).
SHARED_OP_FINDINGS = ("blur", "motion_blur", "defocus", "overexposure", "underexposure", "low_contrast", "haze")
FEATURES = ("gain", "score_before", "severity", "area", "milder", "change", "still_found", "new_faults",
            "faults_after", *(f"op={o}" for o in OPS), *(f"finding={t}" for t in SHARED_OP_FINDINGS))
Box = tuple[float, float, float, float]


def overlap(a: Box | None, b: Box | None) -> float:
    """Share of box ``b`` (None: the whole image) that box ``a`` covers."""
    a, b = a or (0.0, 0.0, 1.0, 1.0), b or (0.0, 0.0, 1.0, 1.0)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)


def edit_features(finding: Finding, region: Box | None, op: str, rank: int, n_candidates: int,
                  before: Result, after: Result, rgb: np.ndarray, edited: np.ndarray) -> dict[str, float]:
    """What the gate reads about one candidate edit: ``op``, the ``rank``-th of ``finding``'s ``n_candidates``
    (strongest first within each operation; for blur, both deconvolutions before both unsharp masks), applied
    to ``region``, turned ``rgb`` scored ``before`` into ``edited`` scored ``after``."""
    area = 1.0 if region is None else (region[2] - region[0]) * (region[3] - region[1])
    still = any(f.type == finding.type and overlap(f.box, region) >= 0.5 for f in after.findings)
    types_before, types_after = {f.type for f in before.findings}, {f.type for f in after.findings}
    change = float(np.abs(edited.astype(np.int16) - rgb.astype(np.int16)).mean())
    feats = {
        "gain": after.score - before.score,
        "score_before": before.score,
        "severity": finding.severity,
        "area": area,
        "milder": rank / max(n_candidates - 1, 1),  # 0: the first candidate of its finding, 1: the last
        "change": math.log1p(change / area),  # mean absolute change over the image, per pixel of the region
        "still_found": float(still),  # the critic still reports this fault over most of the edited region
        "new_faults": float(len(types_after - types_before)),
        "faults_after": float(len(after.findings)),
    }
    feats |= {f"op={o}": float(op == o) for o in OPS}
    feats |= {f"finding={t}": float(finding.type == t) for t in SHARED_OP_FINDINGS}
    return feats


def _value(features: Mapping[str, float], name: str) -> float:
    """A feature by name; ``a*b`` is the product of features ``a`` and ``b`` (an interaction: how much a
    score gain means depends on the operation that bought it)."""
    return math.prod(features[n] for n in name.split("*"))


@dataclass(frozen=True, eq=False)
class EditGate:
    """A fitted gate: P(closer to the original) = sigmoid(bias + weights . (features - mean) / scale), the
    features named by ``names`` (:func:`edit_features`' and products of them)."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float  # the least probability at which an edit is kept
    info: Mapping  # how it was fit (command, data, held-out figures)

    def probability(self, features: Mapping[str, float]) -> float:
        x = (np.array([_value(features, n) for n in self.names], np.float64) - self.mean) / self.scale
        logit = self.bias + float(x @ self.weights)
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))

    def to_json(self) -> dict:
        return {"names": list(self.names), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias, "threshold": self.threshold,
                "info": dict(self.info)}

    @classmethod
    def from_json(cls, doc: Mapping) -> EditGate:
        try:
            names = tuple(doc["names"])
            arrays = [np.asarray(doc[k], np.float64) for k in ("mean", "scale", "weights")]
            if any(a.shape != (len(names),) for a in arrays):
                raise ValueError("weights, mean and scale must have one value per feature")
            unknown = {f for n in names for f in n.split("*")} - set(FEATURES)
            if unknown:
                raise ValueError(f"features this runtime does not compute: {sorted(unknown)}")
            return cls(names, *arrays, float(doc["bias"]), float(doc["threshold"]), doc.get("info", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"refine gate: {e}", hint="reinstall qds-lite, or refine with --no-gate") from None

    @classmethod
    def load(cls, path: str | Path = GATE_PATH) -> EditGate:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"refine gate {path}: {e}", hint="reinstall qds-lite, or refine with --no-gate") from None


def fit(rows: Sequence[Mapping[str, float]], labels: Sequence[bool], *, names: Sequence[str] | None = None,
        l2: float = 1.0, threshold: float = 0.5, info: Mapping | None = None) -> EditGate:
    """L2-regularised logistic regression by Newton's method on standardised features ``names`` (default: every
    feature of the rows); a few thousand rows of a few dozen features: exact and instant, no solver needed."""
    names = tuple(rows[0] if names is None else names)
    x = np.array([[_value(r, n) for n in names] for r in rows], np.float64)
    y = np.asarray(labels, np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return EditGate(names, mean, scale, w[1:], float(w[0]), threshold, dict(info or {}))
