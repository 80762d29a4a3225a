"""The think-with-images protocol as spoken by a full-size VLM critic (DESIGN.md section 6), version 1.

Pure Python (no llama.cpp): the system prompt, the GBNF grammar that every assistant turn is decoded
under, the parser of a turn, box geometry and the score/level mapping. ``qds_lite.vlm`` runs it.

One assistant turn is ``<think>...</think>`` followed by either a tool call ``<zoom>[x0,y0,x1,y1]</zoom>``
(the runtime answers with that region of the full-resolution image as a new image) or the verdict: up to
three ``<find>TYPE SEVERITY [x0,y0,x1,y1]</find>`` and ``<answer>SCORE</answer>``. Coordinates are
integer thousandths of the image's width and height (resolution independent and short to decode).
SCORE is on the 1-5 mean-opinion scale with up to two decimals, the native scale of VisualQuality-R1
and Q-Insight, so its leading digit is exactly the Q-Align level (1 bad ... 5 excellent).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .protocol import FINDING_TYPES, LEVELS, MAX_FINDINGS

PROTOCOL_VERSION = 1
COORD_MAX = 1000

SYSTEM_PROMPT = (
    "You are an expert judge of photographic image quality. Find where the quality of the image suffers and why, "
    "then score it.\n"
    "Every reply is one step. Start with your reasoning in <think>...</think>. Then either ask to look closer with "
    "<zoom>[x0,y0,x1,y1]</zoom>, and the user sends that region at full resolution, or give your verdict: up to "
    f"{MAX_FINDINGS} findings <find>TYPE SEVERITY [x0,y0,x1,y1]</find> and <answer>SCORE</answer>.\n"
    f"Coordinates are integer thousandths of the image width and height (0 = left or top, {COORD_MAX} = right or "
    f"bottom). TYPE is one of: {', '.join(FINDING_TYPES)}. SEVERITY is from 0.0 (invisible) to 1.0 (ruinous). "
    "SCORE is the overall quality from 1 (bad) through 2 (poor), 3 (fair), 4 (good) to 5 (excellent), with up to two "
    "decimals."
)

Box = tuple[int, int, int, int]


def grammar(*, allow_zoom: bool, allow_verdict: bool = True, think_chars: int = 600) -> str:
    """GBNF for one assistant turn. With ``allow_zoom`` False (zoom budget spent) only the verdict can follow;
    with ``allow_verdict`` False (minimum zooms not yet made) only a zoom can."""
    if not (allow_zoom or allow_verdict):
        raise ValueError("a turn must allow a zoom or a verdict")
    tail = " | ".join(name for name, ok in (("zoom", allow_zoom), ("verdict", allow_verdict)) if ok)
    types = " | ".join(f'"{t}"' for t in sorted(FINDING_TYPES, key=len, reverse=True))
    return "\n".join((
        f"root ::= think nl ({tail})",
        f'think ::= "<think>" [^<]{{0,{think_chars}}} "</think>"',
        'nl ::= "\\n"?',
        'zoom ::= "<zoom>" box "</zoom>"',
        f'verdict ::= (find nl){{0,{MAX_FINDINGS}}} "<answer>" score "</answer>"',
        'find ::= "<find>" type " " sev " " box "</find>"',
        f"type ::= {types}",
        'sev ::= "0." [0-9] | "1.0"',
        'box ::= "[" c "," c "," c "," c "]"',
        f'c ::= [0-9] | [1-9] [0-9] | [1-9] [0-9] [0-9] | "{COORD_MAX}"',
        'score ::= [1-4] ("." [0-9] [0-9]?)? | "5" (".0" "0"?)?',
    )) + "\n"


@dataclass(frozen=True)
class Turn:
    """One parsed assistant turn: a zoom request or a verdict (findings and answer)."""

    think: str
    zoom: Box | None = None
    findings: tuple[tuple[str, float, Box], ...] = ()
    answer: float | None = None


_BOX = r"\[(\d+),(\d+),(\d+),(\d+)\]"
_TURN = re.compile(r"<think>([^<]*)</think>\n?(?:<zoom>" + _BOX + r"</zoom>|((?:<find>[^<]*</find>\n?)*)"
                   r"<answer>([0-9.]+)</answer>)")
_FIND = re.compile(r"<find>([a-z_]+) ([0-9.]+) " + _BOX + "</find>")


def parse_turn(text: str) -> Turn:
    """Parse a turn decoded under :func:`grammar` (a ValueError for anything else)."""
    m = _TURN.fullmatch(text)
    if m is None:
        raise ValueError(f"not a protocol turn: {text[:200]!r}")
    if m.group(2) is not None:
        return Turn(m.group(1), zoom=tuple(int(v) for v in m.group(2, 3, 4, 5)))
    found = tuple((f[0], float(f[1]), tuple(int(v) for v in f[2:])) for f in _FIND.findall(m.group(6)))
    return Turn(m.group(1), findings=found, answer=float(m.group(7)))


def box_fractions(box: Box) -> tuple[float, float, float, float]:
    """Thousandths (any corner order) -> sorted fractions x0 <= x1, y0 <= y1 in [0, 1]."""
    x0, x1 = sorted(min(v, COORD_MAX) / COORD_MAX for v in (box[0], box[2]))
    y0, y1 = sorted(min(v, COORD_MAX) / COORD_MAX for v in (box[1], box[3]))
    return (x0, y0, x1, y1)


def box_window(box: Box, size: tuple[int, int], min_px: int = 32) -> tuple[int, int, int, int]:
    """The pixel window (x0, y0, x1, y1) of a thousandths box in an image of ``size`` (w, h).

    Rounded outwards; a window narrower than ``min_px`` (or empty: the model may name a degenerate box)
    is grown about its centre and shifted to lie inside the image."""
    fx0, fy0, fx1, fy1 = box_fractions(box)
    out = []
    for lo, hi, n in ((fx0, fx1, size[0]), (fy0, fy1, size[1])):
        a, b = math.floor(lo * n), math.ceil(hi * n)
        need = min(n, max(min_px, 1))
        if b - a < need:
            a = min(max(0, (a + b - need) // 2), n - need)
            b = a + need
        out.append((a, b))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


def level_probs(logits: list[float] | None, answer: float) -> tuple[float, ...]:
    """Q-Align level distribution: softmax of the logits of the tokens '1'..'5' where the answer's leading
    digit was decoded (raw model logits, before the grammar). None -> one-hot on the answer's level."""
    if logits is None:
        k = min(len(LEVELS), max(1, int(answer))) - 1
        return tuple(float(i == k) for i in range(len(LEVELS)))
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    return tuple(v / sum(e) for v in e)


def score_of(answer: float, probs: tuple[float, ...]) -> float:
    """0-100 score: the answer with its integer part replaced by the level distribution's expectation,
    mapped as 100 * (x - 1) / 4 (the Q-Align convention used by the small critic). With a one-hot
    distribution this is exactly the answer; with a spread one the decimals the model wrote are kept."""
    expected = sum((i + 1) * p for i, p in enumerate(probs))
    x = min(5.0, max(1.0, expected + answer - int(answer)))
    return 100.0 * (x - 1.0) / 4.0
