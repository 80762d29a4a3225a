"""Train the pixel-cue head of an exported critic's diagnosis and add it to the critic.

    python -m export.cue_head [--model-dir DIR] [--work build/cue_head]     # ~10 min on 2 cores

The zoom head of the cell diagnosis (export.diagnosis) reads the encoder's features of a zoomed window and
now and then takes content for damage. The cue head (``diag.cues``, same two-layer MLP as the other heads)
reads the hand-made measurements of the same window's pixels (:mod:`qds_lite.pixel_cues`) and gives a
second opinion over the same classes; the runtime multiplies the two, the cue head's raised to
``cue_weight`` (:class:`qds_lite.diagnosis.CellMap`).

- rows: synthetic degradations (export.synth, as the critic's training samples: random scale and crop,
  one or two degradations, local or global, some clean) of the *training* photos, VARIANTS per photo,
  CELLS random cells each: the cue vector of the cell's zoom window and the cell's finding type
  (export.oracle.cell_types), or clean; dev rows the same from the dev photos, with the critic's zoom head
  reading of each window as well. Cached in WORK keyed by the settings.
- the head is trained like the diagnosis heads (export.diagnosis.fit_head: the epoch kept is the one whose
  dev rows are best classified, mean of the accuracy on damaged and on clean windows), on standardized cues,
  the standardization folded into its first layer;
- ``cue_weight`` is the one of CUE_WEIGHTS whose product with the zoom head classifies the dev rows best
  (the same mean accuracy).

For the shipped critic the golden vectors of the parity tests are written again (export.golden). Then the
grounding thresholds must be chosen again on the maps the runtime now reads:
``python -m export.diagnosis --model-dir DIR`` (export.build runs both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from export import golden, manifest, oracle, synth
from export.data import pristine_photos
from export.diagnosis import STD_FLOOR, cell_accuracy, fit_head, fold_standardization
from export.samples import frame, stable_seed
from export.train import AUX_MIN_SEVERITY
from kernels.model import diagnose_cues
from qds_lite import backends
from qds_lite import protocol as P
from qds_lite.diagnosis import Diagnosis, combine
from qds_lite.io import glance_view, zoom_window
from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL, load_weights, resolve
from qds_lite.pixel_cues import NAMES, window_cues

VARIANTS = {"train": 20, "dev": 12}  # synthetic images per photo
CELLS = 8  # zoom windows per synthetic image
EPOCHS = 40
SEED = 0
CUE_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
SETTINGS = {"variants": VARIANTS, "cells": CELLS, "epochs": EPOCHS, "seed": SEED, "cues": list(NAMES),
            "min_severity": AUX_MIN_SEVERITY, "p_clean": 0.12, "max_degradations": 2}


class ZoomReader:
    """The zoom head of an exported critic, on its onnx backend (one thread), for the dev rows."""

    def __init__(self, model_dir: Path) -> None:
        files = resolve(model_dir)
        weights = load_weights(files)
        self.backend = backends.select("onnx", files, weights, 1)
        self.diagnosis = Diagnosis.of_model(weights, files.config)
        if self.diagnosis is None:
            raise SystemExit(f"cue_head: the critic in {model_dir} has no cell diagnosis to add cues to")

    def glance(self, image: np.ndarray) -> np.ndarray:
        return self.backend.encode(glance_view(image))

    def zoom(self, glance: np.ndarray, cell: int, window: np.ndarray) -> np.ndarray:
        return self.diagnosis.zoom(glance[cell], self.backend.encode(window))


def photo_rows(job: tuple[str, str, int, str | None]) -> dict[str, np.ndarray]:
    """The rows of one photo: cues (n, len(NAMES)), labels (n,) and, with a critic, its zoom head's
    probabilities (n, types + clean)."""
    path, split, variants, model_dir = job
    reader = ZoomReader(Path(model_dir)) if model_dir else None
    photo = np.asarray(Image.open(path).convert("RGB"))
    cues, labels, zoom = [], [], []
    for v in range(variants):
        rng = np.random.default_rng(stable_seed("cue_head", split, Path(path).name, v))
        degs = synth.sample(rng, max_degradations=SETTINGS["max_degradations"], p_clean=SETTINGS["p_clean"])
        image = synth.apply(frame(photo, rng), degs)
        types = oracle.cell_types(sorted(((d.finding, d.severity, d.region) for d in degs), key=lambda d: -d[1]),
                                  AUX_MIN_SEVERITY)
        glance = reader.glance(image) if reader else None
        for cell in rng.choice(P.N_CELLS, CELLS, replace=False):
            window = zoom_window(image, int(cell))[0]
            cues.append(window_cues(window))
            labels.append(types[cell])
            if reader:
                zoom.append(reader.zoom(glance, int(cell), window))
    out = {"cues": np.stack(cues), "labels": np.array(labels, np.int64)}
    return out | ({"zoom": np.stack(zoom)} if reader else {})


def zoom_head_digest(model_dir: Path) -> str:
    """What the dev rows' zoom readings depend on: the encoder and the zoom head (not the cue head)."""
    digest = hashlib.sha256(manifest.sha256_file(model_dir / "encoder.onnx").encode())
    with np.load(model_dir / "critic.npz") as weights:
        for k in sorted(k for k in weights.files if k.startswith("diag.zoom.")):
            digest.update(weights[k].tobytes())
    return digest.hexdigest()


