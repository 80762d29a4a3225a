"""One command from pristine photos to the shipped critic:

    python -m export.build            # ~1 h on 2 cores; caches under build/, resumable

1. fold + fp16-round the ImageNet MobileNetV2 trunk and export it to ONNX (for fast data caching);
2. synthesize and cache the train and dev samples (export.samples; ~4.5 min per batch of variants);
3. train the projection and reasoner on oracle trajectories (export.train; --finetune also trains the
   trunk's last block from cached inputs), fixed seeds; with --teacher, a larger critic is trained
   first (WORK/teacher.npz, exported to WORK/teacher-critic/ for the benchmark) and the student also
   learns its distributions; then optionally the GRPO stage (export.rl, --rl-epochs); each stage's
   head is cached in WORK/head*.npz;
4. export: critic.npz (fp16 weights, all backends' shared tables, NumPy backend), encoder ONNX fp32 ->
   static int8, reasoner ONNX fp32, reasoner GGUF Q8_0, each checked against the PyTorch reference;
   before that, the cell diagnosis that grounds the findings is trained on the cached pooled features
   (export.diagnosis, cached in WORK/diagnosis.npz);
5. write the manifest (sha256 and size of every file, config, training log);
6. train the diagnosis's pixel-cue head and add it to the exported critic (export.cue_head, ~5 min; its
   training rows cached in WORK/cue_head; for the shipped critic it then writes the golden vectors that
   the parity tests read when torch is not installed), choose the diagnosis's thresholds on the maps the
   exported critic reads on the dev split (export.diagnosis, ~5 min) and fit the score calibration on the
   same run (export.calibrate, with the damage settings chosen on dev), both into the manifest; then the
   same two for the glance alone (a zoom budget of 0), on a --zooms 0 run (~2 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from export import manifest, oracle
from export.calibrate import main as calibrate
from export.cue_head import main as add_cue_head
from export.data import pristine_photos, trunk_arrays
from export.diagnosis import DECODING as DIAGNOSIS_DECODING
from export.diagnosis import SETTINGS as DIAGNOSIS_SETTINGS
from export.diagnosis import main as choose_thresholds
from export.diagnosis import train_diagnosis
from export.gguf_export import export as export_gguf
from export.onnx_export import (
    encoder_sqnr,
    export_encoder,
    export_reasoner,
    export_trunk,
    quantize_encoder,
    verify_encoder,
    verify_reasoner,
)
from export.rl import reinforce
from export.samples import build as build_samples
from export.samples import load_shards
from export.train import FEATURE_DROPOUT, LossWeights, Teacher, finetunable, teacher_config, train
from kernels.model import (
    CLIP_HIGH,
    CLIP_LOW,
    FINETUNE_FROM,
    LUMA,
    NSS_BLOCK,
    NSS_C,
    NSS_FLAT,
    NSS_SIGMA,
    NSS_STILL,
    NSS_TAPS,
    PIXEL_CELL,
    TAP_BLOCKS,
    TAP_CELL,
    CriticConfig,
    init_head,
    mobilenet_blocks,
    round_to_half,
)
from qds_lite import protocol as P
from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

SEED = 0
DEV_VARIANTS = 16


def critic_config() -> CriticConfig:
    return CriticConfig(vocab_size=P.VOCAB_SIZE, n_slots=P.N_SLOTS)


def runtime_config(cfg: CriticConfig, diagnosis: dict | None = None) -> dict:
    """What a runtime needs to rebuild the model: the architecture travels inside the artifact, with the
    grounding thresholds of its cell diagnosis (``support``, ``spread``) where it has one."""
    return cfg.to_dict() | ({"diagnosis": diagnosis} if diagnosis else {}) | {
        "encoder_blocks": mobilenet_blocks(), "tap_blocks": list(TAP_BLOCKS), "tap_cells": list(TAP_CELL),
        "pixel_cell": PIXEL_CELL, "clip": [CLIP_HIGH, CLIP_LOW], "luma": list(LUMA),
        "nss": {"taps": NSS_TAPS, "sigma": NSS_SIGMA, "c": NSS_C, "flat": NSS_FLAT, "still": NSS_STILL,
                "block": NSS_BLOCK},
        "vocab": list(P.VOCAB), "grid": P.GRID, "glance_size": P.GLANCE_SIZE, "zoom_size": P.ZOOM_SIZE,
    }


def calibration_views(data_split: str, n: int, seed: int) -> list[np.ndarray]:
    """Glance and zoom views of a few dev photos (never test) for int8 calibration."""
    from PIL import Image

    from qds_lite.io import glance_view, zoom_window

    rng = np.random.default_rng(seed)
    views = []
    for path in pristine_photos(data_split)[:n]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        views.append(glance_view(rgb))
        views += [zoom_window(rgb, int(c))[0] for c in rng.choice(P.N_CELLS, 3, replace=False)]
    return encoder_inputs(views)


def encoder_inputs(views: list[np.ndarray]) -> list[np.ndarray]:
    """HxWx3 uint8 views -> 3xHxW float32 in [0, 1], as the encoder graph takes them (sizes may differ)."""
    return [v.astype(np.float32).transpose(2, 0, 1) / 255.0 for v in views]


def export_all(weights: dict[str, np.ndarray], cfg: CriticConfig, out: Path, work: Path, training: dict,
               int8_encoder: bool, views: list[np.ndarray] | None = None, diagnosis: dict | None = None) -> None:
    """Write and verify every shipped file, then the manifest (the golden vectors follow the cue head:
    export.cue_head).

    ``views``: glance and zoom views (3xHxW in [0, 1]) to check the encoder on; by default dev-split
    pristine photos, which also calibrate the int8 encoder (studied only then: its SQNR goes in the
    manifest, and it ships with ``int8_encoder``). ``diagnosis``: the thresholds of the ``diag.*`` heads
    in ``weights`` (export.diagnosis), or None for a critic without one."""
    if int8_encoder and views is not None:
        raise ValueError("the int8 encoder is calibrated on dev-split photos only")
    out.mkdir(parents=True, exist_ok=True)
    old = out / "manifest.json"
    evaluation = json.loads(old.read_text()).get("evaluation") if old.exists() else None
    for stale in out.glob("*"):
        stale.unlink()
    np.savez_compressed(out / "critic.npz", **{k: v.astype(np.float16) for k, v in weights.items()})
    manifest.wrote(out / "critic.npz")
    study_int8 = views is None
    views = calibration_views("dev", 12, SEED) if views is None else views
    enc_fp32 = work / "encoder.fp32.onnx"
    export_encoder(weights, enc_fp32)
    notes = {"encoder_fp32_max_abs": verify_encoder(weights, enc_fp32, views[:4], 1e-4)}
    print(f"encoder: fp32 max abs {notes['encoder_fp32_max_abs']:.2e}")
    int8 = work / "encoder.int8.onnx"
    if study_int8:
        quantize_encoder(enc_fp32, int8, views)
        notes["encoder_int8_sqnr_db"] = round(encoder_sqnr(weights, int8, views), 1)
        print(f"encoder: int8 SQNR {notes['encoder_int8_sqnr_db']} dB")
    encoder = out / ("encoder.int8.onnx" if int8_encoder else "encoder.onnx")
    shutil.copyfile(int8 if int8_encoder else enc_fp32, encoder)
    manifest.wrote(encoder)
    export_reasoner(weights, cfg, out / "reasoner.onnx")
    notes["reasoner_onnx_max_abs"] = verify_reasoner(weights, cfg, out / "reasoner.onnx")
    manifest.wrote(out / "reasoner.onnx")
    shipped = out.resolve() == (BUNDLED_DIR / DEFAULT_MODEL).resolve()
    name = DEFAULT_MODEL if shipped else out.name  # an ablation variant or experiment is never the shipped critic
    export_gguf(weights, cfg, out / "reasoner.q8_0.gguf", qtype="q8_0", name=name)
    # the evaluation of the same weights stays (record a new one with `python -m export.manifest` after retraining)
    manifest.write(out, name=name, config=runtime_config(cfg, diagnosis), training=training | {"export": notes},
                   evaluation=evaluation if training.get("reused_head") else None)


def cached_stage(stem: Path, settings: dict, retrain: bool,
                 run) -> tuple[dict[str, np.ndarray], list | dict, float, bool]:
    """Run a training stage (``run() -> (head, history)``) or reuse STEM.npz when STEM.json records the
    same settings; returns the head, its history, the minutes it took, and whether it was reused."""
    head_path, log_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not retrain and log_path.exists() and json.loads(log_path.read_text())["settings"] == settings:
        with np.load(head_path, allow_pickle=False) as z:
            head = {k: z[k] for k in z.files}
        log = json.loads(log_path.read_text())
        print(f"reusing the trained head in {head_path} (--retrain to train again)")
        return head, log["history"], log.get("minutes"), True
    t0 = time.time()
    head, history = run()
    minutes = round((time.time() - t0) / 60, 1)
    np.savez(head_path, **head)
    log_path.write_text(json.dumps({"settings": settings, "history": history, "minutes": minutes}))
    return head, history, minutes, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("build"), help="cache and scratch folder")
    ap.add_argument("--cache", type=Path, default=None, help="sample cache (default: WORK/cache)")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / DEFAULT_MODEL)
    ap.add_argument("--variants", type=int, default=24, help="degraded variants per training photo and batch")
    ap.add_argument("--batches", type=int, default=6, help="cached batches of variants (seeds 0, 1, ...)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cells-weight", type=float, default=LossWeights.cells,
                    help="weight of the per-cell diagnosis loss (0 turns it off; ablation)")
    ap.add_argument("--rank-weight", type=float, default=LossWeights.rank,
                    help="weight of the Thurstone ranking loss across images (0 turns it off; ablation)")
    ap.add_argument("--feature-dropout", type=float, default=FEATURE_DROPOUT,
                    help="dropout on the visual features while training (default: %(default)s)")
    ap.add_argument("--colour-jitter", type=float, default=0.0, metavar="DEG",
                    help="turn each training photo's hue by up to DEG degrees (and its saturation) before it is "
                         "degraded (export.samples.jitter_colour; off: it ranked worse on dev)")
    ap.add_argument("--tap-dropout", type=float, default=0.5,
                    help="share of training sequences that see no block-13 (semantic) features, so the critic "
                         "cannot recognise its training photos (export.train.forward; default: %(default)s)")
    ap.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=False,
                    help=f"also fine-tune the trunk from block {FINETUNE_FROM} on (ablation: no gain measured, README)")
    ap.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=False,
                    help="train a larger teacher critic first and distil the student from it (ablation: README)")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--distill-weight", type=float, default=LossWeights.distill,
                    help="weight of matching the teacher's distributions (with --teacher)")
    ap.add_argument("--distill-on", choices=("all", "verdict"), default=LossWeights.distill_on,
                    help="match the teacher at every chosen token and the verdict, or at the verdict only")
    ap.add_argument("--rl-epochs", type=int, default=0, help="epochs of the GRPO stage after the supervised one "
                    "(export/rl.py; 0: none)")
    ap.add_argument("--rl-samples", type=int, default=2048, help="training samples per GRPO epoch")
    ap.add_argument("--retrain", action="store_true", help="train even if WORK/head*.npz match the settings")
    ap.add_argument("--int8-encoder", action="store_true",
                    help="ship the static int8 encoder (off: no int8 recipe keeps scores within 1.0 of fp32, "
                         "see export/quant_study.py)")
    a = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(a.workers)
    a.work.mkdir(parents=True, exist_ok=True)

    trunk = trunk_arrays()
    trunk_onnx = a.work / "trunk.onnx"
    export_trunk(trunk, trunk_onnx)
    cache = a.cache or a.work / "cache"
    dev = load_shards(build_samples("dev", DEV_VARIANTS, cache, str(trunk_onnx), seed=SEED, workers=a.workers,
                                    colour_jitter=a.colour_jitter))
    data = load_shards([shard for b in range(a.batches) for shard in build_samples(
        "train", a.variants, cache, str(trunk_onnx), seed=SEED + b, workers=a.workers,
        colour_jitter=a.colour_jitter)])
    print(f"samples: train {len(data['kinds'])}, dev {len(dev['kinds'])}", flush=True)

    cfg = critic_config()
    weights = LossWeights(cells=a.cells_weight, rank=a.rank_weight, distill=a.distill_weight if a.teacher else 0.0,
                          distill_on=a.distill_on)
    settings = {"seed": SEED, "epochs": a.epochs, "variants": a.variants, "batches": a.batches,
                "loss_weights": asdict(weights), "config": cfg.to_dict(),
                "finetune_from": FINETUNE_FROM if a.finetune else None, "feature_dropout": a.feature_dropout,
                "reportable": oracle.REPORTABLE,
                # recorded only when on, so that heads cached before these options existed are still reused
                **({"colour_jitter": a.colour_jitter} if a.colour_jitter else {}),
                **({"tap_dropout": a.tap_dropout} if a.tap_dropout else {})}
    teacher = None
    if a.teacher:
        tcfg = teacher_config(cfg)
        tweights = replace(weights, distill=0.0, distill_on="all")  # the teacher learns from the oracle alone
        tsettings = settings | {"epochs": a.teacher_epochs, "config": tcfg.to_dict(), "finetune_from": None,
                                "loss_weights": asdict(tweights)}
        thead, thistory, tminutes, treused = cached_stage(
            a.work / "teacher", tsettings, a.retrain,
            lambda: train(init_head(tcfg, SEED), tcfg, data, dev, epochs=a.teacher_epochs, seed=SEED,
                          weights=tweights, dropout=a.feature_dropout))
        teacher = Teacher.from_head(thead, tcfg)
        export_all(trunk | round_to_half(thead), tcfg, a.work / "teacher-critic", a.work,
                   {"command": "python -m export.build --teacher", **tsettings, "history": thistory,
                    "minutes": tminutes, "reused_head": treused}, int8_encoder=False)
        settings = settings | {"teacher": tsettings}
    head, history, minutes, reused = cached_stage(
        a.work / "head", settings, a.retrain,
        lambda: train(init_head(cfg, SEED), cfg, data, dev, epochs=a.epochs, seed=SEED, weights=weights,
                      trunk=finetunable(trunk) if a.finetune else None, dropout=a.feature_dropout,
                      teacher=teacher, tap_dropout=a.tap_dropout))
    if a.rl_epochs:
        settings = settings | {"rl_epochs": a.rl_epochs, "rl_samples": a.rl_samples}
        supervised = head
        head, rl_history, rl_minutes, rl_reused = cached_stage(
            a.work / "head_rl", settings, a.retrain,
            lambda: reinforce(supervised, cfg, data, dev, epochs=a.rl_epochs, per_epoch=a.rl_samples, seed=SEED))
        history, minutes, reused = history + rl_history, (minutes or 0) + (rl_minutes or 0), reused and rl_reused
    diag, diag_log, _, diag_reused = cached_stage(a.work / "diagnosis", settings | {"diagnosis": DIAGNOSIS_SETTINGS},
                                        a.retrain, lambda: train_diagnosis(data, dev, seed=SEED))
    training = {
        "command": "python -m export.build", **settings,
        "samples": {"train": int(len(data["kinds"])), "dev": int(len(dev["kinds"]))},
        "photos": {s: len(pristine_photos(s)) for s in ("train", "dev", "test")},
        "history": history, "minutes": minutes,  # training (supervised + GRPO), when the head was trained
        "reused_head": reused and diag_reused, "diagnosis": diag_log,
    }
    export_all(trunk | round_to_half(head | diag), cfg, a.out, a.work, training, a.int8_encoder,
               diagnosis={k: diag_log[k] for k in ("support", "spread", *DIAGNOSIS_DECODING)})
    add_cue_head(["--model-dir", str(a.out), "--work", str(a.work / "cue_head")])
    choose_thresholds(["--model-dir", str(a.out), "--out", str(a.work / "bench" / "diagnosis")])
    # the same dev run: the maps and level distributions the calibration reads do not depend on the thresholds
    calibrate(["--model-dir", str(a.out), "--records", str(a.work / "bench" / "diagnosis" / "accuracy.json")])
    # the glance alone (`qds triage --zooms 0`) reads maps and a raw scale of its own: its thresholds and anchors
    choose_thresholds(["--model-dir", str(a.out), "--glance", "--out", str(a.work / "bench" / "diagnosis-glance")])
    calibrate(["--model-dir", str(a.out), "--glance", "--records",
               str(a.work / "bench" / "diagnosis-glance" / "accuracy.json")])
    print(json.dumps(history[-1]))


if __name__ == "__main__":
    main()
