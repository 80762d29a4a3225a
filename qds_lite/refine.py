"""`qds refine`: diagnosis-guided enhancement (Q-DeepSight's Perceptual-in-Generation), training-free.

The critic's findings choose the next operation and where to apply it; each candidate edit is re-scored, and
among those that raise the critic's score by a margin the one the edit gate (:mod:`qds_lite.refine_gate`)
rates most likely to bring the photo closer to its original is kept if the gate passes it and the
naturalness guard (NIQE, lower is better) does not worsen. The loop stops when no finding's operation helps,
or after ``max_steps`` kept edits. A photo with no findings is left exactly as it is.

Each finding type maps to a kind of fix (:data:`OPERATIONS`) with several strengths, set from the finding's
severity (the critic's severities are calibrated on the degradations it was trained on) and from measurements
of the pixels (noise level, white point, percentiles). The critic also reports faults that are not there, and
its score can be raised by edits that take a photo further from the truth (darker, more contrast, crisper), so
a fix is only tried where the pixels bear its finding out (thresholds below, set beyond what pristine photos
measure), each kind of fix is made at most once over the same part of the image (a region at least half
inside one it was made in counts as the same), and the gate (without it, the score) then picks the strength.
A local finding is fixed inside its box only, blended in with a feathered mask; one that covers most of the
image is fixed globally, and so is a tonal or colour finding whose fault the rest of the photo shows too.
A local edit is judged by the critic looking at it: the photo before and each candidate are scored with the
critic's zooms sent to the region first (:func:`look_cells`), since left to itself the critic often looks
elsewhere and its score then barely moves whatever the edit did there. With ``cautious``, a local edit is kept
only where the critic finds the same fault over most of its box again in the photo reframed a little
(:func:`seen_reframed`): many of its false local findings come from how a scene falls on its grid, though it
misses some true ones reframed too, so fewer edits help as well as fewer harm (README, "Refine", *A second
look, for the cautious*).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import protocol as P
from . import refine_ops as ops
from .atomic import atomic_open
from .critic import Critic
from .errors import QdsError
from .io import LoadedImage, Source, load_image
from .model_store import check_package_data
from .refine_gate import GATE_PATH, EditGate, edit_features, overlap
from .result import Finding, Result, describe_box

Box = tuple[float, float, float, float]
SCORE_MARGIN = 0.5  # a kept step must raise the score by at least this much (0-100 scale)
NIQE_SLACK = 0.3  # ... and may not raise NIQE by more than this (NIQE moves ~0.1-0.2 under tone edits it cannot see)
# Evidence the pixels must show before a finding's operation is tried (the critic also reports faults that are
# not there). Each threshold sits beyond what most pristine train/dev photos measure (median in brackets).
MIN_CLIPPED = 0.05  # share of blown (white) pixels before darkening (0.001; 90th percentile 0.03)
MIN_EV = 0.5  # exposure change worth making, in stops (white point: 0.01 stops)
MIN_NOISE = 2.0  # noise sigma in 8-bit levels, luma or chroma, before denoising (1.0 and 0.9)
MAX_RANGE = 205.0  # tonal range in 8-bit levels below which contrast is stretched (254; 2nd percentile 205)
MIN_CAST = 0.2  # largest white-balance log-gain before correcting a cast (0.09)
MIN_LOCAL_CAST = 0.1  # ... and a box's largest log-gain to the balance of the rest of the photo (0.05)
MIN_BLOCKINESS = 1.1  # JPEG 8x8 block-edge contrast ratio before deblocking (1.02; 98th percentile 1.10)
# Share of a photo's tonal range a fault of severity 1 takes away (export.synth's low_contrast and haze)
CONTRAST_LOSS = {"low_contrast": 0.85, "haze": 0.75}
STRENGTHS = (1.0, 0.6, 0.35)  # denoising and white balance: fractions of the strength the pixels measure
REFRAME = 0.05  # share of each side the second look at a local finding leaves out (a fifth of a grid cell)
GUARD_LONG_SIDE = 1024  # NIQE is measured on a view this large at most (it is a relative check)
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass(frozen=True)
class Step:
    """One tried edit: the finding that chose it, the operation (best of its strengths), where, and whether
    it was kept."""

    finding: str  # the finding type that chose the operation
    op: str
    params: dict
    region: Box | None  # fractional box of the oriented image; None = whole image
    score_before: float
    score_after: float
    niqe_before: float
    niqe_after: float
    kept: bool
    reason: str  # why it was kept or not, in words
    p_better: float | None = None  # the gate's P(the edit brings the photo closer to its original); None: no gate
    looked: tuple[int, ...] = ()  # cells both verdicts zoomed into first (a local edit); empty: the critic's own

    @property
    def where(self) -> str:
        return "whole image" if self.region is None else describe_box(self.region)

    def to_json(self) -> dict:
        return {"finding": self.finding, "op": self.op, "params": self.params,
                "region": None if self.region is None else list(self.region), "where": self.where,
                "score_before": round(self.score_before, 2), "score_after": round(self.score_after, 2),
                "niqe_before": _round(self.niqe_before), "niqe_after": _round(self.niqe_after),
                "p_better": _round(self.p_better) if self.p_better is not None else None,
                "looked": [list(P.cell_box(c)) for c in self.looked], "kept": self.kept, "reason": self.reason}


@dataclass(frozen=True)
class Refinement:
    """What :func:`refine` did: the result image, every edit it tried, and the critic's verdicts before/after."""

    image: Image.Image  # the refined, oriented sRGB image (the input's own pixels when nothing was kept)
    steps: tuple[Step, ...]  # every edit tried, in order
    initial: Result
    final: Result
    source_path: str | None = None  # the input file, when refine was given a path (write_refined never overwrites it)

    @property
    def changed(self) -> bool:
        return any(s.kept for s in self.steps)

    def to_json(self) -> dict:
        return {"file": self.initial.file, "changed": self.changed, "score_before": round(self.initial.score, 2),
                "score_after": round(self.final.score, 2), "steps": [s.to_json() for s in self.steps],
                "initial": self.initial.trace, "final": self.final.trace}


