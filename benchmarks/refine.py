"""Refine benchmark: does `qds refine` bring degraded photos back towards their pristine originals?

    python -m benchmarks.refine [--photos N] [--split test] [--kinds k1,k2|none] [--max-steps 4] [--seed 0]
                                [--model NAME|DIR] [--margin M] [--no-gate | --gate FILE] [--cautious] [--pairs N]
                                [--clean-views mirrored,cropped,larger|none] [--out build/bench]

Built on the fly from held-out photos (``export.data.pristine_photos("test")``; ``--split dev`` for tuning),
each loaded oriented and LANCZOS-downscaled to a long side of 768 px as in ``benchmarks/accuracy.py``. Per
photo: the pristine image, and for every kind of ``export.synth.KINDS`` one *single dominant* degradation,
once over the whole image (global) and once on a random 2x2-cell quarter of it (local), severity drawn
uniformly from [0.3, 0.8] (seeded by photo and kind). Each image is refined with the critic (onnx; --model)
and, as the baseline, given a fixed generic enhancement (auto-contrast with 0.5 % clipping, then an
unsharp mask of radius 1.5 px at 50 %). Reported, before vs after, against the pristine original:
PSNR and SSIM (mean over R, G, B of Wang et al.'s SSIM: 11x11 Gaussian window, sigma 1.5, K = 0.01, 0.03),
and without reference the critic's score and NIQE (``benchmarks.baselines``), per kind and set.

``--pairs N`` adds N images per photo with two faults of different kinds over the whole image (severities
U(0.3, 0.6)), where a second edit is needed; they are reported on a line of their own, outside the bars,
which are about a single dominant degradation.

Clean inputs: each pristine photo, and by default three more views of it (``--clean-views``; mirrored, its
central 80 % each way, and loaded at a long side of 1024 px), since what the critic falsely finds in a clean
photo depends on layout and scale. ``--kinds none`` refines the clean inputs alone.

Bars (issue 6): on degraded images refine improves SSIM for >= 70 % of them; it beats the generic
enhancement on mean SSIM for every kind it claims to handle; on pristine inputs it costs <= 0.005 SSIM.
Until the NIQE model ships as ``qds_lite`` package data, the refine guard reads this folder's copy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .accuracy import _jsonable, _Progress, _stable_int, md_table, pick_photos, prepare_photo, text_table

if TYPE_CHECKING:
    from qds_lite.refine_gate import EditGate

SEVERITY_RANGE = (0.3, 0.8)
PAIR_SEVERITY_RANGE = (0.3, 0.6)  # each of the two faults of a --pairs image
PRISTINE_BAR = 0.005  # largest acceptable SSIM drop on a pristine input
SHARE_BAR = 0.70  # share of degraded images whose SSIM must improve
IMPROVED = 1e-4  # SSIM gain that counts as an improvement (an untouched image gains 0)
CLEAN_VIEWS = ("mirrored", "cropped", "larger")  # clean inputs made from each pristine photo besides itself
LARGER_SIDE = 1024  # px, the long side of the "larger" clean view
DEFAULT_OUT = Path("build") / "bench"


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over the R, G, B channels of two uint8 images (Wang et al. 2004; 11x11 Gaussian window with
    sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255; the 5 px border the window does not fit is left out)."""
    import cv2

    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def f(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0 ** 2 / mse) if mse > 0 else float("inf")


def generic_enhance(rgb: np.ndarray) -> np.ndarray:
    """The fixed baseline: Pillow auto-contrast (0.5 % clipped at each end, per channel) + unsharp mask."""
    from PIL import Image, ImageFilter, ImageOps

    img = ImageOps.autocontrast(Image.fromarray(rgb), cutoff=0.5)
    return np.asarray(img.filter(ImageFilter.UnsharpMask(radius=1.5, percent=50, threshold=2)))


