"""Distill a full-size critic: run a VLM teacher's tool loop over a folder and keep its trajectories as
training records for the small critic (one JSON line per image, schema: export/distill.schema.json).

    python -m export.distill --teacher MODEL_DIR --images DIR [--out FILE.jsonl] [--quant Q] [--zooms K]
                             [--gpu-layers N] [--ctx N] [--threads N] [--limit N] [--temperature T] [--seed S]

The teacher is a folder made by ``python -m export.vlm_convert``, run by ``qds_lite.vlm.VLMCritic``. Images are
found and decoded as ``qds triage`` does (recursive walk, format decided by content); a file that fails gets one
line on stderr, the run goes on, and the exit status is 1 at the end. Each record keeps the teacher's own boxes
and level distribution and also their translation into the small critic's protocol: zooms as the
``protocol.GRID`` cell under each box's centre, finding boxes as the cells of their corners (the convention of
``export.oracle.region_cells``), and the token sequence the small critic would decode for that trajectory, as
token names. The sequence leaves out the visual tokens: a trainer inserts the 16 glance tokens after ``<bos>``
and the 4 zoom tokens after each ``<cell_k>``. Findings are listed most severe first, as the oracle's are.

Lines are written as they are made to a temporary file beside ``--out``, which replaces ``--out`` when the run
ends or is interrupted (Ctrl-C keeps every complete record), never before.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.oracle import region_cells
from qds_lite import protocol as P
from qds_lite.atomic import atomic_open
from qds_lite.errors import ImageLoadError, QdsError
from qds_lite.io import load_image
from qds_lite.model_store import sha256_file
from qds_lite.progress import Progress
from qds_lite.triage import Photo, discover

if TYPE_CHECKING:
    from qds_lite.vlm import VLMCritic, VLMRun

RECORD_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("distill.schema.json")
_EPS = 1e-9  # a box edge on a cell boundary does not reach into the next cell


# --- teacher result -> record -------------------------------------------------------------------
def cell_at(x: float, y: float) -> int:
    """The grid cell (row-major) under the point (x, y), in fractions of the image."""
    col = min(P.GRID - 1, max(0, int(x * P.GRID)))
    row = min(P.GRID - 1, max(0, int(y * P.GRID)))
    return row * P.GRID + col


def box_cells(box: tuple[float, float, float, float] | list[float]) -> tuple[int, int]:
    """(top-left, bottom-right) cells of the grid cells a fractional box overlaps (at least one cell)."""
    x0, y0, x1, y1 = box
    c0 = min(P.GRID - 1, max(0, math.floor(x0 * P.GRID + _EPS)))
    r0 = min(P.GRID - 1, max(0, math.floor(y0 * P.GRID + _EPS)))
    c1 = max(c0 + 1, min(P.GRID, math.ceil(x1 * P.GRID - _EPS)))
    r1 = max(r0 + 1, min(P.GRID, math.ceil(y1 * P.GRID - _EPS)))
    return region_cells((c0, r0, c1, r1))


def zoom_cells(boxes: list[list[float]], max_zooms: int) -> list[int]:
    """The cell under each box's centre, in the teacher's order, repeats dropped, at most ``max_zooms``."""
    cells: list[int] = []
    for x0, y0, x1, y1 in boxes:
        cell = cell_at((x0 + x1) / 2, (y0 + y1) / 2)
        if cell not in cells and len(cells) < max_zooms:
            cells.append(cell)
    return cells


def token_names(cells: list[int], level_probs: list[float], findings: list[dict]) -> list[str]:
    """The small critic's trajectory for this verdict, as names from ``protocol.VOCAB`` (no visual tokens)."""
    level = max(range(len(P.LEVELS)), key=lambda i: level_probs[i])
    tokens = ["<bos>"]
    for cell in cells:
        tokens += ["<zoom>", f"<cell_{cell}>"]
    tokens += ["<stop>", f"<level_{P.LEVELS[level]}>"]
    for f in findings:
        tokens += ["<find>", f"<type_{f['type']}>", f"<sev_{P.severity_bin(f['severity'])}>",
                   f"<cell_{f['cell_tl']}>", f"<cell_{f['cell_br']}>"]
    return tokens + ["<eos>"]


