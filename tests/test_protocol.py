"""The decoding grammar keeps every trajectory well formed."""

from __future__ import annotations

import numpy as np

from qds_lite import protocol as P


def random_walk(rng, max_zooms):
    g = P.Grammar(max_zooms)
    g.begin()
    while not g.done:
        g.advance(int(rng.choice(g.allowed())))
    return g


def test_random_decoding_always_terminates_within_budget():
    rng = np.random.default_rng(0)
    for i in range(300):
        budget = i % 5
        g = random_walk(rng, budget)
        assert len(g.zoomed) <= budget and len(set(g.zoomed)) == len(g.zoomed)
        assert len(g.findings) <= P.MAX_FINDINGS


def test_disallowed_token_raises():
    g = P.Grammar(0)
    g.begin()
    assert g.allowed() == (P.STOP,)
    try:
        g.advance(P.ZOOM)
    except ValueError:
        return
    raise AssertionError("zoom past the budget was accepted")


def test_geometry_and_score_mapping():
    assert P.cell_box(0) == (0.0, 0.0, 0.25, 0.25)
    assert P.span_box(15, 0) == (0.0, 0.0, 1.0, 1.0)
    assert P.level_score([1, 0, 0, 0, 0]) == 0.0 and P.level_score([0, 0, 0, 0, 1]) == 100.0
    assert P.severity_bin(0.0) == 0 and P.severity_bin(1.0) == P.SEVERITY_BINS - 1
