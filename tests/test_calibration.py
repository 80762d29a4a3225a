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


def test_a_critic_without_score_settings_is_calibrated_with_the_chosen_damage_settings(tmp_path):
    """export.build writes a fresh critic with no score settings: the calibration must give it the damage
    settings chosen on dev, not leave the damage map's penalty out (it once did); an explicit share 0 does."""
    import json
    import shutil

    from benchmarks.accuracy import model_files_sha256
    from export import calibrate
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL
    from qds_lite.protocol import FINDING_TYPES, N_CELLS

    folder = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("score", "calibration"):
        manifest["config"].pop(key)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    clean_cell = [0.0] * len(FINDING_TYPES) + [1.0]
    damaged_cell = [0.5] + [0.0] * (len(FINDING_TYPES) - 1) + [0.5]
    records = [{"set": "global", "photo": f"p{p}.jpg", "severity": s,
                "level_probs": {calibrate.METHOD: [s / 2, s / 2, 0.0, 0.5 - s / 2, 0.5 - s / 2]},
                "cells": {calibrate.METHOD: [damaged_cell if s else clean_cell] * N_CELLS}}
               for p in range(2) for s in (0.0, 0.2, 0.4, 0.6, 0.8)]
    run = {"command": "python -m benchmarks.accuracy --split dev", "settings": {"split": "dev"},
           "model": {"files": model_files_sha256(manifest)}, "methods": [calibrate.METHOD],
           "n_images": {"photos": 2}, "records": records}
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps(run))
    calibrate.main(["--model-dir", str(folder), "--records", str(path)])
    config = json.loads((folder / "manifest.json").read_text())["config"]
    assert config["score"] == {"damage_share": calibrate.DAMAGE_SHARE, "damage_cells": calibrate.DAMAGE_CELLS}
    with pytest.raises(SystemExit, match="--zooms 0"):  # the glance alone is fitted on a --zooms 0 run only
        calibrate.main(["--model-dir", str(folder), "--records", str(path), "--glance"])
    path.write_text(json.dumps(run | {"settings": {"split": "dev", "zooms": 0}}))
    with pytest.raises(SystemExit, match="pass --glance"):
        calibrate.main(["--model-dir", str(folder), "--records", str(path)])
    calibrate.main(["--model-dir", str(folder), "--records", str(path), "--glance"])
    written = json.loads((folder / "manifest.json").read_text())["config"]
    assert written["score"] == config["score"] and written["calibration"] == config["calibration"]
    assert written["glance"]["calibration"]["fitted"]["command"] == "python -m export.calibrate --glance"
    path.write_text(json.dumps(run))
    calibrate.main(["--model-dir", str(folder), "--records", str(path), "--damage-share", "0"])
    assert "score" not in json.loads((folder / "manifest.json").read_text())["config"]


@pytest.mark.xfail(strict=True, reason="known limitation: no training sample is black and white (README)")
def test_black_and_white_keeps_the_score_and_the_findings(critic, clean_images):
    """A black-and-white conversion of a clean photo is no worse a photo. The shipped critic has never seen
    one and marks both held-out photos down (coffee 95 -> 85, the dusk photo 81 -> 38, with findings the colour
    photos do not get); strict, so that the test fails once that is fixed and the README must say so."""
    for name, rgb in clean_images.items():
        grey = np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))
        colour, bw = critic.score(rgb), critic.score(grey)
        new = {f.type for f in bw.findings} - {f.type for f in colour.findings}
        assert bw.score >= colour.score - 10 and not new, (
            f"{name}: colour {colour.score:.1f}, black and white {bw.score:.1f}, new findings {sorted(new)}")
