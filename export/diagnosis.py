"""Train the cell diagnosis that grounds the critic's findings (qds_lite.diagnosis), and choose its thresholds.

Runs after the reasoner is trained, on the same cached samples. The heads read the encoder's pooled cell
features, as the runtime gives them (qds_lite.runtime), not the visual tokens projected from them for the
reasoner: on the dev cells that projection cost the glance head 3 points of accuracy and the zoom head 6.
The features are standardized (train cells' mean and std) while the heads learn, and the standardization is
then folded into each head's first layer, so the runtime feeds them the raw features. ``python -m export.diagnosis
[--model-dir DIR]`` chooses the thresholds of an exported critic again (heads unchanged) and writes them
into its manifest.

- glance head: every glance cell -> its finding type (the most severe degradation covering it with
  severity >= export.train.AUX_MIN_SEVERITY), or "clean";
- zoom head: every cached zoom (the oracle's cells and random ones) -> the type of the cell it looks at,
  from that cell's glance features and the zoom's features.

Each trains a few epochs (AdamW, fixed seed); the epoch kept is the one whose dev cells are best
classified (mean of the accuracy on damaged and on clean cells, so "clean" everywhere cannot win).

Thresholds, on the dev samples with the zoom head's reading of the cells the oracle would zoom first:

- ``support``, one per finding type: the type counts as present when some cell gives it at least this
  probability; chosen per type to maximise the balanced accuracy of "present" over the dev samples,
  present = applied with severity >= PRESENT, absent = not applied (mild ones in between do not count
  either way). One threshold for all types (the best over every (sample, type) pair, still used for a
  type the dev samples never show) let the heads' confident false alarms through on some types (over-
  exposure, oversharpening, noise) and asked too much on others (README, "Findings");
- ``spread``: how far a finding's box grows from its most confident cell; chosen to maximise the share
  of local degradations whose box reaches IoU >= 0.5 with the true region.

``type_weight``, ``zoom_weight`` and ``find_margin`` act on the reasoner's decoding, so they are constants
chosen with the accuracy benchmark on the dev split (README, "Grounded findings").
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from export import oracle
from export.train import AUX_MIN_SEVERITY
from kernels.model import diagnose_glance, diagnose_zoom
from qds_lite import protocol as P
from qds_lite.diagnosis import CellMap, Diagnosis

CLASSES = len(P.FINDING_TYPES) + 1
HIDDEN = 128
GLANCE_EPOCHS, ZOOM_EPOCHS = 4, 6
LR, WEIGHT_DECAY, BATCH = 1e-3, 1e-2, 512
PRESENT = oracle.REPORTABLE  # a degradation the oracle names
SUPPORT_GRID = tuple(np.round(np.arange(0.1, 0.85, 0.05), 2))
SPREAD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
IOU_HIT = 0.5
# How much the map's evidence weighs in the reasoner's choices (qds_lite.diagnosis.CellMap.weigh). They act on
# the whole loop, so they were chosen on the dev split with the accuracy benchmark (README, "Findings"):
#   python -m benchmarks.accuracy --split dev --model DIR --backends onnx --no-baselines --levels 0.5 --local-per-kind 3
TYPE_WEIGHT = 3.0
ZOOM_WEIGHT = 0.0
# How many logits <find> must beat <eos> by: fewer findings on clean photos, and fewer right ones (measured on
# dev, README "Findings only for damage a viewer would notice"), so off.
FIND_MARGIN = 0.0
# How many suspect cells the runtime reads at native resolution after the verdict, for the findings alone
# (qds_lite.runtime.Reasoner._check); chosen on the dev split with the command above (README, "Findings").
CHECK_ZOOMS = 4
DECODING = {"type_weight": TYPE_WEIGHT, "zoom_weight": ZOOM_WEIGHT, "find_margin": FIND_MARGIN,
            "check_zooms": CHECK_ZOOMS}  # -> manifest
STD_FLOOR = 1e-3  # added to each feature's std before standardizing (a few are near-constant)
SETTINGS = {"hidden": HIDDEN, "epochs": [GLANCE_EPOCHS, ZOOM_EPOCHS], "lr": LR, "weight_decay": WEIGHT_DECAY,
            "batch": BATCH, "present": PRESENT, "min_severity": AUX_MIN_SEVERITY, "support": "per type",
            "inputs": "standardized pooled features", **DECODING}  # the stage's cache key


def cell_labels(data: dict[str, np.ndarray]) -> np.ndarray:
    """(samples, cells) finding-type index per cell, CLASSES - 1 for clean."""
    return np.stack([oracle.cell_types(oracle.degradations(data, i), AUX_MIN_SEVERITY)
                     for i in range(len(data["kinds"]))])


def glance_inputs(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """-> glance features (samples, cells, f) float32 and their labels (samples, cells)."""
    return data["glance"].astype(np.float32), cell_labels(data)


def zoom_inputs(data: dict[str, np.ndarray], glance: np.ndarray,
                labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> per cached zoom: the cell's glance features (n, z, f), the zoom's features (n, z, 4, f), label (n, z)."""
    cells = data["zoom_cells"].astype(np.int64)
    rows = np.arange(len(cells))[:, None]
    return glance[rows, cells], data["zooms"].astype(np.float32), labels[rows, cells]


