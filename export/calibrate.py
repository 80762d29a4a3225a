"""Fit the score calibration of a critic on the dev split and write it into its manifest.

    python -m export.calibrate [--model-dir DIR] [--out build/bench/calibration]
    python -m export.calibrate --records build/bench/dev/accuracy.json   # fit from an existing dev run
    python -m export.calibrate --records build/bench/dev/accuracy.json --cv   # measure, write nothing
    python -m export.calibrate --records build/bench/dev/accuracy.json --sweep   # damage settings, write nothing
    python -m export.calibrate --records build/bench/dev/accuracy.json --damage-share 0.5 --damage-cells 4
    python -m export.calibrate --glance [--records RUN]   # the glance alone (zoom budget 0), from a --zooms 0 run

The raw score is the verdict's, less the share of it the diagnosis map takes off (``qds_lite.scale``); the
damage settings are written into the manifest with the anchors, which are fitted on raw scores with them.
``--sweep`` prints the dev ranking figures (L, D, P, cross-distortion SRCC) for a grid of settings: they were
chosen there (share 0.5 of the mean damage of the 4 most damaged cells: README, "The score reads the map
too").

Scores the dev split's Waterloo-style set (``benchmarks.accuracy --split dev``: every kind at severities
0.2-0.8 over each whole dev photo; about 2 min on 2 cores) and anchors the scale (``qds_lite.scale``): the
median raw score of the images with severity s maps to 100 * (1 - s), the score the critic is trained to
give them (``export/oracle.py``), joined linearly and to (0, 0) and (100, 100). Medians, not means, so
that a few photos the critic misreads do not move an anchor.

Chosen on the dev split by two-fold cross-validation over its photos (fit on half, measure on the other
half; mean absolute distance to the trained-for score, share of images given the trained-for level;
``--cv`` prints the first four rows for a dev run of the critic):
  - raw scale (no calibration): 19.3 points, 0.34;
  - these anchors: 14.4, 0.49;
  - the same plus the clean photos' median anchored inside *excellent* (at 85 / 90 / 94): 14.7 / 15.5 /
    16.1 points, 0.47 / 0.42 / 0.41: clean photos' scores spread widely, and pinning their median high
    squeezes everything above it into a few points;
  - a regression of the trained-for score on the raw score (isotonic, or VQEG's 4-parameter logistic;
    measured once with a throwaway script, not kept):
    smaller errors on the dev mix but it estimates the mean over that mix (13 damaged images per clean
    one) and so pulls clean photos down to 68-78, never *excellent*.

The glance alone (``qds triage --zooms 0``: no zoom, no check) reads a raw scale of its own, compressed towards
the middle (held-out test, the full critic's calibration: clean photos 79 on average against 85, severity
0.8 at 33 against 28), so ``--glance`` fits it its own anchors the same way, on a ``--zooms 0`` dev run, into
``config["glance"]["calibration"]`` (``qds_lite.scale``); the damage settings stay the critic's.

Only the dev split is used (the test split stays for evaluation); the raw score of every image is
recomputed from its level distribution, so the fit does not depend on a calibration already written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks import accuracy
from export import manifest
from qds_lite.errors import ModelError
from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL, resolve
from qds_lite.scale import ScoreScale

METHOD = "qds/onnx"
SWEPT = ("srcc", "l_srcc", "d_auc", "p_acc", "cross_srcc")  # the figures --sweep prints
NO_PENALTY = ScoreScale()  # the verdict's raw score alone
SWEEP_SHARES, SWEEP_CELLS = (0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9), (1, 2, 4, 8, 16)
# The damage settings chosen with --sweep on the dev split (README, "The score reads the map too"): what a critic
# whose manifest has none yet (a fresh export.build) is calibrated with.
DAMAGE_SHARE, DAMAGE_CELLS = 0.5, 4


def raw_score(record: dict, method: str = METHOD, head: ScoreScale = NO_PENALTY) -> float:
    """A scored record's raw score under ``head``'s damage settings (:meth:`ScoreScale.raw_of`)."""
    cells = record.get("cells", {}).get(method)
    if head.damage_share and cells is None:
        raise ValueError("the run has no diagnosis maps ('cells') to take the damage penalty from; score it again")
    return head.raw_of(record["level_probs"][method], cells)


def anchors(records: Sequence[dict], method: str = METHOD, head: ScoreScale = NO_PENALTY) -> dict[float, float]:
    """Median raw score of the globally degraded images at each severity (clean images left out)."""
    degraded = (r for r in records if r["set"] == "global" and r["severity"])
    raw = accuracy.by_severity(degraded, lambda r: raw_score(r, method, head))
    return {s: statistics.median(v) for s, v in raw.items()}


def fit(records: Sequence[dict], method: str = METHOD, clean_at: float | None = None,
        head: ScoreScale = NO_PENALTY) -> ScoreScale:
    """The anchored scale: (0, 0), each severity's median raw score -> 100 (1 - s), (100, 100), raw scores
    with ``head``'s damage settings, which the scale keeps. Raises ValueError where the critic does not, on
    median, score a worse severity lower. ``clean_at`` also anchors the clean images' median raw score there
    (an alternative measured by :func:`cross_validate`)."""
    medians = anchors(records, method, head)
    if not medians:
        raise ValueError("calibration needs globally degraded images")
    points = sorted((round(m, 3), round(100.0 * (1.0 - s), 3)) for s, m in medians.items())
    if clean_at is not None:
        clean = statistics.median(raw_score(r, method, head) for r in records if not r["severity"])
        points = sorted(points + [(round(clean, 3), clean_at)])
    raw = (0.0, *(m for m, _ in points), 100.0)
    score = (0.0, *(t for _, t in points), 100.0)
    if any(b <= a for a, b in zip(raw, raw[1:])) or any(b <= a for a, b in zip(score, score[1:])):
        raise ValueError(f"median raw scores by severity are not strictly in order of severity, inside (0, 100): "
                         f"{medians}")
    return dataclasses.replace(head, raw=raw, score=score)


def sweep(records: Sequence[dict], shares: Sequence[float], cells: Sequence[int], method: str = METHOD) -> list[dict]:
    """The ranking figures of benchmarks.accuracy (global set) with each damage share and number of cells
    (rank-based, so the calibration does not enter): how the damage settings were chosen."""
    glob = [r for r in records if r["set"] == "global"]
    kinds = sorted({r["kind"] for r in glob if r["kind"]})
    rows = []
    for k in cells:
        for w in shares:
            if not w and k != cells[0]:
                continue  # without a share the cells do not matter
            head = ScoreScale(damage_share=w, damage_cells=k)
            res = accuracy.severity_metrics([r["photo"] for r in glob], [r["kind"] for r in glob],
                                            [r["severity"] for r in glob], [raw_score(r, method, head) for r in glob],
                                            kinds)["summary"]
            rows.append({"damage_share": w, "damage_cells": k} | {m: res[m] for m in SWEPT})
    return rows


def cross_validate(records: Sequence[dict], method: str = METHOD, folds: int = 2,
                   variants: Sequence[float | None] = (None, 85.0, 90.0, 94.0),
                   head: ScoreScale = NO_PENALTY) -> list[dict]:
    """``folds``-fold cross-validation over the photos (every ``folds``-th photo of the sorted list held out
    in turn): each variant (None: the shipped anchors; a number: also the clean median anchored there) is
    fitted on the other photos and measured on the held-out ones with ``benchmarks.accuracy.scale_fit``
    (mean |score - trained-for score|, share given the trained-for level), pooled over all held-out images;
    the raw scale first, for reference."""
    fold = {photo: i % folds for i, photo in enumerate(sorted({r["photo"] for r in records}))}
    held = [[r for r in records if fold[r["photo"]] == k] for k in range(folds)]
    rest = [[r for r in records if fold[r["photo"]] != k] for k in range(folds)]
    rows = []
    for variant in ("raw", *variants):
        scored = []
        for test, train in zip(held, rest):
            scale = head if variant == "raw" else fit(train, method, clean_at=variant, head=head)
            scored += [r | {"scores": {method: scale(raw_score(r, method, head))}} for r in test]
        result = accuracy.scale_fit(scored, method)
        rows.append({"variant": variant if variant in ("raw", None) else f"clean at {variant:g}",
                     "mae": result["mae"], "level_match": result["level_match"]})
    return rows


def write(model_dir: Path, scale: ScoreScale, run: dict, glance: bool = False) -> None:
    """Put ``scale`` into the manifest's config, with where it came from; ``glance``: as the calibration of
    the glance alone (``config["glance"]``), which keeps the critic's damage settings."""
    path = model_dir / "manifest.json"
    doc = json.loads(path.read_text())
    if not glance:
        doc["config"].pop("score", None)
        if scale.damage_share:
            doc["config"]["score"] = {"damage_share": scale.damage_share, "damage_cells": scale.damage_cells}
    entry = {
        "raw": list(scale.raw), "score": list(scale.score),
        "fitted": {"command": "python -m export.calibrate" + (" --glance" if glance else "") + (
                       f" --damage-share {scale.damage_share:g} --damage-cells {scale.damage_cells}"
                       if scale.damage_share and not glance else ""), "on": run["command"],
                   "photos": run["n_images"]["photos"],
                   "images": sum(1 for r in run["records"] if r["set"] == "global" and r["severity"])},
    }
    (doc["config"].setdefault("glance", {}) if glance else doc["config"])["calibration"] = entry
    manifest.write_json(path, doc)


