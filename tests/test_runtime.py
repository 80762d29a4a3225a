"""The decoding loop: every reasoner step it runs is read by a decision, and batching the tokens the
grammar forces does not change what the critic says."""

from __future__ import annotations

import numpy as np
import pytest

from qds_lite import protocol as P
from qds_lite.backends.numpy_backend import NumpyBackend
from qds_lite.io import load_image, zoom_window
from qds_lite.numpy_ops import mlp, softmax
from qds_lite.runtime import Reasoner
from tests.conftest import SAMPLES


class CountingBackend:
    """A backend that counts the reasoner steps it is asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.steps = inner, inner.name, 0

    def encode(self, view: np.ndarray) -> np.ndarray:
        return self.inner.encode(view)

    def start(self):
        session, outer = self.inner.start(), self

        class Counted:
            def step(self, embeddings: np.ndarray) -> np.ndarray:
                outer.steps += 1
                return session.step(embeddings)

        return Counted()


def step_per_token(backend, weights, image, max_zooms: int) -> tuple[list[int], np.ndarray]:
    """The plain loop: one step for every token fed back, forced or not (what the runtime must equal)."""
    tok, slot = weights["dec.tok_embd"], weights["dec.slot_embd"]
    session, grammar = backend.start(), P.Grammar(max_zooms)
    glance = mlp(weights, "proj", backend.encode(image.glance))
    logits = session.step(np.concatenate([tok[[P.BOS]], glance + slot[:len(glance)]]))
    grammar.begin()
    tokens, probs = [], None
    while not grammar.done:
        if grammar.state == "level":
            probs = softmax(logits[list(P.LEVEL_IDS)].astype(np.float64))
        allowed = np.array(grammar.allowed())
        token = int(allowed[np.argmax(logits[allowed])])
        new = [tok[[token]]]
        if grammar.state == "after_zoom":
            z = mlp(weights, "proj", backend.encode(zoom_window(image.full, token - P.CELL0)[0]))
            new.append(z + slot[P.ZOOM_SLOT0:P.ZOOM_SLOT0 + len(z)])
        grammar.advance(token)
        tokens.append(token)
        if not grammar.done:
            logits = session.step(np.concatenate(new))
    return tokens, probs


def decisions(tokens: list[int], max_zooms: int) -> int:
    """How many of ``tokens`` were a choice between two or more allowed tokens."""
    grammar, n = P.Grammar(max_zooms), 0
    grammar.begin()
    for t in tokens:
        n += len(grammar.allowed()) > 1
        grammar.advance(t)
    return n


@pytest.mark.parametrize("max_zooms", [0, 1, P.DEFAULT_ZOOMS])
def test_forced_tokens_cost_no_step_and_change_nothing(model_files, weights, max_zooms):
    backend = CountingBackend(NumpyBackend(model_files, weights))
    image = load_image(SAMPLES[0])
    traj = Reasoner(backend, weights).run(image, max_zooms)
    tokens, probs = step_per_token(NumpyBackend(model_files, weights), weights, image, max_zooms)
    assert traj.tokens == tokens
    np.testing.assert_allclose(traj.level_probs, probs, atol=1e-6)
    forced = len(tokens) - decisions(tokens, max_zooms)
    assert forced >= 1  # at least <stop> once the budget is spent, or <eos> after the last finding
    assert backend.steps == decisions(tokens, max_zooms)  # one step per decision, none wasted


def test_look_sends_the_first_zooms_where_asked_and_the_reasoner_chooses_the_rest(model_files, weights):
    image = load_image(SAMPLES[0])
    reasoner = Reasoner(NumpyBackend(model_files, weights), weights)
    free = [c for c, _ in reasoner.run(image, 3).zooms]
    far = next(c for c in range(P.N_CELLS - 1, -1, -1) if c not in free)
    looked = reasoner.run(image, 3, look=[far])
    assert [c for c, _ in looked.zooms][:1] == [far] and len(looked.zooms) == 3
    assert looked.level_probs.sum() == pytest.approx(1.0)
    assert [c for c, _ in reasoner.run(image, 2, look=[far, 0, 5]).zooms] == [far, 0]  # the budget still rules
    assert reasoner.run(image, 0, look=[far]).zooms == []


def test_score_refuses_cells_it_cannot_look_at():
    import qds_lite
    from qds_lite.errors import QdsError

    critic = qds_lite.load(backend="numpy")
    for bad in ([3, 3], [P.N_CELLS], [-1]):
        with pytest.raises(QdsError, match="cells to look at"):
            critic.score(SAMPLES[0], look=bad)