def fold_standardization(head: dict[str, np.ndarray], prefix: str, mean: np.ndarray, std: np.ndarray,
                         shifted: Sequence[bool]) -> dict[str, np.ndarray]:
    """A head trained on standardized input blocks -> the same head on raw ones. Its input is
    ``len(shifted)`` blocks of features; a block was ``(x - mean) / std`` where ``shifted``, else ``x / std``
    (a standard deviation over cells: the mean cancels)."""
    w1, b1 = head[f"{prefix}.w1"].astype(np.float64), head[f"{prefix}.b1"].astype(np.float64)
    blocks = np.split(w1 / np.tile(std, len(shifted)), len(shifted), axis=1)
    b1 = b1 - sum(w @ mean for w, s in zip(blocks, shifted) if s)
    return head | {f"{prefix}.w1": np.concatenate(blocks, axis=1).astype(np.float32),
                   f"{prefix}.b1": b1.astype(np.float32)}


def _init(rng: np.random.Generator, prefix: str, n_in: int) -> dict[str, np.ndarray]:
    def lin(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    return {f"{prefix}.w1": lin(HIDDEN, n_in), f"{prefix}.b1": np.zeros(HIDDEN, np.float32),
            f"{prefix}.w2": lin(CLASSES, HIDDEN), f"{prefix}.b2": np.zeros(CLASSES, np.float32)}


def cell_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the accuracy on damaged cells and on clean cells."""
    damaged = labels != CLASSES - 1
    return float(((pred[damaged] == labels[damaged]).mean() + (pred[~damaged] == labels[~damaged]).mean()) / 2)


def fit_head(prefix: str, n_in: int, logits_of, inputs: tuple[np.ndarray, ...], labels: np.ndarray,
             dev_inputs: tuple[np.ndarray, ...], dev_labels: np.ndarray, epochs: int, seed: int,
             log=print) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Train one head (``logits_of(params, *inputs)``) on rows of ``inputs``; keep the best dev epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in _init(rng, prefix, n_in).items()}
    opt = torch.optim.AdamW(params.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    xs = [torch.from_numpy(x) for x in inputs]
    dev_xs = [torch.from_numpy(x) for x in dev_inputs]
    y = torch.from_numpy(labels.astype(np.int64))
    best, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        order = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(order), BATCH):
            b = order[i:i + BATCH]
            loss = F.cross_entropy(logits_of(params, *(x[b] for x in xs)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = logits_of(params, *dev_xs).argmax(-1).numpy()
        acc = cell_accuracy(pred, dev_labels)
        history.append({"head": prefix, "epoch": epoch, "dev_cell_accuracy": round(acc, 4),
                        "seconds": round(time.time() - t0, 1)})
        log(f"{prefix} epoch {epoch}: dev cell accuracy {acc:.3f}")
        if acc > best:
            best, best_state = acc, {k: v.detach().numpy().copy() for k, v in params.items()}
    return best_state, history


def dev_maps(weights: dict[str, np.ndarray], glance: np.ndarray, zoom_glance: np.ndarray,
             zooms: np.ndarray, cells: np.ndarray) -> list[CellMap]:
    """Each dev sample's map after zooms on the oracle's first DEFAULT_ZOOMS cells."""
    diagnosis = Diagnosis(weights, support=1.0, spread=1.0)
    maps = []
    for i in range(len(glance)):
        m = diagnosis.start(glance[i])
        for z in range(P.DEFAULT_ZOOMS):
            m.zoomed(int(cells[i, z]), zooms[i, z])
        maps.append(m)
    return maps


def choose_support(maps: list[CellMap], data: dict[str, np.ndarray]) -> tuple[list[float], float]:
    """Per finding type, the support threshold of best balanced accuracy of "type present" over the dev
    samples (the pooled best for a type with no present or no absent sample), and the mean of those
    balanced accuracies over the types the samples show."""
    top = np.stack([m.probs[:, :-1].max(0) for m in maps])  # (samples, types)
    present = np.zeros_like(top, bool)
    applied = np.zeros_like(top, bool)
    for i in range(len(maps)):
        for kind, severity, _ in oracle.degradations(data, i):
            t = P.FINDING_TYPES.index(kind)
            applied[i, t] = True
            present[i, t] |= severity >= PRESENT
    absent = ~applied

    def balanced(th: float, t: slice | int = slice(None)) -> float:
        pos, neg = top[:, t][present[:, t]], top[:, t][absent[:, t]]
        return float(((pos >= th).mean() + (neg < th).mean()) / 2)

    pooled = max(SUPPORT_GRID, key=balanced)
    support, scores = [], []
    for t in range(top.shape[1]):
        if present[:, t].any() and absent[:, t].any():
            best = max(SUPPORT_GRID, key=functools.partial(balanced, t=t))
            support.append(float(best))
            scores.append(balanced(best, t))
        else:
            support.append(float(pooled))
    return support, float(np.mean(scores))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def choose_spread(maps: list[CellMap], data: dict[str, np.ndarray]) -> tuple[float, float]:
    """The spread of the best IoU >= 0.5 share over the dev samples' local degradations (severity >= PRESENT)."""
    local = [(m, P.FINDING_TYPES.index(kind), region) for i, m in enumerate(maps)
             for kind, severity, region in oracle.degradations(data, i) if region is not None and severity >= PRESENT]

    def hits(spread: float) -> float:
        maps[0].diagnosis.spread = spread  # one Diagnosis shared by every map
        out = []
        for m, t, (c0, r0, c1, r1) in local:
            box = P.span_box(*m.region(t))
            out.append(_iou(box, (c0 / P.GRID, r0 / P.GRID, c1 / P.GRID, r1 / P.GRID)) >= IOU_HIT - 1e-9)
        return float(np.mean(out))

    best = max(SPREAD_GRID, key=hits)
    return float(best), hits(best)


def train_diagnosis(data: dict[str, np.ndarray], dev: dict[str, np.ndarray], seed: int = 0,
                    log=print) -> tuple[dict[str, np.ndarray], dict]:
    """-> the two heads' weights (``diag.*``, on raw features) and a log with the grounding settings
    (``support`` and ``spread`` chosen here, ``type_weight`` and ``zoom_weight``), dev figures and the epochs."""
    glance, labels = glance_inputs(data)
    dev_glance, dev_labels = glance_inputs(dev)
    d = glance.shape[-1]
    mean, std = glance.reshape(-1, d).mean(0), glance.reshape(-1, d).std(0) + STD_FLOOR

    def std_(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std).astype(np.float32)

    g_head, g_hist = fit_head("diag.glance", d, lambda p, x: diagnose_glance(p, x),
                              (std_(glance).reshape(-1, d),), labels.reshape(-1),
                              (std_(dev_glance).reshape(-1, d),), dev_labels.reshape(-1), GLANCE_EPOCHS, seed, log)
    zg, zt, zl = zoom_inputs(data, glance, labels)
    dzg, dzt, dzl = zoom_inputs(dev, dev_glance, dev_labels)
    z_head, z_hist = fit_head("diag.zoom", 3 * d, lambda p, g, z: diagnose_zoom(p, g, z),
                              (std_(zg).reshape(-1, d), std_(zt).reshape(-1, *zt.shape[2:])), zl.reshape(-1),
                              (std_(dzg).reshape(-1, d), std_(dzt).reshape(-1, *dzt.shape[2:])), dzl.reshape(-1),
                              ZOOM_EPOCHS, seed, log)
    weights = (fold_standardization(g_head, "diag.glance", mean, std, (True,))
               | fold_standardization(z_head, "diag.zoom", mean, std, (True, True, False)))
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}  # as shipped
    chosen = choose_thresholds(rounded, dev, dev_glance, dzg, dzt, log)
    return weights, chosen | DECODING | {"history": g_hist + z_hist}


