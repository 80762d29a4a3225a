"""The think-with-images loop: glance, zoom where it matters, report findings and a level distribution.

The loop is identical whatever backend runs the maths: it builds input embeddings (token rows and
visual tokens plus their slot embeddings), asks the backend's session for logits, and decodes greedily
over the tokens the protocol grammar allows next. Zoom windows are cut from the full-resolution
pixels, never from the glance.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import protocol as P
from .backends import Backend
from .io import LoadedImage, zoom_window
from .numpy_ops import softmax


@dataclass
class Trajectory:
    tokens: list[int] = field(default_factory=list)
    zooms: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)  # (cell, pixel box)
    findings: list[P.Finding] = field(default_factory=list)
    level_probs: np.ndarray | None = None
    model_ms: float = 0.0


class Reasoner:
    """Runs the loop for one image on one backend."""

    def __init__(self, backend: Backend, weights: Mapping[str, np.ndarray]) -> None:
        self.backend = backend
        self.tok_embd = weights["dec.tok_embd"]
        self.slot_embd = weights["dec.slot_embd"]

    def visual(self, view: np.ndarray, slot0: int) -> np.ndarray:
        tokens = self.backend.encode(view)
        return tokens + self.slot_embd[slot0:slot0 + len(tokens)]

    def run(self, image: LoadedImage, max_zooms: int = P.DEFAULT_ZOOMS) -> Trajectory:
        t0 = time.perf_counter()
        grammar = P.Grammar(max_zooms)
        traj = Trajectory()
        session = self.backend.start()
        first = [self.tok_embd[[P.BOS]], self.visual(image.glance, P.GLANCE_SLOT0)]
        grammar.begin()
        logits = session.step(np.concatenate(first + [self.tok_embd[self._append_forced(grammar, traj)]]))
        while True:
            state = grammar.state
            if state == "level":  # <stop> is in: its logits over the level tokens are the verdict
                traj.level_probs = softmax(logits[list(P.LEVEL_IDS)].astype(np.float64))
            allowed = np.array(grammar.allowed())
            token = int(allowed[np.argmax(logits[allowed])])
            grammar.advance(token)
            traj.tokens.append(token)
            new = [self.tok_embd[[token]]]
            if state == "after_zoom":
                window, box = zoom_window(image.full, token - P.CELL0)
                traj.zooms.append((token - P.CELL0, box))
                new.append(self.visual(window, P.ZOOM_SLOT0))
            forced = self._append_forced(grammar, traj)
            if grammar.done:  # <eos>: nothing more to feed
                break
            logits = session.step(np.concatenate(new + [self.tok_embd[forced]]))
        traj.findings = grammar.findings
        traj.model_ms = (time.perf_counter() - t0) * 1e3
        return traj

    @staticmethod
    def _append_forced(grammar: P.Grammar, traj: Trajectory) -> list[int]:
        """Advance over tokens the grammar leaves no choice about (<stop> once the zoom budget is spent,
        <eos> after the last finding): they join the next step's input instead of costing a step of
        their own, whose logits nobody would read. A zoom's cell is never forced: it brings visual tokens."""
        forced = []
        while not grammar.done and grammar.state != "after_zoom" and len(grammar.allowed()) == 1:
            token = grammar.allowed()[0]
            grammar.advance(token)
            traj.tokens.append(token)
            forced.append(token)
        return forced
