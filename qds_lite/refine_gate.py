"""Which of refine's candidate edits to keep: a small learned judge of the critic's own verdicts on edits.

The critic's score rewards an edit that makes a photo crisper, brighter or smoother whether or not it brings
the photo closer to what it should be (a Gaussian deconvolution of camera shake rings, yet scores higher),
so "the score rose" alone kept edits that took a degraded photo further from its original in 11 % of the
development split's images. The gate estimates P(edit brings the photo closer to its original: SSIM against
the pristine photo rises) from what refine knows at that point without the original: the operation and the
finding that chose it, how much the score rose, whether the critic still reports that fault after the edit
and whether it reports new ones, and how much the edit changed the pixels. What a score gain means depends on
the operation that bought it (+10 from a deconvolution is not +10 from a denoise), so the model is a small
ensemble of gradient-boosted trees (a logistic model over the same features, shipped before, needed these
interactions spelt out and judged held-out edits worse: README, "Refine"). It is fit by ``python -m
export.refine_gate`` (scikit-learn, offline) on synthetic degradations of train-split photos and ships as
JSON (each tree's splits and leaf values, the feature names, the threshold): no pickle, NumPy to evaluate.
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


@dataclass(frozen=True, eq=False)
class EditGate:
    """A fitted gate: P(closer to the original) = sigmoid(bias + the sum over its trees of the value of the leaf
    that the features ``names`` (:func:`edit_features`') reach). Trees are arrays over their nodes, padded to
    one length: ``feature`` (the index into ``names`` a node splits on, -1 at a leaf), ``split`` (go left where
    the feature is <= it), ``left`` / ``right`` (child node indices, always after their parent), ``value``
    (a leaf's addition to the log-odds)."""

    names: tuple[str, ...]
    feature: np.ndarray  # (trees, nodes) int
    split: np.ndarray  # (trees, nodes) float
    left: np.ndarray  # (trees, nodes) int
    right: np.ndarray  # (trees, nodes) int
    value: np.ndarray  # (trees, nodes) float
    bias: float
    threshold: float  # the least probability at which an edit is kept
    info: Mapping  # how it was fit (command, data, held-out figures)

    def probability(self, features: Mapping[str, float]) -> float:
        # in float32, as scikit-learn's trees compare them when they are fit; x[-1]: what a leaf "reads"
        x = np.array([features[n] for n in self.names] + [0.0], np.float32).astype(np.float64)
        rows = np.arange(len(self.feature))
        node = np.zeros(len(self.feature), np.int64)
        while True:
            f = self.feature[rows, node]
            inner = f >= 0
            if not inner.any():
                break
            go_left = x[f] <= self.split[rows, node]
            node = np.where(inner, np.where(go_left, self.left[rows, node], self.right[rows, node]), node)
        logit = self.bias + float(self.value[rows, node].sum())
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))

    def to_json(self) -> dict:
        trees = []
        for t in range(len(self.feature)):
            n = int(np.count_nonzero(self.feature[t] >= -1))  # padding is -2
            trees.append({"feature": self.feature[t, :n].tolist(), "split": self.split[t, :n].tolist(),
                          "left": self.left[t, :n].tolist(), "right": self.right[t, :n].tolist(),
                          "value": self.value[t, :n].tolist()})
        return {"names": list(self.names), "trees": trees, "bias": self.bias, "threshold": self.threshold,
                "info": dict(self.info)}

    @classmethod
    def from_trees(cls, names: Sequence[str], trees: Sequence[Mapping[str, Sequence]], bias: float,
                   threshold: float, info: Mapping | None = None) -> EditGate:
        """A gate from per-tree node lists (the JSON form), checked: a malformed tree raises ValueError."""
        names = tuple(names)
        unknown = set(names) - set(FEATURES)
        if unknown:
            raise ValueError(f"features this runtime does not compute: {sorted(unknown)}")
        if not trees:
            raise ValueError("no trees")
        width = max(len(t["feature"]) for t in trees)
        feature = np.full((len(trees), width), -2, np.int64)  # -2: padding, never reached
        left, right = np.zeros_like(feature), np.zeros_like(feature)
        split, value = np.zeros(feature.shape), np.zeros(feature.shape)
        for i, t in enumerate(trees):
            n = len(t["feature"])
            if n == 0 or any(len(t[k]) != n for k in ("split", "left", "right", "value")):
                raise ValueError(f"tree {i}: every node needs a feature, split, left, right and value")
            feature[i, :n], split[i, :n], value[i, :n] = t["feature"], t["split"], t["value"]
            left[i, :n], right[i, :n] = t["left"], t["right"]
            inner = np.flatnonzero(feature[i, :n] >= 0)
            if (feature[i, :n] < -1).any() or (feature[i, :n] >= len(names)).any():
                raise ValueError(f"tree {i}: a node splits on a feature it does not name")
            kids = np.concatenate([left[i, inner], right[i, inner]])
            parents = np.concatenate([inner, inner])
            if (kids <= parents).any() or (kids >= n).any():  # children after parents: every walk ends
                raise ValueError(f"tree {i}: a child index is out of order or out of range")
        return cls(names, feature, split, left, right, value, float(bias), float(threshold), dict(info or {}))

    @classmethod
    def from_json(cls, doc: Mapping) -> EditGate:
        try:
            return cls.from_trees(doc["names"], doc["trees"], doc["bias"], doc["threshold"], doc.get("info", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"refine gate: {e}", hint="reinstall qds-lite, or refine with --no-gate") from None

    @classmethod
    def load(cls, path: str | Path = GATE_PATH) -> EditGate:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"refine gate {path}: {e}", hint="reinstall qds-lite, or refine with --no-gate") from None
