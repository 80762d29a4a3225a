"""The training ablation table: one column per critic variant, from accuracy benchmark runs.

Each variant is trained with ``python -m export.build`` (flags in the README), exported to its own
folder and run through ``python -m benchmarks.accuracy --model DIR --no-baselines --out DIR``; this
prints the README's ablation table from those reports, so the table is generated, never typed::

    python -m benchmarks.ablation "frozen features:build/ab/v1/accuracy.json" "+ scene statistics:..."
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.accuracy import CRITIC_PREFIX, SUMMARY_ROWS, _fmt, md_table


def column(report: dict) -> dict[tuple[str, str], float]:
    """The first critic method's figures of one accuracy report, keyed like SUMMARY_ROWS."""
    method = next(m for m in report["methods"] if m.startswith(CRITIC_PREFIX))
    res = report["results"][method]
    return {(section, key): res[section][key] for section, key, _ in SUMMARY_ROWS if key in res.get(section, {})}


def table(variants: Sequence[tuple[str, dict]]) -> str:
    cols = [column(report) for _, report in variants]
    rows = [[label] + [_fmt(c.get((section, key))) if (section, key) in c else "-" for c in cols]
            for section, key, label in SUMMARY_ROWS]
    models = [f"`{report['model']['sha256'][:12]}`" for _, report in variants]
    return md_table(["metric"] + [name for name, _ in variants], rows + [["model sha256"] + models])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", metavar="LABEL:ACCURACY_JSON")
    a = ap.parse_args(argv)
    variants = []
    for v in a.variants:
        label, _, path = v.rpartition(":")
        if not label:
            ap.error(f"{v!r}: expected LABEL:PATH")
        variants.append((label, json.loads(Path(path).read_text())))
    print(table(variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
