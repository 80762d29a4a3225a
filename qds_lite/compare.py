"""`qds compare`: how likely one image is better than another, and which findings make the difference.

The Thurstone model, as VisualQuality-R1 uses it for its ranking reward: the critic's level distribution
``p`` over levels 1..5 (bad..excellent) is read as the distribution of the image's quality, summarised as
Normal(mu, sigma^2) with

    mu      = sum_k k * p_k                      (the expected level; raw score = 100 * (mu - 1) / 4)
    sigma^2 = sum_k (k - mu)^2 * p_k + VAR_FLOOR

and for two images, P(i better than j) = Phi((mu_i - mu_j) / sqrt(sigma_i^2 + sigma_j^2)), Phi the standard
normal CDF. VisualQuality-R1 takes mu and sigma from a group of sampled scores; sampling the level token
has exactly this mean and variance. The comparison works on the distributions, before the critic's score
calibration (``qds_lite.scale``), after the damage penalty its diagnosis map took off the raw score: that
takes a share of the raw score, so the level's distance above 1, and its spread, shrink by the same share
(:func:`with_penalty`; critics without a map take nothing off). The calibration is monotone, so ranking by
mu and by the reported score agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import QdsError
from .result import SEVERITY_WORDS, Finding, Result

# Variance floor in level units^2 (std 0.1 level = 2.5 raw score points): keeps P defined (0.5) for two
# identical, fully certain predictions and stops a near-certain critic from claiming P = 1 over a hair.
VAR_FLOOR = 0.01


def level_moments(result: Result) -> tuple[float, float]:
    """(mu, sigma^2) of the result's level distribution, levels numbered 1..5, mu less the damage penalty,
    variance floored."""
    probs = result.level_probs
    total = sum(probs)
    if not total > 0:
        raise QdsError(f"{result.file}: level distribution is empty")
    mean = sum((k + 1) * p for k, p in enumerate(probs)) / total
    var = sum((k + 1 - mean) ** 2 * p for k, p in enumerate(probs)) / total
    mu, var = with_penalty(mean, var, result.damage_penalty)
    return mu, var + VAR_FLOOR


def with_penalty(mean, var, penalty):
    """Moments of the level (1..5) after the damage penalty: the raw score 25 (level - 1) is scaled by
    1 - penalty / raw (qds_lite/scale.py takes a share of it), so the level's distance above 1 and its spread
    shrink by that factor. Floats or NumPy arrays."""
    raw = 25.0 * (mean - 1.0)
    factor = 1.0 - penalty / (raw + (raw <= 0))  # no raw score, nothing taken off
    return 1.0 + (mean - 1.0) * factor, var * factor ** 2


def prob_better(a: Result, b: Result) -> float:
    """Thurstone probability that ``a`` is better than ``b``."""
    mu_a, var_a = level_moments(a)
    mu_b, var_b = level_moments(b)
    z = (mu_a - mu_b) / math.sqrt(var_a + var_b)
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class Ranked:
    index: int  # position in the input sequence
    file: str
    score: float
    mean_win: float  # mean P(better than each other image): the ranking key
    confidence: float | None  # P(better than the next one in the ranking); None for the last


@dataclass(frozen=True)
class PairReasons:
    better: int  # input indices; "better" is the one more likely better (P >= 0.5)
    worse: int
    prob: float  # P(better > worse)
    reasons: tuple[str, ...]  # findings that differ: the worse image's first, then the better one's


@dataclass(frozen=True)
class Comparison:
    files: tuple[str, ...]  # display labels, unique (a "#n" suffix is added to repeated names)
    matrix: tuple[tuple[float, ...], ...]  # matrix[i][j] = P(i better than j); 0.5 on the diagonal
    ranking: tuple[Ranked, ...]  # best first
    pairs: tuple[PairReasons, ...]

    def to_json(self) -> dict:
        return {
            "files": list(self.files),
            "prob_better": [[round(p, 4) for p in row] for row in self.matrix],
            "ranking": [{"rank": n + 1, "file": r.file, "index": r.index, "score": round(r.score, 2),
                         "mean_win": round(r.mean_win, 4),
                         "confidence": None if r.confidence is None else round(r.confidence, 4)}
                        for n, r in enumerate(self.ranking)],
            "pairs": [{"better": self.files[p.better], "worse": self.files[p.worse], "prob": round(p.prob, 4),
                       "reasons": list(p.reasons)} for p in self.pairs],
        }


def compare(results: Sequence[Result], pairs: Sequence[tuple[int, int]] | None = None) -> Comparison:
    """Pairwise probabilities, a ranking and reasons for ``pairs`` (input indices; default: neighbours in
    the ranking)."""
    n = len(results)
    if n < 2:
        raise QdsError("compare needs at least two images")
    labels = _labels([r.file for r in results])
    matrix = tuple(tuple(0.5 if i == j else prob_better(results[i], results[j]) for j in range(n))
                   for i in range(n))
    mean_win = [sum(matrix[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)]
    # By expected level (the score): then each image is at least even odds against the next one down, which
    # ranking by mean win probability does not guarantee when uncertainties differ.
    order = sorted(range(n), key=lambda i: (-results[i].score, -mean_win[i], i))
    ranking = tuple(Ranked(i, labels[i], results[i].score, mean_win[i],
                           matrix[i][order[k + 1]] if k + 1 < n else None) for k, i in enumerate(order))
    wanted = list(zip(order, order[1:])) if pairs is None else list(pairs)
    out = []
    for i, j in wanted:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise QdsError(f"no such pair of images: {i}, {j}")
        if matrix[i][j] < 0.5:
            i, j = j, i
        why = differences(results[j], results[i], labels[j], labels[i])  # the worse one's defects first
        out.append(PairReasons(i, j, matrix[i][j], why))
    return Comparison(tuple(labels), matrix, ranking, tuple(out))


def differences(a: Result, b: Result, label_a: str | None = None, label_b: str | None = None) -> tuple[str, ...]:
    """Finding types present in one result and absent or milder in the other: ``a``'s first, then ``b``'s,
    each largest difference first.

    E.g. ``"b.jpg: strong motion blur (centre) not in a.jpg"`` or
    ``"b.jpg: strong noise (top left), only slight in a.jpg"``. Equal worst severities are no difference.
    """
    label_a, label_b = label_a or a.file, label_b or b.file
    worst_a, worst_b = _worst_by_type(a.findings), _worst_by_type(b.findings)
    found = []
    for side, (this, other, this_label, other_label) in enumerate(((worst_a, worst_b, label_a, label_b),
                                                                   (worst_b, worst_a, label_b, label_a))):
        for kind, f in this.items():
            g = other.get(kind)
            if g is not None and g.severity >= f.severity:
                continue
            if g is None:
                found.append((side, -f.severity, f"{this_label}: {f.describe()} not in {other_label}"))
            else:
                text = f"{this_label}: {f.describe()}, only {_word(g.severity)} in {other_label}"
                found.append((side, g.severity - f.severity, text))
    return tuple(text for *_, text in sorted(found))


def _worst_by_type(findings: Sequence[Finding]) -> dict[str, Finding]:
    worst: dict[str, Finding] = {}
    for f in findings:
        if f.type not in worst or f.severity > worst[f.type].severity:
            worst[f.type] = f
    return worst


def _word(severity: float) -> str:
    return next(w for limit, w in SEVERITY_WORDS if severity < limit)


def _labels(names: Sequence[str]) -> list[str]:
    """The file names, with " #n" (1-based input position) added where a name repeats."""
    return [name if names.count(name) == 1 else f"{name} #{i + 1}" for i, name in enumerate(names)]
