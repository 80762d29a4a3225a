"""What a critic returns: a frozen Result, its findings, the JSON trace and a one-line rationale."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import protocol as P
from .runtime import Trajectory
from .scale import ScoreScale, detail_cap

SEVERITY_WORDS = ((0.2, "slight"), (0.4, "mild"), (0.6, "moderate"), (0.8, "strong"), (1.01, "severe"))
TYPE_WORDS = {"blur": "blur", "motion_blur": "motion blur", "defocus": "defocus blur", "noise": "noise",
              "jpeg": "JPEG artifacts", "banding": "banding", "overexposure": "overexposure",
              "underexposure": "underexposure", "low_contrast": "low contrast", "color_cast": "colour cast",
              "oversharpen": "oversharpening halos", "haze": "haze", "upscale_artifacts": "upscaling artifacts",
              "generative_artifacts": "generative artifacts"}


@dataclass(frozen=True)
class Finding:
    type: str
    severity: float  # 0..1 (centre of the predicted severity bin)
    box: tuple[float, float, float, float]  # fractions of the oriented image: x0, y0, x1, y1
    evidence_zoom: int | None  # 1-based index of the zoom step that looked inside the box, if any

    @property
    def where(self) -> str:
        return describe_box(self.box)

    def describe(self) -> str:
        word = next(w for limit, w in SEVERITY_WORDS if self.severity < limit)
        return f"{word} {TYPE_WORDS[self.type]} ({self.where})"


@dataclass(frozen=True)
class Result:
    file: str
    score: float
    level: str
    level_probs: tuple[float, ...]
    findings: tuple[Finding, ...]
    steps: tuple[dict, ...]
    rationale: str
    model: dict
    backend: str
    timings_ms: dict
    # Where quality suffers, beyond the findings named: array [row, col, type] of shape (GRID, GRID,
    # len(P.FINDING_TYPES) + 1), each grid cell's probability of every finding type and, last, of "clean", as
    # the critic's diagnosis read them after its zooms and checks. None for a critic without a diagnosis.
    # Read-only; not in the JSON trace.
    damage_map: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Raw score points the diagnosis map took off the verdict's (qds_lite/scale.py); 0 without a damage share.
    damage_penalty: float = 0.0

    @property
    def trace(self) -> dict:
        """The JSON trace (qds_lite/trace.schema.json)."""
        return {
            "file": self.file, "score": round(self.score, 2), "level": self.level,
            "level_probs": [round(p, 4) for p in self.level_probs], "damage_penalty": round(self.damage_penalty, 2),
            "findings": [{"type": f.type, "severity": f.severity, "box": list(f.box), "evidence_zoom": f.evidence_zoom}
                         for f in self.findings],
            "steps": list(self.steps), "rationale": self.rationale, "model": self.model, "backend": self.backend,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


def describe_box(box: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = box
    if (x1 - x0) * (y1 - y0) >= 0.75:
        return "whole image"
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    vert = "top" if cy < 0.375 else "bottom" if cy > 0.625 else ""
    horiz = "left" if cx < 0.375 else "right" if cx > 0.625 else ""
    return f"{vert} {horiz}".strip() or "centre"


def _inside(cell_box: tuple[float, ...], box: tuple[float, ...]) -> bool:
    cx, cy = (cell_box[0] + cell_box[2]) / 2, (cell_box[1] + cell_box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def rationale(findings: tuple[Finding, ...], level: str, capped: bool = False) -> str:
    if not findings:
        return f"No visible defects found; overall {level}."
    parts = [f.describe() for f in findings] + (["almost no detail anywhere"] if capped else [])
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}; overall {level}."


def build_result(name: str, traj: Trajectory, size: tuple[int, int], model: dict, backend: str,
                 timings_ms: dict, scale: ScoreScale, detail: float | None = None) -> Result:
    """The Result of a trajectory. ``detail``: the photo's :func:`~qds_lite.scale.glance_detail`; a photo with
    almost none that the critic finds a fault in is scored no higher than :func:`~qds_lite.scale.detail_cap`."""
    probs = tuple(float(p) for p in traj.level_probs)
    score = scale.score_of(probs, traj.cell_probs)
    cap = 100.0 if detail is None or not traj.findings else detail_cap(detail)
    capped = score > cap
    score = min(score, cap)
    level = P.level_of(score)
    zoom_boxes = [P.cell_box(cell) for cell, _ in traj.zooms]
    findings = []
    for f in traj.findings:
        box = P.span_box(f.cell_tl, f.cell_br)
        evidence = next((i + 1 for i, zb in enumerate(zoom_boxes) if _inside(zb, box)), None)
        findings.append(Finding(P.FINDING_TYPES[f.type_index], P.severity_of_bin(f.severity_bin), box, evidence))
    steps = [{"tool": "glance", "size": [P.GLANCE_SIZE, P.GLANCE_SIZE], "native_px": list(size)}]
    for tool, looks in (("zoom", traj.zooms), ("check", traj.checks)):
        for cell, (x0, y0, x1, y1) in looks:
            steps.append({"tool": tool, "box": list(P.cell_box(cell)), "native_px": [x1 - x0, y1 - y0],
                          "window": [x0, y0, x1, y1]})
    found = tuple(findings)
    return Result(file=name, score=score, level=level, level_probs=probs, findings=found, steps=tuple(steps),
                  rationale=rationale(found, level, capped), model=model, backend=backend, timings_ms=timings_ms,
                  damage_map=_damage_map(traj.cell_probs), damage_penalty=scale.penalty(probs, traj.cell_probs))


def _damage_map(cell_probs: np.ndarray | None) -> np.ndarray | None:
    if cell_probs is None:
        return None
    out = np.array(cell_probs, np.float32).reshape(P.GRID, P.GRID, -1)
    out.flags.writeable = False
    return out
