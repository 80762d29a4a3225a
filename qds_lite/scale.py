"""The score scale: a critic's raw score mapped through the calibration its manifest carries.

The raw score is 100 * (E[level] - 1) / 4 over the predicted level distribution, less, for a critic whose
manifest asks for it (``config["score"]``), a share of it read from its diagnosis map: the verdict's raw
score times ``damage_share`` times the damage, the mean over the ``damage_cells`` most damaged grid cells
of 1 - P(clean). The verdict reads three zooms; the map has read every cell (and checked the suspect ones
at native resolution) and grows more certain as damage grows, so the penalty orders images the verdict
ties (README, "The score reads the map too"). A share, not a number of points, so the raw score stays
within 0-100 without clipping (clipped scores tie).

Trained on synthetic severities, the small critic's raw scale comes out compressed on photos it has never
seen (a photo with a slight defect reads about 59 where training aims at 80; the manifest holds the
anchors). Its manifest therefore carries ``config["calibration"]``: a monotone piecewise-linear map
through anchor points fitted on the dev split (``export/calibrate.py``): the median raw score of dev images
with one whole-image defect of severity s maps to 100 * (1 - s), the score training aims at. A monotone map
keeps every ranking; critics without the entries (large VLM critics) keep their raw score.

A photo that holds almost no detail anywhere (:func:`glance_detail` under :data:`FLAT_DETAIL`) and in which the
critic finds a fault is scored no higher than :func:`detail_cap`. The critic trained on blur up to Gaussian
sigma 3.5 px; blurred much further a photo turns into smooth colour fields, which it then read as less
damaged than one blurred half as much (other degradation code, README *Other degradation code*). Training on
blur that far made it wary of smooth clean scenes instead (README *Blur past severity 1*); the cap sits where
no training photo comes near (every one holds 4x the detail and more), so it leaves photos within the
trained range alone, and it needs a finding, so a clean featureless photo the critic sees nothing wrong
with (a clear sky) keeps its score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import protocol as P
from .errors import ModelError
from .refine_ops import luma_601

# log of the glance's mean |Laplacian| (luma, 8-bit levels) under which a photo holds almost no detail: 1 level.
# The 193 training photos measure 1.42 and more at 768 px (1.36 at their own size; median 3.0), our own
# degradations within the trained range 0.26 and more (Gaussian blur of severity 1 on the dev photos); the
# other code's Gaussian blur of sigma 15 and 33 px at most -0.01 (README, *Blur past severity 1*).
FLAT_DETAIL = 0.0
CAP_AT_FLAT = 5.0  # the highest score at FLAT_DETAIL (what the critic gives blur of severity 1), ...
CAP_SLOPE = 5.0  # ... and this many points less per unit of log detail below it


def glance_detail(glance: np.ndarray) -> float:
    """How much detail a whole photo holds: log mean |Laplacian| of its glance's luma (GLANCE_SIZE px square,
    uint8), in 8-bit levels."""
    y = luma_601(glance)
    lap = 4.0 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return math.log(float(np.abs(lap).mean()) + 1e-3)


def detail_cap(detail: float) -> float:
    """The highest score a photo with ``detail`` (:func:`glance_detail`) may get once the critic finds a fault
    in it: no limit (100) at FLAT_DETAIL and above, CAP_AT_FLAT just below, falling by CAP_SLOPE per unit, so
    that less detail still means a lower score."""
    return 100.0 if detail >= FLAT_DETAIL else max(0.0, CAP_AT_FLAT + CAP_SLOPE * (detail - FLAT_DETAIL))


@dataclass(frozen=True)
class ScoreScale:
    """Piecewise-linear map from raw to calibrated score through (raw[i], score[i]); both strictly
    increasing from 0 to 100, so the map is a bijection of [0, 100] that keeps every order."""

    raw: tuple[float, ...] = (0.0, 100.0)
    score: tuple[float, ...] = (0.0, 100.0)
    damage_share: float = 0.0  # share of the raw score a fully damaged map takes off
    damage_cells: int = 1  # how many of the most damaged cells the damage is the mean of

    def __post_init__(self) -> None:
        if not (0.0 <= self.damage_share <= 1.0 and 1 <= self.damage_cells <= P.N_CELLS):
            raise ModelError(f"score settings need a damage share from 0 to 1 and 1 to {P.N_CELLS} damage cells, "
                             f"not {self.damage_share} and {self.damage_cells}")
        if len(self.raw) != len(self.score):
            raise ModelError(f"calibration has {len(self.raw)} raw points but {len(self.score)} scores")
        for name, xs in (("raw", self.raw), ("score", self.score)):
            if len(xs) < 2 or xs[0] != 0.0 or xs[-1] != 100.0 or not all(math.isfinite(x) for x in xs) or \
                    any(b <= a for a, b in zip(xs, xs[1:])):
                raise ModelError(f"calibration {name} points must rise strictly from 0 to 100: {list(xs)}")

    @classmethod
    def of_config(cls, config: Mapping, glance_alone: bool = False) -> ScoreScale:
        """The model's score settings and calibration; no penalty and the identity where its manifest has none.
        ``glance_alone``: for a zoom budget of 0, the calibration fitted on the glance alone
        (``config["glance"]``) where the manifest has one: that critic's raw scale is another."""
        entry, settings = config.get("calibration"), config.get("score", {})
        if glance_alone and "calibration" in config.get("glance", {}):
            entry = config["glance"]["calibration"]
        try:
            points = ((0.0, 100.0), (0.0, 100.0)) if entry is None else \
                (tuple(float(v) for v in entry["raw"]), tuple(float(v) for v in entry["score"]))
            return cls(*points, float(settings.get("damage_share", 0.0)), int(settings.get("damage_cells", 1)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"score or calibration entry of the manifest is malformed: {e!r}") from e

    def __call__(self, raw: float) -> float:
        return float(np.interp(raw, self.raw, self.score))

    def penalty(self, level_probs: Sequence[float], cell_probs: np.ndarray | Sequence | None) -> float:
        """Raw points the diagnosis map takes off the verdict's raw score: that score x ``damage_share`` x the
        mean of 1 - P(clean) over the ``damage_cells`` most damaged cells of ``cell_probs`` (cells x (types +
        clean)); 0 without a map."""
        if not self.damage_share or cell_probs is None:
            return 0.0
        damage = np.sort(1.0 - np.asarray(cell_probs, np.float64).reshape(P.N_CELLS, -1)[:, -1])
        return P.level_score(level_probs) * self.damage_share * float(np.clip(damage[-self.damage_cells:], 0, 1).mean())

    def raw_of(self, level_probs: Sequence[float], cell_probs: np.ndarray | Sequence | None = None) -> float:
        """Raw score: the level distribution's, less the map's :meth:`penalty`."""
        return P.level_score(level_probs) - self.penalty(level_probs, cell_probs)

    def score_of(self, level_probs: Sequence[float], cell_probs: np.ndarray | Sequence | None = None) -> float:
        """Calibrated score of a level distribution and (for a critic with a damage share) its map."""
        return self(self.raw_of(level_probs, cell_probs))
