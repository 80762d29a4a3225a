"""Teach the small critic a full-size critic's judgments: fine-tune it on ``export.distill`` records.

    python -m export.learn --records teacher.jsonl --images DIR --out DIR [--model NAME|DIR] [--epochs N]
                           [--lr LR] [--dev-share F] [--work DIR] [--seed S]

Each record is a teacher's trajectory over one photo (zoom cells, findings, level distribution, and the
small critic's token sequence for them; export/distill.schema.json). The photo is read again from
``--images`` (its sha256 must match the record's: a changed file is skipped with a warning), its glance
and the teacher's zoom windows go through the starting critic's frozen trunk, and the head (projection
and reasoner) is trained from the starting critic's weights to say what the teacher said: cross-entropy
on every token the teacher chose, each over the tokens the grammar allows there, and the KL divergence
of the verdict from the teacher's own level distribution (its "logits", not only its answer). A share of
the photos (by a stable hash of the name) is held out for model selection: the epoch whose dev records
the critic reproduces best is kept. The result is a complete critic folder (weights, ONNX, GGUF,
manifest with the training log) that ``qds score --model DIR`` runs like the bundled one.

Only the teacher's records are learned here. Mixing them with the synthetic oracle trajectories of
``export.build`` (so the critic keeps what it knew where the teacher says nothing) is not done yet.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from export.build import encoder_inputs, export_all
from export.distill import load_records
from export.onnx_export import export_trunk
from export.samples import TrunkRunner
from export.train import LossWeights, SequenceWriter, train
from kernels.model import CriticConfig, round_to_half
from qds_lite import protocol as P
from qds_lite.errors import QdsError
from qds_lite.io import load_image, zoom_window
from qds_lite.model_store import load_weights, resolve, sha256_file
from qds_lite.progress import Progress

FINETUNE_LR = 5e-4  # a quarter of the from-scratch rate: the head starts trained


def record_features(records: list[dict], images: Path, trunk: TrunkRunner, quiet: bool = False
                    ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Trunk features of each record's glance and zoom windows (cut from the photo at full resolution, as
    the runtime does), and the record's tokens as ids; returns the data and the records kept."""
    max_zooms = max([1] + [len(r["zoom_cells"]) for r in records])
    length = max(len(r["tokens"]) for r in records)
    rows: dict[str, list] = {k: [] for k in ("glance", "zooms", "zoom_cells", "tokens", "max_zooms", "level_probs")}
    kept = []
    progress = Progress(quiet)
    advance = progress.start(len(records))
    for r in records:
        path = images / r["image"]
        try:
            if sha256_file(path) != r["sha256"]:
                progress.say(f"learn: {r['image']}: changed since the teacher saw it (sha256 differs); skipped")
                continue
            loaded = load_image(path)
        except (OSError, QdsError) as e:
            progress.say(f"learn: {r['image']}: {getattr(e, 'message', None) or e}; skipped")
            continue
        finally:
            advance(r["image"])
        glance = trunk([loaded.glance])[0][0]
        zooms = np.zeros((max_zooms, P.ZOOM_TOKENS, glance.shape[-1]), np.float16)
        cells = np.full(max_zooms, -1, np.int8)
        if r["zoom_cells"]:
            zooms[:len(r["zoom_cells"])] = trunk([zoom_window(loaded.full, c)[0] for c in r["zoom_cells"]])[0]
            cells[:len(r["zoom_cells"])] = r["zoom_cells"]
        tokens = np.full(length, P.PAD, np.int64)
        tokens[:len(r["tokens"])] = [P.TOKEN_ID[t] for t in r["tokens"]]
        for k, v in (("glance", glance), ("zooms", zooms), ("zoom_cells", cells), ("tokens", tokens),
                     ("max_zooms", r["max_zooms"]), ("level_probs", np.asarray(r["level_probs"], np.float32))):
            rows[k].append(v)
        kept.append(r)
    progress.close()
    return {k: np.stack(v) if v else np.zeros((0,)) for k, v in rows.items()}, kept


def check_views(path: Path, cells: list[int]) -> list[np.ndarray]:
    """The glance and the zoom windows of one photo, as the exporters check the encoder on them."""
    loaded = load_image(path)
    return encoder_inputs([loaded.glance] + [zoom_window(loaded.full, c)[0] for c in cells])


def record_sequences(data: dict[str, np.ndarray], rng: np.random.Generator, augment: bool) -> dict[str, np.ndarray]:
    """Teacher-forcing arrays of the records' own trajectories (``rng`` and ``augment`` are unused: the
    teacher chose its zooms, so none are dropped or swapped as in the synthetic sequences)."""
    n = len(data["tokens"])
    length = data["tokens"].shape[1] + P.GLANCE_TOKENS + P.ZOOM_TOKENS * data["zooms"].shape[1]
    w = SequenceWriter(n, length)
    for i in range(n):
        tokens = [int(t) for t in data["tokens"][i] if t != P.PAD]
        probs = data["level_probs"][i]
        w.begin(i, int(data["max_zooms"][i]))
        w.glance()
        k, z = 1, 0
        while tokens[k] == P.ZOOM:
            w.zoom(tokens[k + 1] - P.CELL0, z)
            k, z = k + 2, z + 1
        expected = float(probs @ np.arange(1, len(P.LEVELS) + 1))
        w.verdict(probs, expected)  # <stop>, then the teacher's most likely level (the record's next token)
        for token in tokens[k + 2:]:
            w.put(token)
    return w.arrays