# --- which operation for which finding --------------------------------------------------------------
Candidate = tuple[str, dict]  # operation name (a function of refine_ops) and its keyword arguments


def _blur_ops(f: Finding, rgb: np.ndarray) -> list[Candidate]:
    """Wiener deconvolution with a Gaussian kernel somewhat smaller than the severity suggests, and an unsharp
    mask, each at two strengths. A too-large kernel rings and the critic rewards crispness more than fidelity,
    so the kernel errs small; a Gaussian suits defocus too (a disk of the wrong radius rings far worse), and
    motion blur, whose direction is not estimated, gets no more than this."""
    sigma = 0.7 * (0.2 + 3.3 * f.severity)
    return [("deconvolve", {"kernel": "gaussian", "size": round(sigma, 2), "nsr": 0.02}),
            ("deconvolve", {"kernel": "gaussian", "size": round(0.7 * sigma, 2), "nsr": 0.02}),
            ("unsharp", {"sigma": 1.5, "amount": 0.7}), ("unsharp", {"sigma": 1.5, "amount": 0.35})]


def _noise_ops(f: Finding, rgb: np.ndarray) -> list[Candidate]:
    """Non-local means with the luma and chroma strengths from the measured noise (none where there is none)."""
    luma, chroma = ops.noise_sigma(rgb), ops.chroma_noise(rgb)
    if luma < MIN_NOISE and chroma < MIN_NOISE:
        return []
    h_chroma = max(luma, 2.5 * chroma if chroma >= MIN_NOISE else luma)
    return [("denoise", {"h_luma": round(k * luma, 2), "h_chroma": round(k * h_chroma, 2)}) for k in STRENGTHS]


