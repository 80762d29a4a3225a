"""The critic on degradation code it never trained on: the Waterloo Exploration distortions and DBCNN's five.

    python -m benchmarks.waterloo [--model M] [--backends onnx] [--split test] [--photos N]
                                  [--out build/bench/waterloo] [--seed 0] [--no-baselines]

``benchmarks.accuracy`` degrades the held-out photos with ``export.synth``, the code the critic's training
images come from. This benchmark degrades the same held-out photos (same preparation: oriented, long side
768 px) with :mod:`benchmarks.waterloo_distortions` instead: nine distortions at the five levels their
papers published (Gaussian blur, white noise, JPEG, JPEG 2000, contrast change, pink noise, colour
quantization with dither, over- and underexposure), each applied to the whole image, plus the pristine
photo. Severity is level / 5, so that the tests read as in ``benchmarks.accuracy``: L-test within photo and
distortion, D-test pristine against levels 2-5 (severity >= 0.4), P-test pairs two or more levels apart,
cross-distortion SRCC per photo. BRISQUE, NIQE, PIQE and MobileNetV2+ridge score the same images in the
same run. Two of the nine (JPEG 2000, colour quantization) have no finding type of ours; the share of
damaged images whose damage a finding names is reported for the other seven.

Nothing here was used to train or tune the critic: it is a check of how far its figures carry to other
people's degradation code (README, *Results*).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.accuracy import (
    CRITIC_PREFIX,
    LONG_SIDE,
    SUMMARY_ROWS,
    Item,
    _environment,
    _fmt,
    _stable_int,
    benchmark_parser,
    compute,
    md_table,
    open_run,
    per_kind_rows,
    plot_per_kind,
    score_plans,
    summary_rows,
    text_table,
    write_report,
)
from benchmarks.waterloo_distortions import DISTORTIONS, LEVELS, apply

DEFAULT_OUT = Path("build") / "bench" / "waterloo"
# the accuracy benchmark's summary rows that need no local set and no trained-for score
ROWS = tuple(r for r in SUMMARY_ROWS if r[0] == "summary" or r[1] in ("clean_flagged", "global_named"))


def build_items(photo: str, seed: int) -> list[Item]:
    """The pristine photo and every distortion at every level; one seed per (photo, distortion), so that the
    level changes only the strength (the same noise field, scaled)."""
    items = [Item(photo, None, 0.0, None, 0, "global")]
    for kind in DISTORTIONS:
        s = _stable_int("qds-waterloo", seed, photo, kind)
        items += [Item(photo, kind, level / len(LEVELS), None, s, "global") for level in LEVELS]
    return items


def level_of(severity: float) -> int:
    """The published level (1..5) of a severity level / 5."""
    return round(severity * len(LEVELS))


def mean_score_rows(records: Sequence[dict], method: str) -> list[list[str]]:
    """Mean score of ``method`` per distortion and level (the pristine photos' mean in every row's first column)."""
    clean = [r["scores"][method] for r in records if r["kind"] is None]
    rows = []
    for kind in DISTORTIONS:
        by_level = [[r["scores"][method] for r in records if r["kind"] == kind
                     and level_of(r["severity"]) == level] for level in LEVELS]
        rows.append([kind, _fmt(sum(clean) / len(clean), 1)] + [_fmt(sum(v) / len(v), 1) for v in by_level])
    return rows


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from qds_lite.protocol import GRID

    started = _dt.datetime.now(_dt.timezone.utc)
    kinds = list(DISTORTIONS)
    setup = open_run(args, "waterloo", f"{len(kinds)} distortions x levels 1-5")
    if setup is None:
        return 2
    critics, skipped, model_info, baselines, root, photos = setup
    methods = list(critics) + [b.name for b in baselines]
    plans = [(p, build_items(p.relative_to(root).as_posix(), args.seed)) for p in photos]
    records, photo_info, seconds = score_plans(
        plans, critics, baselines, lambda base, it: apply(base, it.kind, level_of(it.severity), it.seed),
        lambda kind: DISTORTIONS[kind][1] if kind else None, GRID, "waterloo")
    report = compute(records, methods, kinds, GRID, trained_scale=False)
    finished = _dt.datetime.now(_dt.timezone.utc)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.waterloo" + ("" if not argv else " " + shlex.join(argv))
    crit = [m for m in methods if m.startswith(CRITIC_PREFIX)]
    header = ["metric"] + methods
    rows = summary_rows(report, methods, seconds, ROWS)
    kind_rows = per_kind_rows(report, methods, kinds, "srcc")
    lkind_rows = per_kind_rows(report, methods, kinds, "l_srcc")
    named_rows = [[k, DISTORTIONS[k][1] or "-"]
                  + [_fmt(report["methods"][m]["localisation_per_kind"][k]["global_named"]) for m in crit]
                  for k in kinds]
    plot_engine = plot_per_kind(out / "waterloo_per_kind.png", report, crit[:1] + [b.name for b in baselines], kinds)

    print(text_table(header, rows))
    print()
    print(text_table(["kind (SRCC)"] + methods, kind_rows))
    print()
    md = [
        "<!-- produced by benchmarks/waterloo.py; do not edit by hand -->",
        ("Other degradation code" if args.split == "test" else "Development-split check of other degradation code")
        + f": {len(photos)} {args.split}-split photos (long side {LONG_SIDE} px), each pristine and with "
        f"{len(kinds)} distortions of the Waterloo Exploration Database and DBCNN at their published levels 1-5 "
        f"(severity = level / 5), {len(records)} images; the critic never trained on this code. Critic "
        f"`{model_info['name']}` (sha256 {model_info['sha256'][:12]}); quality is higher-is-better for every method.",
        "", "```", command, "```", "",
        md_table(header, rows), "",
        "Per-distortion SRCC (pristine + that distortion's levels, pooled over photos):", "",
        md_table(["distortion (SRCC)"] + methods, kind_rows), "",
        "Per-distortion L-test (mean over photos of the within-photo SRCC):", "",
        md_table(["distortion (L-test SRCC)"] + methods, lkind_rows), "",
    ]
    if crit:
        md += ["Damage of severity >= 0.4 named by one of the findings (the finding type that names it):", "",
               md_table(["distortion", "finding type"] + crit, named_rows), "",
               f"Mean score ({crit[0]}) by level:", "",
               md_table(["distortion", "pristine"] + [f"level {v}" for v in LEVELS], mean_score_rows(records, crit[0])),
               ""]
    md += [f"_{finished.strftime('%Y-%m-%d %H:%M UTC')}, {platform.platform()}, {os.cpu_count()} CPUs; "
           f"wall time {(finished - started).total_seconds() / 60:.1f} min._", ""]
    doc = {
        "command": command, "argv": [sys.executable, "-m", "benchmarks.waterloo", *argv],
        "started": started.isoformat(), "finished": finished.isoformat(),
        "model": model_info, "backends": [m[len(CRITIC_PREFIX):] for m in critics], "skipped_backends": skipped,
        "baselines": [b.name for b in baselines], "methods": methods,
        "settings": {"kinds": kinds, "levels": list(LEVELS), "long_side": LONG_SIDE, "seed": args.seed,
                     "split": args.split, "zooms": args.zooms},
        "photos": photo_info, "seconds_per_image": seconds, "results": report["methods"],
        "plot": {"file": "waterloo_per_kind.png", "engine": plot_engine}, "environment": _environment(),
        "records": records,
    }
    write_report(out, "waterloo", md, doc)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = benchmark_parser("waterloo", __doc__, DEFAULT_OUT)
    p.add_argument("--backends", default="onnx", help="comma-separated critic backends (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random distortions (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(_parser().parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