def split_dev(records: list[dict], share: float) -> tuple[list[int], list[int]]:
    """Indices of training and dev records: a stable hash of each photo's name decides, so a photo is
    never on both sides; with fewer than two photos on a side, dev is the training set itself."""
    def u(r: dict) -> float:
        return int.from_bytes(hashlib.sha256(r["image"].encode()).digest()[:8], "big") / 2**64

    dev = [i for i, r in enumerate(records) if u(r) < share]
    tr = [i for i, r in enumerate(records) if u(r) >= share]
    if len(dev) < 2 or len(tr) < 2:
        return list(range(len(records))), list(range(len(records)))
    return tr, dev


def learn(records_path: Path, images: Path, out: Path, *, model: str | None = None, epochs: int = 3,
          lr: float = FINETUNE_LR, dev_share: float = 0.1, work: Path = Path("build/learn"), seed: int = 0,
          quiet: bool = False, log=print) -> dict:
    """Fine-tune ``model`` (default: the bundled critic) on the records and export it to ``out``;
    returns the training summary that the manifest records. ``log`` gets one JSON line per epoch (its
    held-out figures)."""
    records = load_records(records_path)
    if not records:
        raise ValueError(f"{records_path}: no records")
    files = resolve(model)
    weights = {k: np.asarray(v, np.float32) for k, v in load_weights(files).items()}
    cfg = CriticConfig(**{k: files.config[k] for k in CriticConfig.__dataclass_fields__})
    trunk = {k: v for k, v in weights.items() if k.startswith("enc.")}
    # the cell diagnosis (diag.*) reads the projection's tokens, which this changes, and the records have no
    # cell labels to retrain it on: the learned critic decodes its findings ungrounded
    head = {k: v for k, v in weights.items() if k.startswith(("proj.", "dec."))}
    work.mkdir(parents=True, exist_ok=True)
    export_trunk(trunk, work / "trunk.onnx")
    data, kept = record_features(records, images, TrunkRunner(str(work / "trunk.onnx")), quiet)
    if not kept:
        raise ValueError(f"{records_path}: none of the records' photos could be read under {images}")
    tr, dev = split_dev(kept, dev_share)
    torch.manual_seed(seed)
    trained, history = train(head, cfg, {k: v[tr] for k, v in data.items()}, {k: v[dev] for k, v in data.items()},
                             epochs=epochs, lr=lr, seed=seed, weights=LossWeights(cells=0.0),
                             sequences=record_sequences, folded=True, log=log)
    summary = {"command": "python -m export.learn", "records": str(records_path), "from": files.root.name,
               "from_sha256": files.sha256, "epochs": epochs, "lr": lr, "seed": seed,
               "records_used": {"train": len(tr), "dev": len(dev) if dev != tr else 0},
               "records_skipped": len(records) - len(kept),
               "teachers": sorted({r["teacher"]["name"] for r in kept}), "history": history}
    views = [v for r in kept[:4] for v in check_views(images / r["image"], r["zoom_cells"])]
    export_all(trunk | round_to_half(trained), cfg, out, work, summary, int8_encoder=False, views=views)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.learn", description=__doc__.split("\n")[0])
    arg = ap.add_argument
    arg("--records", required=True, type=Path, metavar="FILE", help="records written by python -m export.distill")
    arg("--images", required=True, type=Path, metavar="DIR", help="the folder the teacher ran over (--images there)")
    arg("--out", required=True, type=Path, metavar="DIR", help="critic folder to write")
    arg("--model", metavar="NAME|DIR", help="critic to start from (default: the bundled one)")
    arg("--epochs", type=int, default=3)
    arg("--lr", type=float, default=FINETUNE_LR, help="peak learning rate (default: %(default)s)")
    arg("--dev-share", type=float, default=0.1, help="share of photos held out for model selection")
    arg("--work", type=Path, default=Path("build/learn"), help="scratch folder (trunk graph)")
    arg("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        s = learn(a.records, a.images, a.out, model=a.model, epochs=a.epochs, lr=a.lr, dev_share=a.dev_share,
                  work=a.work, seed=a.seed, log=lambda line: print(f"learn: epoch {line}", file=sys.stderr))
    except (ValueError, OSError) as e:
        print(f"learn: {e}", file=sys.stderr)
        return 2
    best = next(h for h in s["history"] if h.get("selected"))
    print(f"learned from {s['records_used']['train']} records ({s['records_skipped']} skipped); kept epoch "
          f"{best['epoch']} (held-out token loss {best['dev_ce']:.3f}, level KL {best['dev_kl']:.3f}); wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