def _exposure_ops(f: Finding, rgb: np.ndarray, below_rest: float | None = None) -> list[Candidate]:
    """Gains in linear light, each bounded by what the histogram shows, so that a finding the pixels do not
    bear out leads to nothing: darken only where highlights are blown, and no further than a mid-grey key;
    brighten only while the brightest pixels are well below white, and no further than white.

    ``below_rest``: for a local fault, the stops its box is below the rest of the photo (negative: above).
    A box is lifted (or darkened) no further than the rest's key: a local exposure fault is a part of the
    photo darker or brighter than the photo around it, and taking it past its surroundings, the severity's
    full gain, turned the dark sky of a clean dusk photo into a bright patch (SSIM 0.97 on a test photo)."""
    if f.type == "overexposure":
        if ops.clipped_share(rgb) < MIN_CLIPPED:
            return []
        gain = max(2.0 ** -(0.1 + 2.0 * f.severity), min(1.0, ops.key_gain(rgb)))
        if below_rest is not None:  # never brighter: a box darker than the rest is left as it is
            gain = max(gain, 2.0 ** min(below_rest, 0.0))
    else:
        gain = min(ops.white_gain(rgb), 2.0 ** (0.65 + 2.85 * f.severity))
        if below_rest is not None:  # never darker: a box brighter than the rest is left as it is
            gain = min(gain, 2.0 ** max(below_rest, 0.0))
    if abs(math.log2(gain)) < MIN_EV:
        return []
    return [("exposure", {"gain": round(gain ** k, 3)}) for k in (1.0, 0.75, 0.5)]


def _contrast_ops(f: Finding, rgb: np.ndarray, local: bool = False) -> list[Candidate]:
    """Percentile stretch, in full, three quarters and half, where the tones do not span the range (low
    contrast and haze alike: the critic mixes them up, and per-channel black points, the textbook dehaze,
    shift the colours of photos that have no dark pixels in some channel). The levels are those measured
    where the edit acts in full: a local stretch used to measure its own, on pixels reaching past the box
    into the clean margin its mask feathers into, and came out near the identity.

    A whole photo is stretched to the full range; a part of one need not span it (a white dress, a sky), so a
    ``local`` stretch widens the box's range about its middle by no more than the finding's severity undoes
    (:data:`CONTRAST_LOSS`), as a local exposure fix goes no further than the rest of the photo."""
    lo, hi = ops.stretch_levels(rgb)
    if hi - lo > MAX_RANGE:
        return []
    params: dict = {"levels": [round(lo, 1), round(hi, 1)]}
    if local:
        width = (hi - lo) * min(255.0 / max(hi - lo, 8.0), 1.0 / (1.0 - CONTRAST_LOSS[f.type] * f.severity))
        black = min(max((lo + hi - width) / 2.0, 0.0), 255.0 - width)
        params["target"] = [round(black, 1), round(black + width, 1)]
    return [("stretch", {"amount": k} | params) for k in (1.0, 0.75, 0.5)]


def _colour_ops(f: Finding, rgb: np.ndarray, toward: np.ndarray | None = None) -> list[Candidate]:
    """White balance: the whole photo's made neutral; a box's (``toward``: the gains that bring it to the
    balance of the rest of the photo, :func:`candidate_edits`) made like the rest. A local cast is a part of
    the photo lit or rendered unlike the rest, so the rest is its reference: on quarter boxes of the 26 dev
    photos with a cast of severity 0.3-0.8 (scratch, `build/scratch/rel_cast.py`) this took the core of the
    box from 9.2 to 4.8 levels from the original on average (closer on 85 %), balancing the box by itself to
    8.3 (68 %)."""
    if toward is None:
        if ops.cast_strength(rgb) < MIN_CAST:
            return []
        return [("white_balance", {"p": 12.0, "amount": k}) for k in STRENGTHS]
    if ops.largest_log_gain(toward) < MIN_LOCAL_CAST:
        return []
    gains = [round(float(g), 4) for g in toward]
    return [("white_balance", {"p": 12.0, "amount": k, "gains": gains}) for k in STRENGTHS]


