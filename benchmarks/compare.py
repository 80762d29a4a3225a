"""Pairwise benchmark for `qds compare`: which of two held-out images is better, qds vs BRISQUE/NIQE/PIQE.

    python -m benchmarks.compare [--records build/bench/full/accuracy.json] [--out build/bench]
                                 [--max-pairs 20000] [--seed 0]

It reads the scored images of a ``benchmarks.accuracy`` run (the held-out test split, every method scored
in that same run) and forms two kinds of pairs from its global set, with the truth given by the known
synthetic severity:

* same content, different degradations: two versions of one photo, of different kinds (or pristine vs
  degraded), whose severities differ by at least ``SAME_GAP``;
* different content, clearly different quality: two different photos whose severities differ by at least
  ``CROSS_GAP`` (a deterministic sample of at most ``--max-pairs``).

A method is right on a pair when it gives the less damaged image the higher quality (a tie counts 1/2).
``qds compare`` prefers a over b exactly when P(a better than b) > 1/2, i.e. when a's expected level, and so
its score, is higher (Thurstone with equal means gives 1/2), so the critic's pairwise accuracy is the
accuracy of its scores. Where the records carry the critic's level distributions (accuracy runs from this
version on), the Brier score of P(better) against the truth is reported too (lower is better; 0.25 is a coin).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

SAME_GAP = 0.4
CROSS_GAP = 0.6
DEFAULT_RECORDS = Path("build") / "bench" / "full" / "accuracy.json"


def same_content_pairs(records: list[dict]) -> list[tuple[int, int]]:
    """(better, worse) index pairs: same photo, different kinds, severity gap >= SAME_GAP."""
    by_photo: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_photo.setdefault(r["photo"], []).append(i)
    pairs = []
    for idx in by_photo.values():
        for a in idx:
            for b in idx:
                ra, rb = records[a], records[b]
                if ra["kind"] != rb["kind"] and rb["severity"] - ra["severity"] >= SAME_GAP - 1e-6:
                    pairs.append((a, b))
    return pairs


def cross_content_pairs(records: list[dict], max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """(better, worse) pairs of different photos with a severity gap >= CROSS_GAP, sampled deterministically."""
    sev = np.array([r["severity"] for r in records])
    photo = np.array([r["photo"] for r in records])
    a, b = np.nonzero(sev[None, :] - sev[:, None] >= CROSS_GAP - 1e-6)
    keep = photo[a] != photo[b]
    a, b = a[keep], b[keep]
    if a.size > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(a.size, max_pairs, replace=False))
        a, b = a[pick], b[pick]
    return list(zip(a.tolist(), b.tolist()))


def accuracy(records: list[dict], pairs: list[tuple[int, int]], method: str) -> tuple[float, int]:
    """Share of pairs where ``method`` scores the better image higher (ties 1/2); pairs with a NaN are left out."""
    q = np.array([r["scores"].get(method, math.nan) for r in records], dtype=float)
    p = np.array(pairs)
    qa, qb = q[p[:, 0]], q[p[:, 1]]
    ok = np.isfinite(qa) & np.isfinite(qb)
    right = (qa[ok] > qb[ok]) + 0.5 * (qa[ok] == qb[ok])
    return float(right.mean()) if ok.any() else math.nan, int(ok.sum())


def brier(records: list[dict], pairs: list[tuple[int, int]], method: str) -> float:
    """Mean (1 - P(better one better))^2 from the stored level distributions and damage penalties (as
    qds_lite.compare.level_moments reads them), NaN if they are absent."""
    from qds_lite.compare import VAR_FLOOR, with_penalty

    probs = [r.get("level_probs", {}).get(method) for r in records]
    if any(p is None for p in probs):
        return math.nan
    lv = np.arange(1, 6)
    pr = np.array(probs, dtype=float)
    penalty = np.array([r.get("damage_penalty", {}).get(method, 0.0) for r in records])
    mean = pr @ lv
    mu, var = with_penalty(mean, (pr * (lv[None, :] - mean[:, None]) ** 2).sum(1), penalty)
    var = var + VAR_FLOOR
    p = np.array(pairs)
    z = (mu[p[:, 0]] - mu[p[:, 1]]) / np.sqrt(var[p[:, 0]] + var[p[:, 1]])
    prob = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    return float(((1 - prob) ** 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="accuracy.json of a benchmarks.accuracy run")
    ap.add_argument("--out", type=Path, default=Path("build") / "bench")
    ap.add_argument("--max-pairs", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    run = json.loads(a.records.read_text())
    records = [r for r in run["records"] if r["set"] == "global"]
    sets = {"same content, different degradations": same_content_pairs(records),
            "different content, clearly different quality": cross_content_pairs(records, a.max_pairs, a.seed)}
    methods = run["methods"]
    table = {name: {m: accuracy(records, pairs, m) for m in methods} for name, pairs in sets.items()}
    critics = [m for m in methods if m.startswith("qds/")]
    briers = {name: {m: brier(records, pairs, m) for m in critics} for name, pairs in sets.items()}
    result = {"records": str(a.records), "records_command": run["command"], "n_images": len(records),
              "pairs": {k: len(v) for k, v in sets.items()}, "accuracy": table, "brier": briers,
              "command": f"python -m benchmarks.compare --records {a.records} --max-pairs {a.max_pairs} "
                         f"--seed {a.seed}"}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["<!-- produced by benchmarks/compare.py; do not edit by hand -->",
             f"Pairs from the held-out images of `{run['command']}` ({len(records)} images); truth = known severity.",
             "", "```", result["command"], "```", "",
             "| pairs | n | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for name, pairs in sets.items():
        lines.append(f"| {name} | {len(pairs)} | " + " | ".join(f"{table[name][m][0]:.3f}" for m in methods) + " |")
    (a.out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