def choose_thresholds(weights: dict[str, np.ndarray], dev: dict[str, np.ndarray], dev_glance: np.ndarray,
                      zoom_glance: np.ndarray, zoom_features: np.ndarray, log=print) -> dict:
    """``support`` (per type) and ``spread`` for trained heads (``diag.*``, as shipped) on the dev samples,
    from their glance features and cached zooms (:func:`glance_inputs`, :func:`zoom_inputs`)."""
    maps = dev_maps(weights, dev_glance, zoom_glance, zoom_features, dev["zoom_cells"])
    support, balanced = choose_support(maps, dev)
    spread, hit = choose_spread(maps, dev)
    log(f"diagnosis: support {dict(zip(P.FINDING_TYPES, support))} (dev balanced accuracy {balanced:.3f}), "
        f"spread {spread} (dev local boxes IoU>={IOU_HIT}: {hit:.3f})")
    return {"support": support, "spread": spread, "dev_type_balanced_accuracy": round(balanced, 4),
            "dev_box_hit": round(hit, 4)}


def main(argv: Sequence[str] | None = None) -> None:
    """Choose the grounding thresholds of an exported critic again, on the dev samples export.build cached,
    and write them into its manifest (for a change to how they are chosen, without retraining)."""
    from export import manifest
    from export.build import DEV_VARIANTS, SEED
    from export.data import trunk_arrays
    from export.onnx_export import export_trunk
    from export.samples import build as build_samples
    from export.samples import load_shards
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL, load_weights, resolve

    ap = argparse.ArgumentParser(prog="python -m export.diagnosis", description=main.__doc__)
    ap.add_argument("--model-dir", type=Path, default=BUNDLED_DIR / DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=Path("build"), help="export.build's work folder (sample cache)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    trunk_onnx = a.work / "trunk.onnx"
    if not trunk_onnx.is_file():
        export_trunk(trunk_arrays(), trunk_onnx)
    dev = load_shards(build_samples("dev", DEV_VARIANTS, a.work / "cache", str(trunk_onnx), seed=SEED,
                                    workers=a.workers))
    weights = load_weights(resolve(a.model_dir))  # its files checked against the manifest's sha256 first
    weights = {k: weights[k] for k in weights if k.startswith("diag.")}
    dev_glance, dev_labels = glance_inputs(dev)
    zoom_glance, zoom_features, _ = zoom_inputs(dev, dev_glance, dev_labels)
    chosen = choose_thresholds(weights, dev, dev_glance, zoom_glance, zoom_features)
    path = a.model_dir / "manifest.json"
    doc = json.loads(path.read_text())
    doc["config"]["diagnosis"].update(support=chosen["support"], spread=chosen["spread"])
    manifest.write_json(path, doc)


if __name__ == "__main__":
    main()