def _jpeg_ops(f: Finding, rgb: np.ndarray) -> list[Candidate]:
    if ops.blockiness(rgb) < MIN_BLOCKINESS:
        return []
    h = 1.0 + 6.0 * f.severity
    return [("deblock", {"h": round(k * h, 2)}) for k in (1.0, 0.5, 0.25)]


def _banding_ops(f: Finding, rgb: np.ndarray) -> list[Candidate]:
    return [("deband", {"sigma": sigma, "flat": 4.0}) for sigma in (3.0, 1.5, 0.8)]


def _oversharpen_ops(f: Finding, rgb: np.ndarray) -> list[Candidate]:
    a = 0.2 + 2.8 * f.severity
    frac = round(a / (1.0 + a), 3)  # removes an unsharp mask of amount a, to first order
    return [("soften", {"sigma": 2.0, "amount": round(k * frac, 3)}) for k in (1.0, 0.75, 0.5)]


OPERATIONS: dict[str, Callable[[Finding, np.ndarray], list[Candidate]]] = {
    "blur": _blur_ops, "motion_blur": _blur_ops, "defocus": _blur_ops, "noise": _noise_ops,
    "jpeg": _jpeg_ops, "banding": _banding_ops, "overexposure": _exposure_ops, "underexposure": _exposure_ops,
    "low_contrast": _contrast_ops, "haze": _contrast_ops, "color_cast": _colour_ops,
    "oversharpen": _oversharpen_ops,
}  # upscale_artifacts and generative_artifacts: no training-free fix; reported, never edited


# --- the loop --------------------------------------------------------------------------------------
def refine(critic: Critic, source: Source | LoadedImage, *, max_steps: int = 4, margin: float = SCORE_MARGIN,
           niqe_slack: float = NIQE_SLACK, gate: EditGate | bool = True, cautious: bool = False) -> Refinement:
    """Improve ``source`` step by step where the critic finds fault; see the module docstring.

    ``max_steps`` bounds the kept edits; ``margin`` is the score gain a step must bring (0-100 scale);
    ``niqe_slack`` how much NIQE may rise; ``gate`` judges which edit to keep (True: the shipped
    :mod:`~qds_lite.refine_gate`, False: none, the best-scoring edit); ``cautious`` keeps a local edit only
    where the critic finds its fault again in the photo reframed (:func:`seen_reframed`): fewer edits that
    harm, fewer that help. Needs OpenCV (the ``refine`` extra) once there is something to fix.
    """
    if max_steps < 0:
        raise QdsError(f"max_steps must be 0 or more, not {max_steps}")
    loaded = source if isinstance(source, LoadedImage) else load_image(source)
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    rgb = loaded.pixels
    initial = result = critic.score(loaded)
    steps: list[Step] = []
    nat: float | None = None
    kept = 0
    done: list[tuple[Callable, Box | None]] = []  # (kind of fix, region) made: never again over most of it
    while kept < max_steps and result.findings:
        for finding, plan, region in fixes(result, rgb):
            if any(p is plan and _covers(r, region) for p, r in done):
                continue
            candidates = candidate_edits(finding, plan, rgb, region)
            if not candidates:  # the pixels do not bear the finding out
                continue
            if nat is None:
                nat = _naturalness(rgb)
            judge = default_gate() if gate is True else gate if isinstance(gate, EditGate) else None
            step, edited, res, nat_after = _try(critic, rgb, result, nat, finding, region, candidates, margin,
                                                niqe_slack, judge, cautious)
            steps.append(step)
            if step.kept:
                rgb, result, nat, kept = edited, res, nat_after, kept + 1
                done.append((plan, region))
                break
        else:
            break  # no finding's operation helped
    final = dataclasses.replace(result, file=initial.file)
    image = loaded.full if not kept and isinstance(loaded.full, Image.Image) else Image.fromarray(rgb)
    return Refinement(image=image, steps=tuple(steps), initial=initial, final=final, source_path=path)


