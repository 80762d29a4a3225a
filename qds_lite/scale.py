"""The score scale: a critic's raw score mapped through the calibration its manifest carries.

The raw score is 100 * (E[level] - 1) / 4 over the predicted level distribution. Trained on synthetic
severities, the small critic's raw scale comes out compressed on photos it has never seen (a photo with a
slight defect reads about 59 where training aims at 80; the manifest holds the anchors). Its manifest therefore
carries ``config["calibration"]``: a monotone piecewise-linear map through anchor points fitted on the
dev split (``export/calibrate.py``): the median raw score of dev images with one whole-image defect of
severity s maps to 100 * (1 - s), the score training aims at. A monotone map keeps every ranking;
critics without the entry (large VLM critics) keep their raw score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import protocol as P
from .errors import ModelError


@dataclass(frozen=True)
class ScoreScale:
    """Piecewise-linear map from raw to calibrated score through (raw[i], score[i]); both strictly
    increasing from 0 to 100, so the map is a bijection of [0, 100] that keeps every order."""

    raw: tuple[float, ...] = (0.0, 100.0)
    score: tuple[float, ...] = (0.0, 100.0)

    def __post_init__(self) -> None:
        if len(self.raw) != len(self.score):
            raise ModelError(f"calibration has {len(self.raw)} raw points but {len(self.score)} scores")
        for name, xs in (("raw", self.raw), ("score", self.score)):
            if len(xs) < 2 or xs[0] != 0.0 or xs[-1] != 100.0 or not all(math.isfinite(x) for x in xs) or \
                    any(b <= a for a, b in zip(xs, xs[1:])):
                raise ModelError(f"calibration {name} points must rise strictly from 0 to 100: {list(xs)}")

    @classmethod
    def of_config(cls, config: Mapping) -> ScoreScale:
        """The model's calibration, or the identity where its manifest has none."""
        entry = config.get("calibration")
        if entry is None:
            return cls()
        try:
            return cls(tuple(float(v) for v in entry["raw"]), tuple(float(v) for v in entry["score"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"calibration entry of the manifest is malformed: {e!r}") from e

    def __call__(self, raw: float) -> float:
        return float(np.interp(raw, self.raw, self.score))

    def score_of(self, level_probs: Sequence[float]) -> float:
        """Calibrated score of a level distribution."""
        return self(P.level_score(level_probs))