def make_record(run: VLMRun, image: str, sha256: str, size: tuple[int, int], max_zooms: int,
                decoding: dict) -> dict:
    """One training record from one teacher run (its trace boxes are fractions of the oriented image)."""
    result = run.result
    boxes = [list(s["box"]) for s in result.steps if s["tool"] == "zoom"]
    cells = zoom_cells(boxes, max_zooms)
    findings, dropped = [], []
    for f in sorted(result.findings, key=lambda f: -f.severity):
        entry = {"type": f.type, "severity": f.severity, "box": list(f.box)}
        if f.type not in P.FINDING_TYPES:  # the teacher's grammar offers only these; a future one may not
            dropped.append(entry | {"reason": "type not in protocol.FINDING_TYPES"})
        elif len(findings) == P.MAX_FINDINGS:
            dropped.append(entry | {"reason": f"more than {P.MAX_FINDINGS} findings"})
        else:
            tl, br = box_cells(f.box)
            findings.append(entry | {"cell_tl": tl, "cell_br": br})
    probs = [float(p) for p in result.level_probs]
    return {"record_version": RECORD_VERSION, "source": "teacher", "image": image, "sha256": sha256,
            "size": list(size), "teacher": dict(result.model), "decoding": decoding, "max_zooms": max_zooms,
            "zoom_boxes": boxes, "zoom_cells": cells, "findings": findings, "dropped_findings": dropped,
            "level_probs": probs, "level_probs_from_logits": run.logprobs_used, "answer": run.answer,
            "score": result.score, "level": result.level, "tokens": token_names(cells, probs, findings)}


# --- reading records back -----------------------------------------------------------------------
def check_tokens(record: dict) -> None:
    """Replay the record's tokens through ``protocol.Grammar`` and check they say what its fields say."""
    tokens = record["tokens"]
    unknown = [t for t in tokens if t not in P.TOKEN_ID]
    if unknown:
        raise ValueError(f"tokens not in protocol.VOCAB: {unknown}")
    if tokens[:1] != ["<bos>"]:
        raise ValueError("the sequence does not start with <bos>")
    g = P.Grammar(record["max_zooms"])
    g.begin()
    for i, name in enumerate(tokens[1:], 1):
        if g.done:
            raise ValueError(f"token {i} ({name}) after <eos>")
        g.advance(P.TOKEN_ID[name])  # ValueError naming the token and grammar state if it is not allowed
    if not g.done:
        raise ValueError(f"the sequence ends in grammar state {g.state!r}, not after <eos>")
    if tokens != token_names(record["zoom_cells"], record["level_probs"], record["findings"]):
        raise ValueError("tokens do not match zoom_cells, level_probs and findings")


def load_records(path: str | Path) -> list[dict]:
    """Every record of a distill file, each validated against distill.schema.json and replayed through the
    small critic's grammar; a ValueError naming the line for the first record that fails."""
    try:
        import jsonschema
    except ImportError as e:
        raise QdsError("reading distill records needs jsonschema", hint="pip install jsonschema") from e
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                validator.validate(record)
                check_tokens(record)
            except (ValueError, jsonschema.ValidationError) as e:
                msg = e.message if isinstance(e, jsonschema.ValidationError) else str(e)
                raise ValueError(f"{path}:{n}: {msg}") from e
            records.append(record)
    return records


# --- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    images: int  # tried (found, up to --limit, until an interrupt)
    failed: int
    seconds: float
    interrupted: bool = False