def items_for(photo: str, kinds: Sequence[str], seed: int, grid: int, pairs: int = 0,
              clean_views: Sequence[str] = ()) -> list[dict]:
    """The pristine item and its ``clean_views`` (:func:`clean_view`; set "pristine VIEW"), per kind a global
    and a local (2x2 cells) single degradation; then ``pairs`` images with two faults of different kinds over
    the whole image (set "pair", kind "a+b")."""
    out = [{"photo": photo, "kind": None, "set": "pristine", "severity": 0.0, "region": None, "seed": 0}]
    out += [dict(out[0], set=f"pristine {v}", view=v) for v in clean_views]
    for k in kinds:
        for where in ("global", "local"):
            s = _stable_int("qds-refine", seed, photo, k, where)
            rng = np.random.default_rng(s)
            sev = round(float(rng.uniform(*SEVERITY_RANGE)), 3)
            c0, r0 = int(rng.integers(0, grid - 1)), int(rng.integers(0, grid - 1))
            region = None if where == "global" else (c0, r0, c0 + 2, r0 + 2)
            out.append({"photo": photo, "kind": k, "set": where, "severity": sev, "region": region, "seed": s})
    for j in range(pairs if len(kinds) > 1 else 0):
        s = _stable_int("qds-refine-pair", seed, photo, j)
        rng = np.random.default_rng(s)
        two = [kinds[i] for i in rng.choice(len(kinds), 2, replace=False)]
        sevs = [round(float(v), 3) for v in rng.uniform(*PAIR_SEVERITY_RANGE, 2)]
        out.append({"photo": photo, "kind": "+".join(two), "set": "pair", "severity": max(sevs), "region": None,
                    "seed": s, "faults": [[k, v] for k, v in zip(two, sevs)]})
    return out


def degradations(item: dict) -> list:
    """The synthesizer's degradations of one item (none for the pristine one)."""
    from export import synth

    if item["kind"] is None:
        return []
    if item["set"] == "pair":
        return [synth.Degradation(k, v, None, item["seed"] + i) for i, (k, v) in enumerate(item["faults"])]
    return [synth.Degradation(item["kind"], item["severity"], item["region"], item["seed"])]


def _measure(ref: np.ndarray, img: np.ndarray, score: float, niqe_fn) -> dict:
    return {"ssim": ssim(ref, img), "psnr": psnr(ref, img), "score": score, "niqe": niqe_fn(img)}