def fixes(result: Result, rgb: np.ndarray) -> Iterator[tuple[Finding, Callable, Box | None]]:
    """Each of ``result``'s findings refine can act on, in the critic's order, with its kind of fix
    (:data:`OPERATIONS`) and where to make it (:func:`_fault_region`); a kind of fix once per region."""
    seen: set[tuple[Callable, Box | None]] = set()
    for finding in result.findings:
        plan = OPERATIONS.get(finding.type)
        region = _fault_region(finding, rgb)
        if plan is not None and (plan, region) not in seen:
            seen.add((plan, region))
            yield finding, plan, region


def candidate_edits(finding: Finding, plan: Callable, rgb: np.ndarray, region: Box | None) -> list[Candidate]:
    """The edits ``plan`` proposes for ``finding`` in ``region``, measured where the edit acts in full;
    none when the pixels there do not bear the finding out. A local exposure fix is also bounded by how far
    the whole box (feather included) is below or above the rest of the photo (:func:`_exposure_ops`), a
    local stretch by the finding's severity (:func:`_contrast_ops`); a local colour fix brings the box to
    the balance of the rest (:func:`_colour_ops`)."""
    if plan is _exposure_ops and region is not None:
        return plan(finding, _crop(rgb, region), below_rest=_stops_below_rest(_measure_view(rgb), region))
    if plan is _contrast_ops and region is not None:
        return plan(finding, _crop(rgb, region), local=True)
    if plan is _colour_ops and region is not None:
        crop = _crop(rgb, region)
        return plan(finding, crop, toward=ops.balance_gains(crop, _outside(_measure_view(rgb), region)))
    return plan(finding, _crop(rgb, region))


@functools.cache
def default_gate() -> EditGate:
    """The shipped edit gate (package data, checked against its sha256), read once."""
    check_package_data(GATE_PATH, "refine's edit gate", hint="reinstall qds-lite, or refine with --no-gate")
    return EditGate.load(GATE_PATH)


def _fault_region(finding: Finding, rgb: np.ndarray) -> Box | None:
    """Where to fix ``finding``: its box, or None for the whole image.

    A tonal or colour finding is the photo's fault, not its box's, when the rest of the photo shows it too:
    the critic often boxes a photo-wide exposure, contrast or colour error in a few cells, and an edit kept to
    them (a box of a dark scene lifted above the rest of it) was refine's worst on clean photos; fixed
    globally, the edit's strength is measured on the whole photo (a dark scene's lights keep it dark).
    Underexposure is the photo's unless its box is at least MIN_EV darker than the rest (overexposure:
    brighter); low contrast and haze when the rest's tonal range is within MAX_RANGE too; a colour cast unless
    the rest shows no cast (under MIN_CAST) and the box's balance is at least MIN_LOCAL_CAST from the rest's."""
    if describe_box(finding.box) == "whole image":
        return None
    if finding.type not in ("underexposure", "overexposure", "low_contrast", "haze", "color_cast"):
        return finding.box
    view = _measure_view(rgb)
    x0, y0, x1, y1 = _pixels(finding.box, *view.shape[:2])
    if y1 <= y0 or x1 <= x0 or (x1 - x0) * (y1 - y0) == view.shape[0] * view.shape[1]:
        return None  # nothing inside, or nothing outside, at this view's scale
    if finding.type == "color_cast":
        rest = _outside(view, finding.box)
        toward = ops.balance_gains(view[y0:y1, x0:x1], rest)
        local = ops.cast_strength(rest) < MIN_CAST and ops.largest_log_gain(toward) >= MIN_LOCAL_CAST
    elif finding.type in ("low_contrast", "haze"):
        local = ops.tonal_range(_outside(view, finding.box)) > MAX_RANGE
    else:
        darker = _stops_below_rest(view, finding.box)
        local = (darker if finding.type == "underexposure" else -darker) >= MIN_EV
    return finding.box if local else None


