"""Calibration: the shipped critic's score falls as a degradation gets worse, for every family.

Held-out images (the test samples are not pristine training photos), each degradation family of the
synthesizer applied over the whole image at rising severity. A family passes when, on every image,
the scores' Spearman correlation with severity is at most MAX_RHO and the worst severity scores
clearly below the clean image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from export import synth
from qds_lite import Critic

from .conftest import DATA

SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_RHO = -0.89  # one swap of neighbouring severities (rho -0.9) is tolerated as scoring noise
MIN_DROP = 5.0  # score points between severity 0 and 1
IMAGES = ("coffee_clean.jpg", "rocket_clean.jpg")
# Families the current critic does not yet rank monotonically on these images (measured; see the
# README's known limitations). strict: the test fails once one of them starts passing, so the list
# cannot go stale. Both fail on the dusk photo only, which the critic wrongly finds underexposed:
# brightening it (overexposure) and a warm or cool cast raise its score; every family passes on coffee.
NOT_YET_MONOTONE = {"overexposure", "color_cast"}


@pytest.fixture(scope="module")
def critic():
    return Critic.load(backend="onnx")


@pytest.fixture(scope="module")
def clean_images():
    out = {}
    for name in IMAGES:
        img = Image.open(DATA / name).convert("RGB")
        img.thumbnail((768, 768))
        out[name] = np.asarray(img)
    return out


@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason="not yet monotone")) if k in NOT_YET_MONOTONE else k
    for k in synth.KINDS])
def test_score_falls_with_severity(kind, critic, clean_images):
    for name, rgb in clean_images.items():
        scores = []
        for s in SEVERITIES:
            degs = [synth.Degradation(kind, s, None, seed=7)] if s > 0 else []
            scores.append(critic.score(synth.apply(rgb, degs)).score)
        rho = spearmanr(SEVERITIES, scores)[0]
        assert rho <= MAX_RHO and scores[0] - scores[-1] >= MIN_DROP, (
            f"{kind} on {name}: scores {np.round(scores, 1).tolist()} (rho {rho:.2f})")