def check_run(run: dict, model_dir: Path, tool: str = "calibrate", glance: bool = False) -> None:
    """Refuse a run on the test split, of another critic (by its files' sha256), without onnx scores, or with
    another zoom budget than what is fitted (``glance``: the glance alone, 0; else the critic's own);
    ``tool`` names the command in the message."""
    if run["settings"]["split"] != "dev":
        raise SystemExit(f"{tool}: the run is on the {run['settings']['split']} split; fit on dev only "
                         "(the test split stays for evaluation)")
    if glance != (run["settings"].get("zooms") == 0):
        raise SystemExit(f"{tool}: the run scored " + ("with zooms; --glance needs a --zooms 0 run" if glance
                                                        else "the glance alone (--zooms 0); pass --glance"))
    files = accuracy.model_files_sha256(json.loads((model_dir / "manifest.json").read_text()))
    if run["model"].get("files") != files:
        raise SystemExit(f"{tool}: the run did not score the critic in {model_dir} (its files' sha256 differ, "
                         "or the run does not record them); score the dev split again")
    if METHOD not in run["methods"]:
        raise SystemExit(f"{tool}: the run has no {METHOD} scores")


def dev_run(model_dir: Path, records: Path | None, out: Path, tool: str = "calibrate",
            options: Sequence[str] = (), glance: bool = False) -> dict:
    """The dev-split accuracy run of the critic in ``model_dir`` that ``tool`` writes into its manifest from:
    ``records`` (an accuracy.json) or, when None, a run made now (with ``options``, and ``--zooms 0`` for the
    ``glance`` alone; report in ``out``). The folder is verified first (its files against the manifest's
    sha256) and the run checked (:func:`check_run`)."""
    try:
        resolve(model_dir)
    except ModelError as e:
        raise SystemExit(f"{tool}: {e.message}") from e
    if records is None:
        bundled = model_dir.resolve() == (BUNDLED_DIR / DEFAULT_MODEL).resolve()
        model = [] if bundled else ["--model", str(model_dir)]  # the manifest records the command: no paths
        zooms = ["--zooms", "0"] if glance else []
        if accuracy.main(["--split", "dev", *options, *zooms, "--backends", "onnx", "--no-baselines", *model,
                          "--out", str(out)]):
            raise SystemExit(f"{tool}: scoring the dev split failed (above); the manifest is unchanged")
        records = out / "accuracy.json"
    run = json.loads(records.read_text())
    check_run(run, model_dir, tool, glance)
    return run


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=BUNDLED_DIR / DEFAULT_MODEL)
    ap.add_argument("--records", type=Path, default=None,
                    help="accuracy.json of a dev-split run of this critic (default: score the dev split now)")
    ap.add_argument("--out", type=Path, default=Path("build") / "bench" / "calibration",
                    help="where the dev-split run writes its report (default: %(default)s)")
    ap.add_argument("--cv", action="store_true",
                    help="print the two-fold cross-validation of the calibration variants; write nothing")
    ap.add_argument("--damage-share", type=float, default=None,
                    help="share of the raw score a fully damaged map takes off (default: the manifest's, else "
                    f"{DAMAGE_SHARE:g}; 0 for none)")
    ap.add_argument("--damage-cells", type=int, default=None,
                    help="how many of the most damaged cells the damage is the mean of (default: the manifest's, "
                    f"else {DAMAGE_CELLS})")
    ap.add_argument("--glance", action="store_true",
                    help="fit the calibration of the glance alone (a zoom budget of 0, `qds triage --zooms 0`) "
                    "on a --zooms 0 dev run, beside the critic's own")
    ap.add_argument("--sweep", action="store_true",
                    help="print the dev ranking figures for a grid of damage shares and cells; write nothing")
    a = ap.parse_args(argv)
    run = dev_run(a.model_dir, a.records, a.out, glance=a.glance)
    config = json.loads((a.model_dir / "manifest.json").read_text())["config"]
    current = ScoreScale.of_config(config) if "score" in config else \
        ScoreScale(damage_share=DAMAGE_SHARE, damage_cells=DAMAGE_CELLS)
    head = ScoreScale(damage_share=current.damage_share if a.damage_share is None else a.damage_share,
                      damage_cells=current.damage_cells if a.damage_cells is None else a.damage_cells)
    if a.sweep:
        print("damage share  cells " + " ".join(f"{m:>10s}" for m in SWEPT))
        for row in sweep(run["records"], SWEEP_SHARES, SWEEP_CELLS):
            print(f"{row['damage_share']:12g} {row['damage_cells']:6d} " + " ".join(f"{row[m]:10.3f}" for m in SWEPT))
        return
    if a.cv:
        header = ("calibration (2-fold CV over dev photos)", "mean |score - trained-for|", "level match")
        print(f"{header[0]:42s} {header[1]:>27s} {header[2]:>12s}")
        for row in cross_validate(run["records"], head=head):
            name = "anchors (shipped)" if row["variant"] is None else row["variant"]
            print(f"{name:42s} {row['mae']:27.1f} {row['level_match']:12.2f}")
        return
    try:
        scale = fit(run["records"], head=head)
    except ValueError as e:
        raise SystemExit(f"calibrate: {e}; the manifest is unchanged") from e
    for raw, score in zip(scale.raw[1:-1], scale.score[1:-1]):
        print(f"raw {raw:6.2f} -> {score:5.1f}")
    write(a.model_dir, scale, run, glance=a.glance)


if __name__ == "__main__":
    main()
