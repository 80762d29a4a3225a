"""Oracle trajectories: what a perfect critic would do with a synthesized sample.

- zoom: the cells with the most full-reference damage, up to the zoom budget (the order is fixed
  when the sample is cached: export.samples.zoom_order);
- findings: one per applied degradation a viewer would notice (severity >= REPORTABLE), most severe first,
  with its type, severity bin and box;
- level: a quality target q in [1, 5] shared across degradation types, and a soft distribution
  over the five levels around it (Q-Align style).

The target q is one severity -> quality curve for all types: the synthesizer calibrates severity to be
perceptually comparable across kinds, a local degradation counts less than a global one
(area^0.4), and several degradations compound multiplicatively.
"""

from __future__ import annotations

import numpy as np

from export import synth
from export.samples import KIND_NAMES
from qds_lite import protocol as P

LEVEL_SIGMA = 0.5  # width of the soft level target, in levels
AREA_EXPONENT = 0.4
# Below this severity (the lowest severity bin) a degradation still lowers the quality target but is not
# named: taught to report barely visible damage, the critic had learned that nearly every photo has a fault
# (88 % of samples carry one) and flagged three in four clean test photos.
REPORTABLE = 0.2


def degradations(row: dict, i: int) -> list[tuple[str, float, tuple[int, int, int, int] | None]]:
    """(finding type, severity, region) of sample i, most severe first."""
    out = []
    for k, s, reg in zip(row["kinds"][i], row["severity"][i], row["region"][i]):
        if k < 0:
            continue
        region = None if reg[0] < 0 else tuple(int(v) for v in reg)
        out.append((synth.KINDS[KIND_NAMES[k]], float(s), region))
    return sorted(out, key=lambda d: -d[1])


def area(region: tuple[int, int, int, int] | None) -> float:
    if region is None:
        return 1.0
    c0, r0, c1, r1 = region
    return (c1 - c0) * (r1 - r0) / P.N_CELLS


def quality(degs: list[tuple[str, float, tuple | None]]) -> float:
    keep = 1.0
    for _, s, region in degs:
        keep *= 1.0 - s * area(region) ** AREA_EXPONENT
    return 1.0 + 4.0 * keep


def level_distribution(q: float) -> np.ndarray:
    levels = np.arange(1, len(P.LEVELS) + 1)
    p = np.exp(-0.5 * ((levels - q) / LEVEL_SIGMA) ** 2)
    return (p / p.sum()).astype(np.float32)


def region_cells(region: tuple[int, int, int, int] | None) -> tuple[int, int]:
    if region is None:
        return 0, P.N_CELLS - 1
    c0, r0, c1, r1 = region
    return r0 * P.GRID + c0, (r1 - 1) * P.GRID + (c1 - 1)


def cell_types(degs: list[tuple[str, float, tuple | None]], min_severity: float) -> np.ndarray:
    """Per grid cell, the index of the finding type of the most severe degradation covering it with at
    least ``min_severity``, or len(FINDING_TYPES) where none does (the cell looks clean)."""
    out = np.full(P.N_CELLS, len(P.FINDING_TYPES), np.int64)
    best = np.zeros(P.N_CELLS)
    for kind, s, region in degs:
        c0, r0, c1, r1 = region if region is not None else (0, 0, P.GRID, P.GRID)
        for r in range(r0, r1):
            for c in range(c0, c1):
                cell = r * P.GRID + c
                if s >= min_severity and s > best[cell]:
                    best[cell], out[cell] = s, P.FINDING_TYPES.index(kind)
    return out


def finding_tokens(degs: list[tuple[str, float, tuple | None]]) -> list[int]:
    out = []
    for kind, s, region in [d for d in degs if d[1] >= REPORTABLE][:P.MAX_FINDINGS]:
        tl, br = region_cells(region)
        out += [P.FIND, P.TYPE0 + P.FINDING_TYPES.index(kind), P.SEV0 + P.severity_bin(s), P.CELL0 + tl, P.CELL0 + br]
    return out