def rows(split: str, work: Path, model_dir: Path | None, workers: int = 2) -> dict[str, np.ndarray]:
    """Every photo's rows of one split, cached in ``work`` (keyed by the settings, the cues' values on the golden
    zoom and, for dev, the critic's zoom head)."""
    cues_now = hashlib.sha256(window_cues(golden.reference_views()[1]).tobytes()).hexdigest()  # the cue code
    key = json.dumps([SETTINGS, split, cues_now, zoom_head_digest(model_dir) if model_dir else None])
    path = work / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        with np.load(path) as cached:
            return dict(cached)
    photos = [str(p) for p in pristine_photos(split)]
    jobs = [(p, split, VARIANTS[split], str(model_dir) if model_dir else None) for p in photos]
    t0, parts = time.time(), []
    with Pool(workers) as pool:
        for i, part in enumerate(pool.imap(photo_rows, jobs), 1):
            parts.append(part)
            if i % 20 == 0 or i == len(jobs):
                print(f"cue_head: {split} {i}/{len(jobs)} photos ({time.time() - t0:.0f} s)", flush=True)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def train_cue_head(train: dict[str, np.ndarray], dev: dict[str, np.ndarray],
                   log=print) -> tuple[dict[str, np.ndarray], dict]:
    """-> the head's weights (``diag.cues.*``, on raw cues) and its log, with ``cue_weight`` chosen on dev."""
    mean, std = train["cues"].mean(0), train["cues"].std(0) + STD_FLOOR

    def std_(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std).astype(np.float32)

    head, history = fit_head("diag.cues", len(NAMES), diagnose_cues, (std_(train["cues"]),), train["labels"],
                             (std_(dev["cues"]),), dev["labels"], EPOCHS, SEED, log)
    weights = fold_standardization(head, "diag.cues", mean, std, (True,))
    weights = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}  # as shipped
    cue_probs = Diagnosis(weights, support=1.0, spread=1.0).cues(dev["cues"])
    scores = {w: cell_accuracy(combine(dev["zoom"], cue_probs, w).argmax(-1), dev["labels"]) for w in CUE_WEIGHTS}
    best = max(CUE_WEIGHTS, key=scores.get)
    figures = {"zoom_head": cell_accuracy(dev["zoom"].argmax(-1), dev["labels"]),
               "cue_head": cell_accuracy(cue_probs.argmax(-1), dev["labels"]),
               **{f"product_w{w}": s for w, s in scores.items()}}
    log(f"cue_head: dev cell accuracy {json.dumps({k: round(v, 4) for k, v in figures.items()})}; "
        f"cue_weight {best}")
    return weights, {"cue_weight": best, "dev_cell_accuracy": {k: round(v, 4) for k, v in figures.items()},
                     "rows": {"train": len(train["labels"]), "dev": len(dev["labels"])},
                     "settings": SETTINGS, "history": history}


def add_to_critic(model_dir: Path, weights: dict[str, np.ndarray], record: dict) -> None:
    """Write the head into the critic's weights (fp16, as the others) and ``cue_weight`` into its manifest."""
    path = model_dir / "critic.npz"
    with np.load(path) as old:
        arrays = {k: old[k] for k in old.files if not k.startswith("diag.cues.")}
    tmp = path.with_name("critic.tmp.npz")
    np.savez_compressed(tmp, **arrays, **{k: v.astype(np.float16) for k, v in weights.items()})
    tmp.replace(path)
    manifest.wrote(path)
    doc = json.loads((model_dir / "manifest.json").read_text())
    doc["config"]["diagnosis"]["cue_weight"] = record["cue_weight"]
    training = doc["training"] | {"cue_head": record}
    manifest.write(model_dir, name=doc["name"], config=doc["config"], training=training,
                   evaluation=doc.get("evaluation"))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.cue_head", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=BUNDLED_DIR / DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=Path("build") / "cue_head", help="row cache (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    train = rows("train", a.work, None, a.workers)
    dev = rows("dev", a.work, a.model_dir, a.workers)
    t0 = time.time()
    weights, record = train_cue_head(train, dev)
    add_to_critic(a.model_dir, weights, record | {"command": "python -m export.cue_head",
                                                  "minutes": round((time.time() - t0) / 60, 1)})
    if a.model_dir.resolve() == (BUNDLED_DIR / DEFAULT_MODEL).resolve():
        golden.main()  # the parity tests' reference, for the weights now shipped


if __name__ == "__main__":
    main()