def distill(teacher: VLMCritic, images: str | Path, out: str | Path, *, limit: int | None = None,
            quiet: bool = False) -> Summary:
    """Run ``teacher`` over every image under ``images`` and write the records to ``out``; each failure is
    reported on stderr as it happens. Ctrl-C ends the run early with the records made so far written."""
    root = Path(images)
    photos = discover([root])[0][:limit]
    decoding = {"temperature": teacher.temperature, "seed": teacher.seed, "glance_side": teacher.glance_side,
                "zoom_max_side": teacher.zoom_max_side, "think_chars": teacher.think_chars}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0, tried, failed, interrupted = time.perf_counter(), 0, 0, False
    progress = Progress(quiet)
    advance = progress.start(len(photos))
    try:
        with atomic_open(out, "w", encoding="utf-8") as f:
            try:  # caught in here: atomic_open drops the temporary file on any exception leaving its block
                for photo, record in _records(teacher, root, photos, decoding):
                    tried += 1
                    if record is None:
                        failed += 1
                        progress.say(f"distill: {photo.path.relative_to(root).as_posix()}: {photo.error}")
                    else:
                        f.write(json.dumps(record) + "\n")
                        f.flush()
                    advance(photo)
            except KeyboardInterrupt:
                interrupted = True
                progress.say(f"distill: interrupted; keeping the {tried - failed} records written")
    finally:
        progress.close()
    return Summary(tried, failed, time.perf_counter() - t0, interrupted)


def _records(teacher: VLMCritic, root: Path, photos: list[Photo], decoding: dict
             ) -> Iterator[tuple[Photo, dict | None]]:
    for photo in photos:
        if photo.error is None:
            try:
                loaded = load_image(photo.path)
                run = teacher.run(loaded)
                record = make_record(run, photo.path.relative_to(root).as_posix(), sha256_file(photo.path),
                                     loaded.original_size, teacher.max_zooms, decoding)
                yield photo, record
                continue
            except QdsError as e:
                photo.error = e.reason if isinstance(e, ImageLoadError) else e.message
            except (OSError, RuntimeError) as e:  # vanished file; llama.cpp failing on this image
                photo.error = getattr(e, "strerror", None) or str(e)
        yield photo, None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.distill", description=__doc__.split("\n")[0])
    arg = ap.add_argument
    arg("--teacher", required=True, metavar="MODEL", help="VLM critic folder (made by python -m export.vlm_convert)")
    arg("--images", required=True, metavar="DIR", help="folder of photos, searched recursively")
    arg("--out", default="build/distill.jsonl", metavar="FILE", help="records to write (default: %(default)s)")
    arg("--quant", metavar="Q", help="the teacher's quantization (default: its manifest's first)")
    arg("--zooms", type=int, default=P.DEFAULT_ZOOMS, choices=range(P.N_CELLS + 1), metavar="K",
        help="the teacher's zoom budget, also the records' (default: %(default)s)")
    arg("--gpu-layers", type=int, metavar="N", help="layers to offload (default: all where llama.cpp has a GPU)")
    arg("--ctx", type=int, default=8192, metavar="N", help="context size (default: %(default)s)")
    arg("--threads", type=int, metavar="N", help="CPU threads for llama.cpp")
    arg("--limit", type=_positive, metavar="N", help="only the first N images found")
    arg("--temperature", type=float, default=0.0, metavar="T", help="sampling temperature (default: greedy)")
    arg("--seed", type=int, default=0, metavar="S", help="sampling seed (default: %(default)s)")
    args = ap.parse_args(argv)
    if not Path(args.images).is_dir():
        print(f"distill: {args.images}: not a folder", file=sys.stderr)
        return 2
    try:
        from qds_lite.vlm import VLMCritic

        teacher = VLMCritic(args.teacher, quant=args.quant, n_gpu_layers=args.gpu_layers, n_ctx=args.ctx,
                            n_threads=args.threads, max_zooms=args.zooms, temperature=args.temperature,
                            seed=args.seed)
    except QdsError as e:
        print(f"distill: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    with teacher:
        s = distill(teacher, args.images, args.out, limit=args.limit)
    rate = s.images / s.seconds if s.seconds > 0 else 0.0
    print(f"distill: {s.images} images, {s.failed} failed, {s.seconds:.1f} s, {rate:.2f} images/s; "
          f"wrote {s.images - s.failed} records to {args.out}", file=sys.stderr)
    return 130 if s.interrupted else 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
