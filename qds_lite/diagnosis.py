"""Where the findings are: a per-cell diagnosis that grounds what the reasoner reports.

The reasoner reads the glance and its zooms and says *what* is wrong and how badly, but its decoded
box corners rarely landed on the damage (held-out box IoU >= 0.5 for 11 % of local degradations). Two
small heads over the encoder's pooled cell features (what the reasoner's visual tokens are projected
from; the projection, trained for the reasoner, blurred types apart) say *where*: one names the
degradation each glance cell shows (or "clean"), the other re-reads a zoomed cell from its
native-resolution features. The runtime then grounds the reasoner's findings in that map:

- a finding may only name a type that some cell supports (probability >= that type's ``support``), and not one
  already reported; when no type is left, the findings end; among the types left, the reasoner's
  logits are weighed with the map's (``type_weight`` x log support);
- its box is forced to the cells that show it: the most confident cell and the 4-connected cells whose
  probability reaches ``spread`` times its own (their bounding box, on the protocol grid);
- a tonal or colour type whose fault has a plain pixel signature must also show it in the image's native
  pixels inside that box (:data:`EVIDENCE`): blown highlights for overexposure, a white-balance error for a colour
  cast. The heads read content as damage (a field of saturated yellow flowers as overexposed, a violet dusk
  sky as a colour cast); the pixels tell a bright or colourful scene from a clipped or cast one;
- a zoomed cell's reading is the zoom head's times the pixel-cue head's raised to ``cue_weight``
  (:func:`combine`): the cue head reads hand-made measurements of the same window's pixels
  (:mod:`qds_lite.pixel_cues`: noise, sharpness bands, JPEG blocks, banded levels) and tells fine foliage
  from noise or a smooth sky from banding more often than the features do; it sees no tone or colour, so
  it also lowers the odds of the tonal types against "clean" (README, "Pixel cues");
- before the findings, once the verdict is given, the runtime reads the ``check_zooms`` cells the map finds
  most suspect and the reasoner did not zoom into at native resolution through the zoom and cue heads, so the
  map the findings are grounded in rests on more native evidence (the verdict and the reasoner's context
  are unchanged).

``support`` and ``spread`` are chosen by ``export.diagnosis`` on the maps this runtime reads on dev-split
photos (the maps do not depend on them, so one scoring run serves every candidate); ``type_weight``,
``check_zooms``, ``find_margin`` (how much the reasoner must prefer ``<find>`` to ``<eos>`` before a finding
opens: negative in the shipped critic, so that it goes on naming what the map supports unless it is sure
there is nothing more) and ``zoom_weight`` (which steers zooms towards cells that look damaged: measured,
off in the shipped critic) on the development split by the accuracy benchmark; all travel in the manifest. The logic is
NumPy on the backend's features, so it is the same on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from . import protocol as P
from . import refine_ops as measure  # the pixel measures refine's evidence reads too (NumPy only)
from .errors import ModelError
from .numpy_ops import mlp, softmax
from .pixel_cues import window_cues

CLEAN = len(P.FINDING_TYPES)  # the last class of both heads
Pixels = Callable[[tuple[float, float, float, float]], np.ndarray]  # fractional box -> HxWx3 uint8 pixels
# Finding type -> (pixel measure, least value) that the native pixels of its box must show before the type
# is supported. Thresholds chosen on the development split (README, "Pixel evidence for overexposure and
# colour cast"); 1e-6: at least one blown-white pixel among those sampled.
EVIDENCE: dict[str, tuple[Callable[[np.ndarray], float], float]] = {
    "overexposure": (measure.clipped_share, 1e-6),
    "color_cast": (measure.cast_strength, 0.08),
}


def zoom_evidence(glance_cell: np.ndarray, zoom_cells: np.ndarray) -> np.ndarray:
    """The zoom head's input (kernels.model.zoom_evidence): the cell's glance features, then the mean and
    std of the zoom's cells' features."""
    return np.concatenate([glance_cell, zoom_cells.mean(0), zoom_cells.std(0)]).astype(np.float32)


def combine(zoom_probs: np.ndarray, cue_probs: np.ndarray, cue_weight: float) -> np.ndarray:
    """The product of the zoom head's and the cue head's probabilities (..., classes), the cue head's raised to
    ``cue_weight``, renormalized."""
    logp = np.log(np.maximum(zoom_probs, 1e-12)) + cue_weight * np.log(np.maximum(cue_probs, 1e-12))
    return softmax(logp)


def grounded_region(probs: np.ndarray, spread: float) -> tuple[int, int]:
    """(top-left, bottom-right) cells of a finding's box from one type's probability in each cell (cells,):
    the most confident cell and the 4-connected cells whose probability reaches ``spread`` times its own."""
    p = np.asarray(probs).reshape(P.GRID, P.GRID)
    seed = divmod(int(np.argmax(p)), P.GRID)
    floor = spread * p[seed]
    found, todo = {seed}, [seed]
    while todo:
        r, c = todo.pop()
        for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if n not in found and 0 <= n[0] < P.GRID and 0 <= n[1] < P.GRID and p[n] >= floor:
                found.add(n)
                todo.append(n)
    rows, cols = [r for r, _ in found], [c for _, c in found]
    return min(rows) * P.GRID + min(cols), max(rows) * P.GRID + max(cols)


class Diagnosis:
    """The two heads of one critic and its grounding thresholds."""

    def __init__(self, weights: Mapping[str, np.ndarray], support: float | Sequence[float], spread: float,
                 type_weight: float = 0.0, zoom_weight: float = 0.0, find_margin: float = 0.0,
                 check_zooms: int = 0, cue_weight: float = 0.0,
                 glance_support: float | Sequence[float] | None = None, glance_spread: float | None = None) -> None:
        self.weights = weights
        self.support = np.broadcast_to(np.asarray(support, np.float64), (len(P.FINDING_TYPES),))  # per type
        # for a map read from the glance alone (a zoom budget of 0): its own thresholds where chosen, else these
        self.glance_support = self.support if glance_support is None else \
            np.broadcast_to(np.asarray(glance_support, np.float64), (len(P.FINDING_TYPES),))
        self.glance_spread = spread if glance_spread is None else glance_spread
        self.spread = spread
        self.type_weight = type_weight
        self.zoom_weight = zoom_weight
        self.find_margin = find_margin
        self.check_zooms = check_zooms
        self.cue_weight = cue_weight if "diag.cues.w1" in weights else 0.0

    @classmethod
    def of_model(cls, weights: Mapping[str, np.ndarray], config: Mapping) -> Diagnosis | None:
        """The critic's diagnosis, or None for a critic trained without one (its findings stay as decoded)."""
        settings = config.get("diagnosis")
        if settings is None or "diag.glance.w1" not in weights:
            return None
        support = settings["support"]
        glance = config.get("glance", {})
        glance_support = glance.get("support")
        for thresholds in (support, glance_support):
            if isinstance(thresholds, list) and len(thresholds) != len(P.FINDING_TYPES):
                raise ModelError(f"the diagnosis has {len(thresholds)} support thresholds for "
                                 f"{len(P.FINDING_TYPES)} finding types", hint="re-run `python -m export.diagnosis`")
        if weights["diag.glance.w1"].shape[1] != config["feat_dim"]:  # heads trained on tokens, before features
            raise ModelError(f"the diagnosis heads read {weights['diag.glance.w1'].shape[1]} inputs, not the "
                             f"encoder's {config['feat_dim']} features", hint="re-run `python -m export.build`")
        return cls(weights, support, float(settings["spread"]),
                   *(float(settings.get(k, 0.0)) for k in ("type_weight", "zoom_weight", "find_margin")),
                   check_zooms=int(settings.get("check_zooms", 0)), cue_weight=float(settings.get("cue_weight", 0.0)),
                   glance_support=glance_support, glance_spread=glance.get("spread"))

    def glance(self, features: np.ndarray) -> np.ndarray:
        """The glance's pooled features (cells, f) -> per-cell probabilities (cells, types + clean)."""
        return softmax(mlp(self.weights, "diag.glance", features).astype(np.float64))

    def zoom(self, glance_cell: np.ndarray, zoom_cells: np.ndarray) -> np.ndarray:
        """A zoomed cell's glance features (f,) and the zoom's features (k, f) -> its probabilities
        (types + clean,)."""
        return softmax(mlp(self.weights, "diag.zoom", zoom_evidence(glance_cell, zoom_cells)).astype(np.float64))

    def cues(self, cues: np.ndarray) -> np.ndarray:
        """Pixel cues (..., len(pixel_cues.NAMES)) -> the cue head's probabilities (..., types + clean)."""
        return softmax(mlp(self.weights, "diag.cues", cues).astype(np.float64))

    def start(self, glance_features: np.ndarray, pixels: Pixels | None = None, glance_alone: bool = False) -> CellMap:
        """The map of one image from its glance's features and, for the :data:`EVIDENCE` checks, a way to read
        its pixels in a fractional box (``LoadedImage.sample``; without it, as when training chooses the
        thresholds from the heads alone, nothing is checked)."""
        return CellMap(self, glance_features, pixels, glance_alone)


