"""The critic's language: view geometry, token vocabulary and the decoding grammar.

Everything that must agree between training (export/), the PyTorch reference (kernels/) and the
runtime backends lives here, so there is exactly one definition of it.

A trajectory, as the reasoner reads and writes it::

    <bos> [16 glance tokens]
    ( <zoom> <cell_k> [4 zoom tokens] ){0..K}
    <stop>                       -> its logits over the 5 level tokens = the level distribution
    <level_x>                    the most likely level, fed back
    ( <find> <type> <sev_b> <cell_tl> <cell_br> ){0..3}
    <eos>

The verdict comes straight after the evidence (glance and zooms) and before the findings, so the level
is judged from what was seen, not read back from the reasoner's own finding tokens; the findings then
explain it. Visual tokens are not vocabulary items: they are embeddings produced by the encoder and
passed in directly (the reasoner never predicts them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- view geometry ---------------------------------------------------------------------------
GRID = 4  # the image is split into GRID x GRID cells; zoom boxes and finding boxes are on this grid
N_CELLS = GRID * GRID
GLANCE_SIZE = 256  # the whole image, resized (aspect not kept) to this square for the glance
ZOOM_SIZE = 128  # a zoom is a ZOOM_SIZE x ZOOM_SIZE window of *native* pixels at a cell's centre
GLANCE_TOKENS = N_CELLS  # one visual token per grid cell
ZOOM_TOKENS = 4  # 2 x 2 visual tokens per zoom
MAX_FINDINGS = 3
DEFAULT_ZOOMS = 3

# --- vocabulary ------------------------------------------------------------------------------
FINDING_TYPES = (
    "blur", "motion_blur", "defocus", "noise", "jpeg", "banding", "overexposure", "underexposure",
    "low_contrast", "color_cast", "oversharpen", "haze", "upscale_artifacts", "generative_artifacts",
)
LEVELS = ("bad", "poor", "fair", "good", "excellent")
SEVERITY_BINS = 5  # bin b covers severity [b/5, (b+1)/5); its centre (b+0.5)/5 is reported

CONTROL = ("<pad>", "<bos>", "<eos>", "<zoom>", "<stop>", "<find>")
VOCAB: tuple[str, ...] = (
    CONTROL
    + tuple(f"<cell_{i}>" for i in range(N_CELLS))
    + tuple(f"<type_{t}>" for t in FINDING_TYPES)
    + tuple(f"<sev_{b}>" for b in range(SEVERITY_BINS))
    + tuple(f"<level_{name}>" for name in LEVELS)
)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)

PAD, BOS, EOS, ZOOM, STOP, FIND = (TOKEN_ID[t] for t in CONTROL)
CELL0 = TOKEN_ID["<cell_0>"]
TYPE0 = TOKEN_ID[f"<type_{FINDING_TYPES[0]}>"]
SEV0 = TOKEN_ID["<sev_0>"]
LEVEL0 = TOKEN_ID[f"<level_{LEVELS[0]}>"]

CELL_IDS = tuple(range(CELL0, CELL0 + N_CELLS))
TYPE_IDS = tuple(range(TYPE0, TYPE0 + len(FINDING_TYPES)))
SEV_IDS = tuple(range(SEV0, SEV0 + SEVERITY_BINS))
LEVEL_IDS = tuple(range(LEVEL0, LEVEL0 + len(LEVELS)))

# Visual-token slots: which learned "view embedding" is added to each visual token so the reasoner
# knows where it came from. Slots 0..15: glance token of cell i. Slots 16..19: zoom sub-token j
# (the zoomed cell is known from the <cell_k> token just before).
GLANCE_SLOT0 = 0
ZOOM_SLOT0 = GLANCE_TOKENS
N_SLOTS = GLANCE_TOKENS + ZOOM_TOKENS


def severity_bin(severity: float) -> int:
    """Severity in [0, 1] -> bin index."""
    return min(SEVERITY_BINS - 1, max(0, int(severity * SEVERITY_BINS)))


def severity_of_bin(b: int) -> float:
    return (b + 0.5) / SEVERITY_BINS


def cell_box(cell: int) -> tuple[float, float, float, float]:
    """Fractional box (x0, y0, x1, y1) of a grid cell (row-major numbering)."""
    r, c = divmod(cell, GRID)
    return (c / GRID, r / GRID, (c + 1) / GRID, (r + 1) / GRID)


def cells_in(box: tuple[float, float, float, float]) -> list[int]:
    """The grid cells whose centres lie inside a fractional box (x0, y0, x1, y1), row-major."""
    x0, y0, x1, y1 = box
    return [r * GRID + c for r in range(GRID) for c in range(GRID)
            if x0 < (c + 0.5) / GRID < x1 and y0 < (r + 0.5) / GRID < y1]


def span_box(cell_tl: int, cell_br: int) -> tuple[float, float, float, float]:
    """Fractional box spanning two cells (top-left and bottom-right corners, in any order)."""
    r0, c0 = divmod(cell_tl, GRID)
    r1, c1 = divmod(cell_br, GRID)
    r0, r1 = sorted((r0, r1))
    c0, c1 = sorted((c0, c1))
    return (c0 / GRID, r0 / GRID, (c1 + 1) / GRID, (r1 + 1) / GRID)


def level_score(probs) -> float:
    """Score 0-100 from a level distribution: 100 * (E[level] - 1) / 4, levels numbered 1..5."""
    expected = sum((i + 1) * float(p) for i, p in enumerate(probs))
    return 100.0 * (expected - 1.0) / (len(LEVELS) - 1)


def level_of(score: float) -> str:
    """The level word of a 0-100 score: bad < 12.5 <= poor < 37.5 <= fair < 62.5 <= good < 87.5 <= excellent
    (the nearest of 0, 25, 50, 75, 100, a boundary going up)."""
    k = math.floor(score / 100 * (len(LEVELS) - 1) + 0.5)
    return LEVELS[min(len(LEVELS) - 1, max(0, k))]


# --- grammar ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """A decoded finding, in protocol units (token indices)."""

    type_index: int
    severity_bin: int
    cell_tl: int
    cell_br: int


class Grammar:
    """The state machine that says which tokens may come next.

    Decoding is greedy argmax over the *allowed* tokens only, so every backend produces a well-formed
    trajectory and the same one for the same logits. The runtime feeds every emitted token back with
    :meth:`advance`.
    """

    def __init__(self, max_zooms: int = DEFAULT_ZOOMS) -> None:
        self.max_zooms = max_zooms
        self.state = "start"  # start|looking|after_zoom|level|findings|find_*|done
        self.zoomed: list[int] = []
        self.findings: list[Finding] = []
        self._pending: list[int] = []

    def allowed(self) -> tuple[int, ...]:
        s = self.state
        if s == "looking":
            return (ZOOM, STOP) if len(self.zoomed) < self.max_zooms else (STOP,)
        if s == "after_zoom":
            return tuple(c for c in CELL_IDS if c - CELL0 not in self.zoomed)
        if s == "level":
            return LEVEL_IDS
        if s == "findings":
            return (FIND, EOS) if len(self.findings) < MAX_FINDINGS else (EOS,)
        if s == "find_type":
            return TYPE_IDS
        if s == "find_sev":
            return SEV_IDS
        if s in ("find_tl", "find_br"):
            return CELL_IDS
        raise RuntimeError(f"no tokens allowed in state {s}")

    def advance(self, token: int) -> None:
        if token not in self.allowed():
            raise ValueError(f"token {VOCAB[token]} not allowed in state {self.state}")
        s = self.state
        if s == "looking":
            self.state = "after_zoom" if token == ZOOM else "level"
        elif s == "level":
            self.state = "findings"
        elif s == "after_zoom":
            self.zoomed.append(token - CELL0)
            self.state = "looking"  # the runtime appends the zoom's visual tokens before the next step
        elif s == "findings":
            self.state = "find_type" if token == FIND else "done"
        elif s == "find_type":
            self._pending = [token - TYPE0]
            self.state = "find_sev"
        elif s == "find_sev":
            self._pending.append(token - SEV0)
            self.state = "find_tl"
        elif s == "find_tl":
            self._pending.append(token - CELL0)
            self.state = "find_br"
        elif s == "find_br":
            t, b, tl = self._pending
            self.findings.append(Finding(t, b, tl, token - CELL0))
            self.state = "findings"

    def begin(self) -> None:
        """Called once the glance tokens are in: the reasoner now decides whether to zoom."""
        self.state = "looking"

    @property
    def pending_type(self) -> int:
        """The type index of the finding being written (states find_sev, find_tl, find_br)."""
        if self.state not in ("find_sev", "find_tl", "find_br"):
            raise RuntimeError(f"no finding is being written in state {self.state}")
        return self._pending[0]

    @property
    def done(self) -> bool:
        return self.state == "done"
