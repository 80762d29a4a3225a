"""The think-with-images loop: glance, zoom where it matters, report findings and a level distribution.

The loop is identical whatever backend runs the maths: the backend's encoder turns each view into
pooled cell features, which the loop projects to visual tokens (a small NumPy MLP); it builds input
embeddings (token rows and visual tokens plus their slot embeddings), asks the backend's session for
logits, and decodes greedily over the tokens the protocol grammar allows next. Zoom windows are cut from
the full-resolution pixels, never from the glance. Where the critic has a cell diagnosis (qds_lite.diagnosis), the
findings it may report and their boxes are grounded in it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import protocol as P
from .backends import Backend
from .diagnosis import CellMap, Diagnosis
from .io import LoadedImage, zoom_window
from .numpy_ops import mlp, softmax


@dataclass
class Trajectory:
    tokens: list[int] = field(default_factory=list)
    zooms: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)  # (cell, pixel box)
    checks: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)  # read for the findings only
    findings: list[P.Finding] = field(default_factory=list)
    level_probs: np.ndarray | None = None
    cell_probs: np.ndarray | None = None  # the diagnosis map the findings were grounded in (cells, types + clean)
    model_ms: float = 0.0


class Reasoner:
    """Runs the loop for one image on one backend."""

    def __init__(self, backend: Backend, weights: Mapping[str, np.ndarray],
                 diagnosis: Diagnosis | None = None) -> None:
        self.backend = backend
        self.weights = weights  # lazy (model_store.Weights): only the arrays read here are decompressed
        self.tok_embd = weights["dec.tok_embd"]
        self.slot_embd = weights["dec.slot_embd"]
        self.diagnosis = diagnosis

    def visual_tokens(self, features: np.ndarray, slot0: int) -> np.ndarray:
        """Pooled cell features (cells, f) -> the reasoner's visual tokens plus their slot embeddings."""
        tokens = mlp(self.weights, "proj", features)
        return tokens + self.slot_embd[slot0:slot0 + len(tokens)]

    def run(self, image: LoadedImage, max_zooms: int = P.DEFAULT_ZOOMS, look: Sequence[int] = ()) -> Trajectory:
        """One trajectory. ``look``: cells the first zooms must go to, in order (as far as the budget goes);
        the reasoner chooses the rest."""
        t0 = time.perf_counter()
        grammar = P.Grammar(max_zooms)
        traj = Trajectory()
        look = list(look)
        session = self.backend.start()
        glance = self.backend.encode(image.glance)
        cells = self.diagnosis.start(glance, image.sample, glance_alone=max_zooms == 0) if self.diagnosis else None
        first = [self.tok_embd[[P.BOS]], self.visual_tokens(glance, P.GLANCE_SLOT0)]
        grammar.begin()
        logits = session.step(np.concatenate(first + [self.tok_embd[self._append_forced(grammar, traj, cells, look)]]))
        while True:
            state = grammar.state
            if state == "level":  # <stop> is in: its logits over the level tokens are the verdict
                traj.level_probs = softmax(logits[list(P.LEVEL_IDS)].astype(np.float64))
            allowed = np.array(self._allowed(grammar, cells, look))
            if cells is not None:
                logits = cells.weigh(state, logits)
            token = int(allowed[np.argmax(logits[allowed])])
            grammar.advance(token)
            traj.tokens.append(token)
            new = [self.tok_embd[[token]]]
            if state == "level" and cells is not None and max_zooms > 0:  # --zooms 0: the glance alone
                self._check(image, cells, traj)
            if state == "after_zoom":
                cell = token - P.CELL0
                if look and look[0] == cell:
                    look.pop(0)
                window, box = zoom_window(image.full, cell)
                traj.zooms.append((cell, box))
                zoom = self.backend.encode(window)
                if cells is not None:
                    cells.zoomed(cell, zoom, window)
                new.append(self.visual_tokens(zoom, P.ZOOM_SLOT0))
            forced = self._append_forced(grammar, traj, cells, look)
            if grammar.done:  # <eos>: nothing more to feed
                break
            logits = session.step(np.concatenate(new + [self.tok_embd[forced]]))
        traj.findings = grammar.findings
        traj.cell_probs = None if cells is None else cells.probs
        traj.model_ms = (time.perf_counter() - t0) * 1e3
        return traj

    def _check(self, image: LoadedImage, cells: CellMap, traj: Trajectory) -> None:
        """With the verdict given, read the cells the map finds most suspect and has not seen up close at
        native resolution, through the diagnosis only: the findings get better evidence, the verdict and
        the reasoner's context stay as they were."""
        for cell in cells.to_check({c for c, _ in traj.zooms}):
            window, box = zoom_window(image.full, cell)
            cells.zoomed(cell, self.backend.encode(window), window)
            traj.checks.append((cell, box))

    @staticmethod
    def _allowed(grammar: P.Grammar, cells: CellMap | None, look: Sequence[int] = ()) -> tuple[int, ...]:
        allowed = grammar.allowed()
        if look and grammar.state == "looking" and P.ZOOM in allowed:
            return (P.ZOOM,)
        if look and grammar.state == "after_zoom":
            return (P.CELL0 + look[0],)
        return allowed if cells is None else cells.restrict(grammar, allowed)

    @classmethod
    def _append_forced(cls, grammar: P.Grammar, traj: Trajectory, cells: CellMap | None,
                       look: Sequence[int] = ()) -> list[int]:
        """Advance over tokens left no choice about (<stop> once the zoom budget is spent, <eos> after the
        last finding, a grounded finding's box): they join the next step's input instead of costing a step
        of their own, whose logits nobody would read. A zoom's cell is never forced: it brings visual tokens."""
        forced = []
        while not grammar.done and grammar.state != "after_zoom" and len(cls._allowed(grammar, cells, look)) == 1:
            token = cls._allowed(grammar, cells, look)[0]
            grammar.advance(token)
            traj.tokens.append(token)
            forced.append(token)
        return forced