def names_arg(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names, each one of ``allowed``, or ``none`` for no names."""

    def parse(text: str) -> list[str]:
        names = [] if text == "none" else text.split(",")
        unknown = sorted(set(names) - set(allowed))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} "
                                             f"(choose from {', '.join(allowed)}, or none)")
        return names

    return parse


def clean_view(path: Path, base: np.ndarray, view: str) -> np.ndarray:
    """Another clean input made from a pristine photo (``base``: it as :func:`prepare_photo` loads it):
    ``mirrored`` left to right, ``cropped`` to its central 80 % each way (not resampled), or ``larger``
    (loaded at a long side of :data:`LARGER_SIDE` px). The critic's false findings depend on layout and
    scale, so one view of each photo says little about how often refine edits a clean photo."""
    if view == "mirrored":
        return np.ascontiguousarray(base[:, ::-1])
    if view == "cropped":
        h, w = base.shape[:2]
        return np.ascontiguousarray(base[h // 10:h - h // 10, w // 10:w - w // 10])
    if view == "larger":
        return prepare_photo(path, LARGER_SIDE)
    raise ValueError(f"unknown clean view {view!r} (one of {', '.join(CLEAN_VIEWS)})")


def degraded_items(photos: Sequence[Path], root: Path, kinds: Sequence[str], seed: int, pairs: int = 0,
                   label: str = "refine", clean_views: Sequence[str] = ()
                   ) -> Iterator[tuple[np.ndarray, dict, np.ndarray]]:
    """(pristine photo, item, its degraded image) for every item of ``items_for`` of every photo, with a
    progress bar; photos are loaded as the accuracy benchmark loads them. A clean view is its own pristine
    photo."""
    from export import synth
    from qds_lite.protocol import GRID

    plans = [(p, items_for(p.relative_to(root).as_posix(), kinds, seed, GRID, pairs, clean_views)) for p in photos]
    progress = _Progress(sum(len(i) for _, i in plans), label)
    try:
        for path, items in plans:
            base = prepare_photo(path)
            for it in items:
                if "view" in it:
                    view = clean_view(path, base, it["view"])
                    yield view, it, view
                else:
                    yield base, it, base if it["kind"] is None else synth.apply(base, degradations(it))
                progress.update(f"{path.name} {it['kind'] or 'pristine'} {it['set']}")
    finally:
        progress.close()


def run_items(photos: Sequence[Path], root: Path, kinds: Sequence[str], seed: int, max_steps: int,
              model: str | None, margin: float, pairs: int = 0, gate: bool | EditGate = True,
              clean_views: Sequence[str] = (), cautious: bool = False) -> list[dict]:
    from qds_lite import load
    from qds_lite.refine import refine

    from .baselines import niqe_score


    def niqe_fn(x: np.ndarray) -> float:
        try:
            return niqe_score(x)
        except ValueError:
            return float("nan")

    critic = load(model, backend="onnx")
    records = []
    for base, it, img in degraded_items(photos, root, kinds, seed, pairs, "refine", clean_views):
        t = time.perf_counter()
        r = refine(critic, img, max_steps=max_steps, margin=margin, gate=gate, cautious=cautious)
        seconds = time.perf_counter() - t
        refined = np.asarray(r.image)
        generic = generic_enhance(img)
        records.append(dict(it, region=list(it["region"]) if it["region"] else None, seconds=seconds,
                            before=_measure(base, img, r.initial.score, niqe_fn),
                            refine=_measure(base, refined, r.final.score, niqe_fn),
                            generic=_measure(base, generic, critic.score(generic).score, niqe_fn),
                            findings=[[f.type, f.severity, list(f.box)] for f in r.initial.findings],
                            steps=[s.to_json() for s in r.steps]))
    return records


def clean_figures(clean: Sequence[dict]) -> dict:
    """What refine and the generic enhancement cost clean inputs: SSIM drops (mean, max, share over the bar)
    and the share refine changed."""
    drops = np.array([r["before"]["ssim"] - r["refine"]["ssim"] for r in clean], np.float64)
    gdrops = np.array([r["before"]["ssim"] - r["generic"]["ssim"] for r in clean], np.float64)
    return {"n": len(clean), "mean_drop": float(drops.mean()) if drops.size else float("nan"),
            "max_drop": float(drops.max()) if drops.size else float("nan"),
            "share_over_bar": float((drops > PRISTINE_BAR).mean()) if drops.size else float("nan"),
            "changed": float(np.mean([any(s["kept"] for s in r["steps"]) for r in clean])) if clean else float("nan"),
            "generic_mean_drop": float(gdrops.mean()) if gdrops.size else float("nan")}


def summarise(records: Sequence[dict], kinds: Sequence[str]) -> dict:
    """Per kind (global and local pooled, and each set), the pristine figures and the bars."""

    def block(rs: Sequence[dict]) -> dict:
        if not rs:
            return {"n": 0}
        d = {m: np.array([r[m]["ssim"] - r["before"]["ssim"] for r in rs]) for m in ("refine", "generic")}
        out = {"n": len(rs), "ssim_before": float(np.mean([r["before"]["ssim"] for r in rs]))}
        for m in ("refine", "generic"):
            out[m] = {
                "d_ssim": float(d[m].mean()), "improved": float((d[m] > IMPROVED).mean()),
                "d_psnr": float(np.mean([_finite(r[m]["psnr"]) - _finite(r["before"]["psnr"]) for r in rs])),
                "d_score": float(np.mean([r[m]["score"] - r["before"]["score"] for r in rs])),
                "d_niqe": float(np.nanmean([r[m]["niqe"] - r["before"]["niqe"] for r in rs])),
            }
        out["refine"]["worse"] = float((d["refine"] < -IMPROVED).mean())
        out["refine"]["changed"] = float(np.mean([any(s["kept"] for s in r["steps"]) for r in rs]))
        out["refine"]["beats_generic"] = bool(out["refine"]["d_ssim"] > out["generic"]["d_ssim"])
        return out

    degraded = [r for r in records if r["kind"] and r["set"] != "pair"]  # the bars' single dominant faults
    per_kind = {k: {s: block([r for r in degraded if r["kind"] == k and (s == "all" or r["set"] == s)])
                    for s in ("all", "global", "local")} for k in kinds}
    pristine = [r for r in records if not r["kind"]]
    overall = block(degraded)
    pristine_fig = clean_figures(pristine)
    pristine_fig["by_set"] = {st: clean_figures([r for r in pristine if r["set"] == st])
                              for st in dict.fromkeys(r["set"] for r in pristine)}  # the photos; each view
    beaten = [k for k in kinds if per_kind[k]["all"]["n"] and not per_kind[k]["all"]["refine"]["beats_generic"]]
    by_set = {st: block([r for r in degraded if r["set"] == st]) for st in ("global", "local")}
    bars = {"share_improved": overall["refine"]["improved"] if degraded else float("nan"),
            **{f"share_improved_{st}": b["refine"]["improved"] if b["n"] else float("nan") for st, b in by_set.items()},
            **{f"share_worse_{st}": b["refine"]["worse"] if b["n"] else float("nan") for st, b in by_set.items()},
            "share_improved_ok": bool(degraded) and overall["refine"]["improved"] >= SHARE_BAR,
            "kinds_not_beating_generic": beaten,
            "pristine_mean_drop_ok": bool(pristine) and pristine_fig["mean_drop"] <= PRISTINE_BAR,
            "pristine_max_drop_ok": bool(pristine) and pristine_fig["max_drop"] <= PRISTINE_BAR}
    pairs = block([r for r in records if r["set"] == "pair"])
    return {"per_kind": per_kind, "overall": overall, "by_set": by_set, "pairs": pairs, "pristine": pristine_fig,
            "bars": bars}


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 100.0  # identical images: PSNR capped at 100 dB for averaging


def table_rows(summary: dict, kinds: Sequence[str]) -> list[list[str]]:
    rows = []
    for k in [*kinds, None]:
        b = summary["overall"] if k is None else summary["per_kind"][k]["all"]
        if not b["n"]:
            continue
        r, g = b["refine"], b["generic"]
        loc = None if k is None else summary["per_kind"][k]
        rows.append([k or "**all degraded**", str(b["n"]), f"{b['ssim_before']:.3f}", f"{r['d_ssim']:+.4f}",
                     f"{g['d_ssim']:+.4f}", f"{r['improved']:.0%}", f"{r['changed']:.0%}",
                     "-" if loc is None else f"{loc['global']['refine']['d_ssim']:+.4f}",
                     "-" if loc is None else f"{loc['local']['refine']['d_ssim']:+.4f}",
                     f"{r['d_psnr']:+.2f} / {g['d_psnr']:+.2f}", f"{r['d_score']:+.1f} / {g['d_score']:+.1f}",
                     f"{r['d_niqe']:+.2f} / {g['d_niqe']:+.2f}"])
    return rows


HEADER = ["kind", "n", "SSIM before", "dSSIM refine", "dSSIM generic", "SSIM improved", "changed",
          "dSSIM global", "dSSIM local", "dPSNR ref/gen", "dScore ref/gen", "dNIQE ref/gen"]


def main(argv: Sequence[str] | None = None) -> int:
    from export import synth

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.refine", description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=20, help="photos spread evenly over the split (default 20)")
    p.add_argument("--split", default="test", choices=("test", "dev"), help="test (report) or dev (tuning)")
    p.add_argument("--kinds", type=names_arg(synth.KINDS), default=list(synth.KINDS),
                   help="comma-separated synth kinds (default: all; 'none': only the clean inputs)")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--model", default=None, help="critic name or folder (default: the bundled one)")
    p.add_argument("--margin", type=float, default=None,
                   help="score gain a kept step needs (default: qds_lite.refine.SCORE_MARGIN); for tuning on dev")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gate", action="store_true",
                   help="keep the best-scoring edit without the edit gate (qds_lite.refine_gate): the ablation")
    p.add_argument("--gate", type=Path, default=None,
                   help="an edit gate's JSON (export.refine_gate fit --out FILE), not the shipped one; for tuning")
    p.add_argument("--cautious", action="store_true",
                   help="refine with cautious=True: local edits only where the reframed photo shows the fault too")
    p.add_argument("--pairs", type=int, default=0,
                   help="also N images per photo with two faults of different kinds (reported apart from the bars)")
    p.add_argument("--clean-views", type=names_arg(CLEAN_VIEWS), default=list(CLEAN_VIEWS),
                   help=f"clean inputs made from each photo besides itself, comma-separated ({', '.join(CLEAN_VIEWS)}; "
                        "default: all) or 'none'")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.no_gate and args.gate:
        p.error("--gate and --no-gate: choose one")

    from export.data import pristine_dir, pristine_photos
    from qds_lite.refine import SCORE_MARGIN
    from qds_lite.refine_gate import EditGate

    kinds, views = args.kinds, args.clean_views
    started = _dt.datetime.now(_dt.timezone.utc)
    root = pristine_dir()
    photos = pick_photos(pristine_photos(args.split, root), args.photos)
    margin = SCORE_MARGIN if args.margin is None else args.margin
    gate = False if args.no_gate else EditGate.load(args.gate) if args.gate else True
    records = run_items(photos, root, kinds, args.seed, args.max_steps, args.model, margin, args.pairs, gate=gate,
                        clean_views=views, cautious=args.cautious)
    summary = summarise(records, kinds)
    minutes = (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds() / 60
    command = "python -m benchmarks.refine" + (" " + shlex.join(argv) if argv else "")

    rows = table_rows(summary, kinds)
    pr, bars = summary["pristine"], summary["bars"]
    clean = "the photos" + (f" and their views {', '.join(views)}" if views else "")
    lines = [
        f"pristine inputs (n={pr['n']}: {clean}): SSIM drop mean {pr['mean_drop']:.4f}, max {pr['max_drop']:.4f}, "
        f"{pr['share_over_bar']:.0%} over {PRISTINE_BAR}; changed {pr['changed']:.0%} "
        f"(generic: mean drop {pr['generic_mean_drop']:.4f})"
        + "".join(f"; {st}: max {v['max_drop']:.4f}, {v['share_over_bar']:.0%} over" for st, v in pr["by_set"].items()),
        f"bars: SSIM improved on {bars['share_improved']:.0%} of degraded images (>= {SHARE_BAR:.0%}: "
        f"{'yes' if bars['share_improved_ok'] else 'NO'}; global {bars['share_improved_global']:.0%} improved, "
        f"{bars['share_worse_global']:.0%} worse; local {bars['share_improved_local']:.0%} improved, "
        f"{bars['share_worse_local']:.0%} worse); kinds where refine does not beat generic: "
        f"{', '.join(bars['kinds_not_beating_generic']) or 'none'}; pristine mean drop <= {PRISTINE_BAR}: "
        f"{'yes' if bars['pristine_mean_drop_ok'] else 'NO'}, max: {'yes' if bars['pristine_max_drop_ok'] else 'NO'}",
    ]
    pairs = summary["pairs"]
    if pairs["n"]:
        lines.append(f"two faults at once (n={pairs['n']}, severities U{PAIR_SEVERITY_RANGE}): SSIM improved on "
                     f"{pairs['refine']['improved']:.0%}, made worse on {pairs['refine']['worse']:.0%}; dSSIM refine "
                     f"{pairs['refine']['d_ssim']:+.4f}, generic {pairs['generic']['d_ssim']:+.4f}")
    print(text_table(HEADER, rows))
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["<!-- produced by benchmarks/refine.py; do not edit by hand -->",
          f"`qds refine` on {len(photos)} {args.split}-split photos (long side 768 px), one degradation per image "
          f"(severity U{SEVERITY_RANGE}, global and on a 2x2-cell quarter), against a fixed generic enhancement "
          "(auto-contrast + unsharp mask). d = after - before; SSIM/PSNR against the pristine original; "
          "score = the critic's (higher is better); NIQE lower is better. Rows pool global and local.",
          "", "```", command, "```", "", md_table(HEADER, rows), "", *[f"- {line}" for line in lines], "",
          f"_{started.strftime('%Y-%m-%d %H:%M UTC')}, {platform.platform()}; wall time {minutes:.1f} min; "
          f"{np.mean([r['seconds'] for r in records]):.2f} s per refine._", ""]
    (out / "refine.md").write_text("\n".join(md))
    doc = {"command": command, "started": started.isoformat(), "minutes": minutes, "split": args.split,
           "photos": [p.relative_to(root).as_posix() for p in photos], "kinds": kinds,
           "settings": {"severity_range": SEVERITY_RANGE, "max_steps": args.max_steps, "seed": args.seed,
                        "margin": margin, "gate": False if args.no_gate else str(args.gate or "shipped"),
                        "clean_views": views, "cautious": args.cautious,
                        "long_side": 768,
                        "improved_if_dssim_over": IMPROVED},
           "summary": summary, "records": records}
    (out / "refine.json").write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    print(f"wrote {out / 'refine.json'}, {out / 'refine.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