def _measure_view(rgb: np.ndarray) -> np.ndarray:
    """Every step-th pixel of ``rgb`` each way: ~250k pixels are plenty for the tonal and colour measures."""
    step = max(1, math.isqrt(rgb.shape[0] * rgb.shape[1] // 250_000))
    return rgb[::step, ::step]


def _outside(view: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of ``view`` outside ``box`` (N x 3; the whole view when the box covers it all)."""
    x0, y0, x1, y1 = _pixels(box, *view.shape[:2])
    outside = np.ones(view.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    return view[outside] if outside.any() else view.reshape(-1, 3)


def _stops_below_rest(view: np.ndarray, box: Box) -> float:
    """How many stops the key of ``box`` is below the key of the rest of ``view`` (negative: above)."""
    x0, y0, x1, y1 = _pixels(box, *view.shape[:2])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    return math.log2(ops.key(_outside(view, box)) / ops.key(view[y0:y1, x0:x1]))


def _covers(made: Box | None, region: Box | None) -> bool:
    """Whether an edit made in ``made`` covers at least half of ``region`` (None: the whole image). After an
    edit the critic's box for the same fault often shifts by a cell; fixing it again there compounds the
    edit (a second white balance inside the first one's box took a clean photo's SSIM from 0.990 to 0.964)."""
    return overlap(made, region) >= 0.5


@dataclass(frozen=True)
class Tried:
    """One candidate edit, applied and re-scored, with what the gate reads of it."""

    op: str
    params: dict
    edited: np.ndarray
    result: Result
    features: dict[str, float]


def try_candidates(critic: Critic, rgb: np.ndarray, result: Result, finding: Finding, region: Box | None,
                   candidates: list[Candidate]) -> tuple[tuple[int, ...], Result, list[Tried]]:
    """Apply each of ``finding``'s candidate edits (strongest first) to ``region`` and re-score it. Returns
    the cells the verdicts looked at first (:func:`look_cells`; none for a whole-image edit), the verdict
    the edits are compared with, and them: for a whole-image edit ``result``, the critic's own verdict; for a
    local one the image before and each edit scored with the first zooms on the region, because a free
    re-score often never looks there and then cannot see what the edit did."""
    look = look_cells(result, finding, region, critic.max_zooms)
    base = critic.score(rgb, look=look) if look else result
    out = []
    for rank, (name, params) in enumerate(candidates):
        edited = _edit(rgb, region, name, params)
        res = critic.score(edited, look=look)
        feats = edit_features(finding, region, name, rank, len(candidates), base, res, rgb, edited)
        out.append(Tried(name, params, edited, res, feats))
    return look, base, out


def look_cells(result: Result, finding: Finding, region: Box | None, budget: int) -> tuple[int, ...]:
    """The cells the critic zooms into to judge an edit of ``region``: the region's, those the map finds
    most damaged by ``finding``'s type first, as many as the zoom budget; none for a whole-image edit."""
    if region is None or budget == 0:
        return ()
    cells = P.cells_in(region)
    if result.damage_map is not None:
        damage = result.damage_map.reshape(P.N_CELLS, -1)[:, P.FINDING_TYPES.index(finding.type)]
        cells.sort(key=lambda c: -damage[c])
    return tuple(cells[:budget])


def _try(critic: Critic, rgb: np.ndarray, result: Result, nat: float, finding: Finding, region: Box | None,
         candidates: list[Candidate], margin: float, slack: float, gate: EditGate | None, cautious: bool = False
         ) -> tuple[Step, np.ndarray, Result, float]:
    """Apply every candidate edit; among those that raise the score by ``margin`` (and, with a gate, that it
    passes), the first in order of the gate's P (without a gate: of score) that NIQE does not object to wins;
    ``cautious``: none of a local finding the photo reframed does not show (:func:`seen_reframed`).
    The result returned is the critic's own verdict of the image it leaves."""
    looked, base, tried = try_candidates(critic, rgb, result, finding, region, candidates)
    rising = [t for t in tried if t.result.score >= base.score + margin]
    if gate is None:
        ranked = [(t, None) for t in sorted(rising, key=lambda t: t.result.score, reverse=True)]
    else:
        ranked = sorted(((t, gate.probability(t.features)) for t in rising), key=lambda tp: tp[1], reverse=True)
    top, p = ranked[0] if ranked else (max(tried, key=lambda t: t.result.score), None)
    nat_top, reason = float("nan"), f"{_gain(top, None, base)} < +{margin:g}"
    if gate is not None and ranked and p < gate.threshold:
        reason = f"{_gain(top, p, base)} < {gate.threshold:g}"
    passing = [(t, p_t) for t, p_t in ranked if p_t is None or p_t >= gate.threshold]
    if cautious and passing and region is not None and not seen_reframed(critic, rgb, finding, region):
        t, p_t = passing[0]
        step = Step(finding.type, t.op, t.params, region, base.score, t.result.score, nat, float("nan"), False,
                    f"{_gain(t, p_t, base)}, {finding.type} not found there in the photo reframed", p_t, looked)
        return step, rgb, result, nat
    for t, p_t in passing:
        nat_after = _naturalness(t.edited)
        gain = _gain(t, p_t, base)
        if not nat_after > nat + slack:  # NaN (no guard possible) passes
            step = Step(finding.type, t.op, t.params, region, base.score, t.result.score, nat, nat_after, True,
                        f"{gain}, NIQE {nat_after - nat:+.2f}", p_t, looked)
            return step, t.edited, t.result if not looked else critic.score(t.edited), nat_after
        if t is top:
            nat_top, reason = nat_after, f"{gain}, NIQE {nat_after - nat:+.2f} > +{slack:g}"
    step = Step(finding.type, top.op, top.params, region, base.score, top.result.score, nat, nat_top, False,
                reason, p, looked)
    return step, rgb, result, nat


def _gain(t: Tried, p: float | None, base: Result) -> str:
    """What a step's log says of candidate ``t``: its score gain over ``base`` and, with a gate, its P."""
    return f"score {t.result.score - base.score:+.1f}" + ("" if p is None else f", P(better) {p:.2f}")


def seen_reframed(critic: Critic, rgb: np.ndarray, finding: Finding, region: Box) -> bool:
    """Whether the critic finds ``finding``'s fault over most of ``region`` again in the photo reframed, its
    central part without :data:`REFRAME` of each side, looking at the region first (:func:`look_cells`).

    The critic reads a photo through a fixed grid, and many of its false local findings are made by how a
    scene falls on that grid: a dark lower part or a soft foreground read as damaged in one framing and not
    in another a fifth of a cell away; a real fault of a part of the photo stays there, though the critic
    does not always find it again either."""
    h, w = rgb.shape[:2]
    dy, dx = round(h * REFRAME), round(w * REFRAME)
    view = np.ascontiguousarray(rgb[dy:h - dy, dx:w - dx])
    x0, y0, x1, y1 = region
    sx, sy = (w - 2 * dx) / w, (h - 2 * dy) / h
    box = (max(0.0, (x0 - dx / w) / sx), max(0.0, (y0 - dy / h) / sy),
           min(1.0, (x1 - dx / w) / sx), min(1.0, (y1 - dy / h) / sy))
    free = critic.score(view)
    seen = critic.score(view, look=look_cells(free, finding, box, critic.max_zooms))
    return any(f.type == finding.type and overlap(f.box, box) >= 0.5 for f in seen.findings)


def _pixels(box: Box, h: int, w: int, pad: int = 0) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = ops.box_pixels((h, w), box)
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def _crop(rgb: np.ndarray, region: Box | None) -> np.ndarray:
    """The pixels an edit of ``region`` changes at full strength (the box inside its mask's feather): what
    the edit's evidence and strength are measured on. A local degradation fades out towards its edges too,
    and the untouched pixels there used to decide the measures that read extremes (the tonal range of a
    hazy quarter read its clean edges)."""
    if region is None:
        return rgb
    x0, y0, x1, y1 = ops.full_strength_rect(rgb.shape[:2], region)
    if x1 <= x0 or y1 <= y0:  # a box too small to have a core: all of it
        x0, y0, x1, y1 = _pixels(region, *rgb.shape[:2])
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def _edit(rgb: np.ndarray, region: Box | None, name: str, params: dict) -> np.ndarray:
    """Apply operation ``name`` to the whole image, or to ``region`` plus a margin for the filters and the
    feather of the mask it is blended in with (pixels beyond the margin are untouched)."""
    fn = getattr(ops, name)
    if region is None:
        return fn(rgb, **params)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _pixels(region, h, w, pad=round(0.1 * min(h, w)) + 16)
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    mask = ops.feathered_mask((h, w), region)[y0:y1, x0:x1]
    out = rgb.copy()
    out[y0:y1, x0:x1] = ops.blend(crop, fn(crop, **params), mask)
    return out


def _naturalness(rgb: np.ndarray) -> float:
    """NIQE of the image, measured on a view of at most GUARD_LONG_SIDE px (NaN where undefined)."""
    h, w = rgb.shape[:2]
    s = GUARD_LONG_SIDE / max(h, w)
    if s < 1.0:
        cv = ops.cv2()
        rgb = cv.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv.INTER_AREA)
    try:
        return ops.niqe(rgb)
    except ValueError:  # smaller than NIQE's 96 px blocks: no guard
        return float("nan")


# --- writing ---------------------------------------------------------------------------------------
def write_refined(refinement: Refinement, out: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
                  quality: int = 95) -> None:
    """Write the refined image atomically to ``out`` (format from its extension), never over the input:
    ``input_path``, by default the file refine was given (pass it when refine was given a loaded image).

    The input's EXIF is kept with the orientation reset to 1 (the pixels are already upright), and its
    ICC profile where it had an RGB one (the pixels are converted back into it), else sRGB is embedded.
    When nothing was changed and ``out`` has the input's format, the input's bytes are copied unchanged.
    """
    from .atomic import refuse_input_overwrite, write_output

    input_path = input_path if input_path is not None else refinement.source_path
    refuse_input_overwrite(input_path, out)
    fmt = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise QdsError(f"{out}: unsupported output format", hint="use .jpg, .png, .webp or .tif")
    src_format, exif, icc = _source_metadata(input_path)
    if input_path is not None and not refinement.changed and src_format == fmt:
        with open(input_path, "rb") as f, atomic_open(out, "wb") as g:
            shutil.copyfileobj(f, g)
        return
    img, profile = _into_profile(refinement.image, icc)
    extra: dict = {"icc_profile": profile}
    if exif is not None:
        exif[0x0112] = 1  # Orientation: the pixels are upright already
        extra["exif"] = exif.tobytes()
    if fmt == "JPEG":
        extra |= {"quality": quality, "subsampling": 0}
    elif fmt == "WEBP":
        extra |= {"quality": quality}
    buf = io.BytesIO()
    img.save(buf, format=fmt, **extra)
    write_output(out, buf.getvalue())


def _source_metadata(path: str | os.PathLike | None) -> tuple[str | None, Image.Exif | None, bytes | None]:
    """(format, EXIF or None, ICC profile or None) of the input file; unreadable metadata is not an error."""
    if path is None:
        return None, None, None
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            return im.format, (exif if len(exif) else None), im.info.get("icc_profile") or None
    except (OSError, ValueError, SyntaxError):
        return None, None, None


def _into_profile(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes]:
    """Convert sRGB ``img`` back into the input's RGB profile ``icc`` and return it with that profile; with no
    usable RGB profile, ``img`` as it is with an sRGB profile."""
    try:
        from PIL import ImageCms
    except ImportError:  # pragma: no cover - Pillow without LittleCMS: untagged, which viewers read as sRGB
        return img, b""
    srgb = ImageCms.createProfile("sRGB")
    if icc:
        try:
            dst = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if dst.profile.xcolor_space.strip() == "RGB":
                return ImageCms.profileToProfile(img, srgb, dst, outputMode="RGB"), icc
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken profile: fall back to sRGB
    return img, ImageCms.ImageCmsProfile(srgb).tobytes()


def _round(v: float) -> float | None:
    return round(v, 3) if math.isfinite(v) else None