class CellMap:
    """One image's diagnosis, refined as the zooms come in, and the grounding rules read from it."""

    def __init__(self, diagnosis: Diagnosis, glance_features: np.ndarray, pixels: Pixels | None = None,
                 glance_alone: bool = False) -> None:
        self.diagnosis = diagnosis
        self.glance_alone = glance_alone  # read from the glance alone (a zoom budget of 0): its own thresholds
        self.glance_features = glance_features
        self.pixels = pixels
        self._borne_out: dict[tuple[int, int, int], bool] = {}  # (type, box corners) -> evidence verdict
        self.probs = diagnosis.glance(glance_features)

    @property
    def support(self) -> np.ndarray:
        """Per finding type, the probability some cell must give it before the type may be named."""
        return self.diagnosis.glance_support if self.glance_alone else self.diagnosis.support

    @property
    def spread(self) -> float:
        return self.diagnosis.glance_spread if self.glance_alone else self.diagnosis.spread

    def zoomed(self, cell: int, zoom_features: np.ndarray, window: np.ndarray | None = None) -> None:
        """A zoom on ``cell`` replaces the glance's reading of that cell with the native-resolution one: the
        zoom head's, times the cue head's reading of the zoom ``window``'s pixels where the critic has one."""
        d = self.diagnosis
        probs = d.zoom(self.glance_features[cell], zoom_features)
        if d.cue_weight and window is not None:
            probs = combine(probs, d.cues(window_cues(window)), d.cue_weight)
        self.probs[cell] = probs

    def to_check(self, zoomed: set[int]) -> list[int]:
        """The ``check_zooms`` cells not zoomed into yet that most look damaged: after the verdict, the
        runtime reads them at native resolution for the findings alone."""
        order = np.argsort(self.probs[:, CLEAN], kind="stable")
        return [int(c) for c in order if int(c) not in zoomed][:self.diagnosis.check_zooms]

    def supported(self, type_index: int) -> bool:
        if self.probs[:, type_index].max() < self.support[type_index]:
            return False
        gate = EVIDENCE.get(P.FINDING_TYPES[type_index])
        if gate is None or self.pixels is None:
            return True
        key = (type_index, *self.region(type_index))
        if key not in self._borne_out:  # each findings step asks again; the pixels are read once per box
            fn, least = gate
            self._borne_out[key] = fn(self.pixels(P.span_box(*key[1:]))) >= least
        return self._borne_out[key]

    def weigh(self, state: str, logits: np.ndarray) -> np.ndarray:
        """The reasoner's logits with the map's evidence added where it has a say: over the finding types,
        ``type_weight`` x log of each type's support; over the cells to zoom into, ``zoom_weight`` x log of
        each cell's probability of showing damage; before each finding, ``find_margin`` off ``<find>``, so
        that a finding opens only when the reasoner prefers it to ending by that many logits (negative: unless
        it prefers ending by more than that)."""
        d = self.diagnosis
        if state == "findings" and d.find_margin:
            ids, bias = (P.FIND,), -d.find_margin
        elif state == "find_type" and d.type_weight:
            ids, bias = P.TYPE_IDS, d.type_weight * np.log(self.probs[:, :CLEAN].max(0) + 1e-6)
        elif state == "after_zoom" and d.zoom_weight:
            ids, bias = P.CELL_IDS, d.zoom_weight * np.log(1.0 - self.probs[:, CLEAN] + 1e-6)
        else:
            return logits
        out = logits.astype(np.float64)
        out[list(ids)] += bias
        return out

    def region(self, type_index: int) -> tuple[int, int]:
        """(top-left, bottom-right) cells of the box around the cells that show ``type_index``."""
        return grounded_region(self.probs[:, type_index], self.spread)

    def restrict(self, grammar: P.Grammar, allowed: tuple[int, ...]) -> tuple[int, ...]:
        """The tokens the grammar allows, narrowed to findings this map grounds."""
        reported = {f.type_index for f in grammar.findings}
        state = grammar.state
        if state == "findings" and P.FIND in allowed:
            if not any(self.supported(t) for t in range(len(P.FINDING_TYPES)) if t not in reported):
                return tuple(t for t in allowed if t != P.FIND)
        elif state == "find_type":
            return tuple(t for t in allowed if t - P.TYPE0 not in reported and self.supported(t - P.TYPE0))
        elif state in ("find_tl", "find_br"):
            tl, br = self.region(grammar.pending_type)
            return (P.CELL0 + (tl if state == "find_tl" else br),)
        return allowed
