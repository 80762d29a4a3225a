"""Loop overhead of the full-size (VLM) critic outside llama.cpp, measured on a tiny random Qwen2.5-VL.

    python -m benchmarks.vlm_overhead [--images N] [--zooms K] [--repeat R] [--model DIR] [--quant Q]
                                      [--threads T] [--json OUT]

The bar (issue 7): the time ``qds_lite.vlm`` spends outside llama.cpp (cropping, image hand-off, prompt
building, grammar text, parsing, the per-token loop, the trace) is at most 5% of the wall time. A tiny model
is the hard case: llama.cpp's share shrinks with the model while the loop's cost stays the same.

What is timed, per image: ``VLMCritic.score`` on an already decoded image, exactly as ``qds score --model DIR``
calls it (the CLI decodes the next photo in a background thread while the model runs, so the JPEG decode is
reported separately and is not part of the loop). The critic is made with the CLI's arguments
(``n_ctx=8192``, ``max_zooms=K``; the other settings are ``VLMCritic``'s defaults) plus ``min_zooms`` (default
K: a random model may answer at once, and the loop's cropping is part of what is measured).

"Inside llama.cpp" is the time spent in the llama-cpp-python calls the runtime makes: every ctypes function of
``llama_cpp`` and ``llama_cpp.mtmd_cpp`` it calls (image tokenization/preprocessing and the vision encoder via
libmtmd, prompt evaluation, grammar sampling, token decoding, and the small ones such as token-to-piece).
For the benchmark only, the critic's two handles on those modules (``critic._ll`` and ``critic._mtmd``) are
replaced by proxies that time each call, and a few of the loop's own steps are wrapped with timers for the
breakdown; everything is put back afterwards and the runtime's code is unchanged. Overhead = wall - inside.
The proxies' own cost (a Python call and a clock read per llama.cpp call) lands in the overhead; it is
measured (``timer_cost_ms``, from a calibration of the wrapper on a trivial llama.cpp call) and reported
beside it, so the overhead figure is an upper bound.

Without ``--model`` the tiny checkpoint of ``tests/vlm_tiny.py`` is built and converted with
``export.vlm_convert`` (the same code the ``tiny_vlm`` test fixture runs; needs the ``train`` extras) into
``build/bench/vlm_tiny/`` once, and reused after. The images default to the JPEGs shipped in ``examples/``
and ``tests/data/``. Medians are over images x repeats, after one untimed warm-up; ``--profile K`` adds a
cProfile pass over one image and lists the K largest Python entries outside llama.cpp.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("build") / "bench" / "vlm_tiny"
DEFAULT_IMAGE_DIRS = ("examples", "tests/data")
BAR = 0.05  # issue 7: overhead outside llama.cpp at most 5% of the wall time
CTX = 8192  # `qds score --ctx` default
# the loop's own steps timed for the breakdown: (where, attribute, label)
_MODULE_STEPS = (("qds_lite.vlm", "_crop", "crop"), ("qds_lite.vlm_protocol", "grammar", "grammar"),
                 ("qds_lite.vlm_protocol", "parse_turn", "parse"))
_METHOD_STEPS = (("_feed", "feed"), ("_generate", "generate"), ("_result", "result"))
_STEP_NAMES = {"generate": "per-token loop (_generate)", "feed": "image + prompt hand-off (_feed)",
               "crop": "zoom crops (_crop)", "glance": "glance thumbnail", "grammar": "grammar text",
               "parse": "turn parsing (parse_turn)", "result": "Result + trace (_result)", "rest": "rest of run()"}
_CFuncPtr = ctypes._CFuncPtr  # what llama-cpp-python's low-level functions are


# ------------------------------------------------------------------------------------------------
# The model


def tiny_model(cache: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """The converted tiny random Qwen2.5-VL in ``cache/critic``: built and converted on first use (the code the
    ``tiny_vlm`` test fixture uses: ``tests/vlm_tiny.py``), reused after. Nothing is ever deleted."""
    cache = Path(cache)
    out = cache / "critic"
    if (out / "manifest.json").is_file():  # written last by export.vlm_convert: present means complete
        return out
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import vlm_tiny

    print(f"building the tiny Qwen2.5-VL into {cache} (once; needs the train extras) ...", file=sys.stderr, flush=True)
    vlm_tiny.build(cache / "hf")
    done = vlm_tiny.convert((cache / "hf").resolve(), out.resolve())
    if done.returncode != 0 or not (out / "manifest.json").is_file():
        raise SystemExit(f"vlm_overhead: converting the tiny model failed:\n{done.stderr[-3000:]}{done.stdout[-3000:]}")
    return out


def default_images() -> list[Path]:
    return [p for d in DEFAULT_IMAGE_DIRS for p in sorted((ROOT / d).glob("*.jpg"))]


# ------------------------------------------------------------------------------------------------
# Timing at the llama.cpp boundary


class Probe:
    """Times every llama-cpp-python call a critic makes, and the loop's own steps, while installed.

    ``inside`` is the seconds spent in llama.cpp calls; ``calls`` maps each called function to
    [count, seconds]; ``steps`` maps each wrapped loop step to [count, seconds of its own Python time]
    (its llama.cpp calls and nested steps excluded)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.inside = 0.0
        self.n_calls = 0
        self.calls: dict[str, list] = {}
        self.steps: dict[str, list] = {}
        self._stack: list[list] = []  # [label, t0, seconds in children (steps and llama.cpp calls)]

    def llama_call(self, name: str, fn):
        """``fn`` (a ctypes function) timed; the time goes to ``inside`` and to the enclosing step's children."""
        clock, stack, slot = time.perf_counter, self._stack, self.calls.setdefault(name, [0, 0.0])

        def _llama_call(*args):
            t0 = clock()
            try:
                return fn(*args)
            finally:
                dt = clock() - t0
                self.inside += dt
                self.n_calls += 1
                slot[0] += 1
                slot[1] += dt
                if stack:
                    stack[-1][2] += dt

        _llama_call.__name__ = _llama_call.__qualname__ = f"llama_cpp:{name}"
        return _llama_call

    def step(self, label: str, fn):
        """``fn`` wrapped so that its own Python time (children excluded) is added to ``steps[label]``."""
        clock, stack, slot = time.perf_counter, self._stack, self.steps.setdefault(label, [0, 0.0])

        def _step(*args, **kwargs):
            frame = [label, clock(), 0.0]
            stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                dt = clock() - frame[1]
                slot[0] += 1
                slot[1] += dt - frame[2]
                if stack:
                    stack[-1][2] += dt

        return _step


class _TimedModule:
    """Stands in for ``llama_cpp`` / ``llama_cpp.mtmd_cpp``: its ctypes functions timed, all else as is."""

    def __init__(self, module, probe: Probe) -> None:
        self._module, self._probe = module, probe

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        if isinstance(value, _CFuncPtr):
            value = self._probe.llama_call(name, value)
        setattr(self, name, value)  # looked up once
        return value


@contextmanager
def instrumented(critic, probe: Probe):
    """Install ``probe`` on ``critic`` (a ``qds_lite.vlm.VLMCritic``) for the duration of the block."""
    import importlib

    saved_attrs = {"_ll": critic._ll, "_mtmd": critic._mtmd}
    critic._ll, critic._mtmd = _TimedModule(critic._ll, probe), _TimedModule(critic._mtmd, probe)
    for attr, label in _METHOD_STEPS:  # instance attributes shadow the class's methods
        setattr(critic, attr, probe.step(label, getattr(critic, attr)))
    patched = []
    for mod_name, attr, label in _MODULE_STEPS:
        mod = importlib.import_module(mod_name)
        patched.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, probe.step(label, getattr(mod, attr)))
    from qds_lite.io import LoadedImage

    patched.append((LoadedImage, "thumbnail", LoadedImage.thumbnail))
    LoadedImage.thumbnail = probe.step("glance", LoadedImage.thumbnail)
    try:
        yield probe
    finally:
        for owner, attr, value in reversed(patched):
            setattr(owner, attr, value)
        for attr, _ in _METHOD_STEPS:
            critic.__dict__.pop(attr, None)
        critic._ll, critic._mtmd = saved_attrs["_ll"], saved_attrs["_mtmd"]


def timer_cost(critic, n: int = 20000) -> float:
    """Seconds the probe adds per llama.cpp call (best of 5), from a trivial call timed with and without it."""
    ll, vocab = critic._ll, critic._vocab
    timed = Probe().llama_call("llama_vocab_n_tokens", ll.llama_vocab_n_tokens)
    plain = ll.llama_vocab_n_tokens

    def per_call(fn) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(vocab)
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    return max(0.0, per_call(timed) - per_call(plain))


# ------------------------------------------------------------------------------------------------
# Measuring


def make_critic(model: str | os.PathLike, *, zooms: int = 3, min_zooms: int | None = None, quant: str | None = None,
                threads: int | None = 1, n_ctx: int = CTX, **options):
    """The critic `qds score --model DIR --zooms K --threads T --ctx N` makes, with ``min_zooms`` (default:
    ``zooms``); further ``VLMCritic`` keyword ``options`` override any of these."""
    from qds_lite.vlm import VLMCritic

    kwargs = {"quant": quant, "n_gpu_layers": None, "n_ctx": n_ctx, "n_threads": threads, "max_zooms": zooms,
              "min_zooms": zooms if min_zooms is None else min_zooms}
    return VLMCritic(model, **(kwargs | options))


def measure_one(critic, loaded, probe: Probe) -> dict:
    """Score one decoded image under the probe; the record of its times (ms) and the run."""
    probe.reset()
    with instrumented(critic, probe):
        t0 = time.perf_counter()
        run = critic.run(loaded)
        wall = time.perf_counter() - t0
    inside = probe.inside
    steps = {k: v[1] * 1e3 for k, v in probe.steps.items()}
    feed_calls = ("mtmd_bitmap_init", "mtmd_tokenize", "mtmd_helper_eval_chunks")
    return {
        "file": loaded.name, "size": list(loaded.original_size), "wall_ms": wall * 1e3, "inside_ms": inside * 1e3,
        "overhead_ms": (wall - inside) * 1e3, "overhead_share": (wall - inside) / wall if wall > 0 else 0.0,
        "n_llama_calls": probe.n_calls,
        "steps_ms": steps | {"rest": (wall - inside) * 1e3 - sum(steps.values())},
        "llama_ms": {k: v[1] * 1e3 for k, v in sorted(probe.calls.items(), key=lambda kv: -kv[1][1])},
        "llama_counts": {k: v[0] for k, v in probe.calls.items()},
        "image_llama_ms": sum(probe.calls.get(k, [0, 0.0])[1] for k in feed_calls) * 1e3,
        "n_tokens": probe.calls.get("llama_decode", [0])[0], "n_zooms": len(run.zooms), "n_turns": len(run.turns),
        "score": run.result.score, "steps": [s["tool"] for s in run.result.trace["steps"]],
        "runtime_timings_ms": dict(run.result.timings_ms), "run": run,
    }


def measure(critic, images: Sequence, repeat: int = 3, warmup: bool = True, progress: bool = False) -> dict:
    """Score ``images`` (paths or decoded ``LoadedImage``s) ``repeat`` times each (round-robin) after one untimed
    warm-up; every record (see :func:`measure_one`, plus ``repeat`` and ``decode_ms``) and the summary."""
    from qds_lite.io import LoadedImage, load_image

    loaded, decode_ms = [], []
    for src in images:
        t0 = time.perf_counter()
        loaded.append(src if isinstance(src, LoadedImage) else load_image(src))
        decode_ms.append((time.perf_counter() - t0) * 1e3)
    probe = Probe()
    if warmup and loaded:
        measure_one(critic, loaded[0], probe)
    records = []
    for r in range(repeat):
        for i, img in enumerate(loaded):
            rec = measure_one(critic, img, probe)
            rec["repeat"], rec["decode_ms"] = r, decode_ms[i]
            records.append(rec)
            if progress:
                print(f"  repeat {r + 1}/{repeat}  {img.name}: wall {rec['wall_ms']:.1f} ms, "
                      f"overhead {100 * rec['overhead_share']:.2f}%", file=sys.stderr, flush=True)
    cost = timer_cost(critic)
    for rec in records:
        rec["timer_cost_ms"] = rec["n_llama_calls"] * cost * 1e3
    return {"records": records, "timer_cost_us_per_call": cost * 1e6, "summary": summarize(records)}


def summarize(records: Sequence[dict]) -> dict:
    """Medians over all records (images x repeats), the pooled share, and the median breakdown of the overhead."""
    if not records:
        return {}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    wall, inside = sum(r["wall_ms"] for r in records), sum(r["inside_ms"] for r in records)
    labels = sorted({k for r in records for k in r["steps_ms"]})
    steps = {k: statistics.median(r["steps_ms"].get(k, 0.0) for r in records) for k in labels}
    calls = sorted({k for r in records for k in r["llama_ms"]})
    llama = {k: statistics.median(r["llama_ms"].get(k, 0.0) for r in records) for k in calls}
    return {
        "n": len(records), "wall_ms": med("wall_ms"), "inside_ms": med("inside_ms"), "overhead_ms": med("overhead_ms"),
        "overhead_share": med("overhead_share"), "overhead_share_max": max(r["overhead_share"] for r in records),
        "overhead_share_pooled": (wall - inside) / wall if wall > 0 else 0.0,
        "timer_cost_ms": med("timer_cost_ms") if "timer_cost_ms" in records[0] else None,
        "decode_ms": med("decode_ms") if "decode_ms" in records[0] else None,
        "n_tokens": med("n_tokens"), "n_llama_calls": med("n_llama_calls"),
        "steps_ms": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
        "llama_ms": dict(sorted(llama.items(), key=lambda kv: -kv[1])),
        "meets_bar": med("overhead_share") <= BAR,
    }


def profile_outside(critic, loaded, top: int = 8) -> list[dict]:
    """One run of ``loaded`` under cProfile with the probe installed; the ``top`` functions by own time, leaving
    out the probe's wrappers of llama.cpp calls (whose own time is llama.cpp's). cProfile slows Python code
    several-fold: read the shares, not the milliseconds."""
    import cProfile
    import pstats

    prof, probe = cProfile.Profile(), Probe()
    with instrumented(critic, probe):
        prof.enable()
        critic.run(loaded)
        prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)

    def probe_code(fn) -> bool:  # the probe's own wrappers: their time is llama.cpp's or the probe's
        return fn[0] == __file__ and fn[2] in ("_llama_call", "_step", "__getattr__")

    rows = []
    for fn, (_, nc, tottime, _, callers) in stats.items():
        if probe_code(fn):
            continue
        if fn[0] == "~" and callers and any(probe_code(c) for c in callers):  # builtins, e.g. the probe's clock
            nc = sum(v[1] for c, v in callers.items() if not probe_code(c))
            tottime = sum(v[2] for c, v in callers.items() if not probe_code(c))
        if nc:
            rows.append((fn, nc, tottime))
    outside = sum(r[2] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[2])
    here = str(ROOT) + os.sep
    return [{"function": f"{fn[0].replace(here, '')}:{fn[1]}({fn[2]})" if fn[0] != "~" else fn[2],
             "calls": nc, "own_ms": tottime * 1e3, "share_of_outside": tottime / outside}
            for fn, nc, tottime in rows[:top]]


# ------------------------------------------------------------------------------------------------
# Report


def _environment(critic, threads: int | None) -> dict:
    from benchmarks.speed import _environment as base

    env = base()
    env["llama_cpp_python"] = env.pop("llama_cpp", None)
    env["threads"] = threads
    env["gpu_offload"] = bool(critic._ll.llama_supports_gpu_offload())
    try:
        env["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    return env


def tables(result: dict) -> str:
    from benchmarks.speed import text_table

    recs = result["records"]
    per_image = []
    for name in dict.fromkeys(r["file"] for r in recs):
        mine = [r for r in recs if r["file"] == name]

        def med(key: str, rs=mine) -> float:
            return statistics.median(r[key] for r in rs)

        per_image.append([Path(name).name, f"{mine[0]['size'][0]}x{mine[0]['size'][1]}", f"{med('n_tokens'):.0f}",
                          f"{med('wall_ms'):.1f}", f"{med('inside_ms'):.1f}", f"{med('overhead_ms'):.2f}",
                          f"{100 * med('overhead_share'):.2f}%", f"{med('decode_ms'):.1f}"])
    s = result["summary"]
    per_image.append(["median (all runs)", "", f"{s['n_tokens']:.0f}", f"{s['wall_ms']:.1f}", f"{s['inside_ms']:.1f}",
                      f"{s['overhead_ms']:.2f}", f"{100 * s['overhead_share']:.2f}%", f"{s['decode_ms']:.1f}"])
    out = [text_table(["image", "size", "tokens", "wall ms", "in llama.cpp ms", "overhead ms", "overhead",
                       "decode ms"], per_image), ""]
    verdict = "meets" if s["meets_bar"] else "MISSES"
    out.append(f"overhead outside llama.cpp: median {100 * s['overhead_share']:.2f}% of wall "
               f"({s['overhead_ms']:.2f} ms of {s['wall_ms']:.1f} ms), pooled {100 * s['overhead_share_pooled']:.2f}%, "
               f"worst run {100 * s['overhead_share_max']:.2f}%; {verdict} the {100 * BAR:.0f}% bar")
    out.append(f"  of which the probe's own timers (est.): {s['timer_cost_ms']:.2f} ms "
               f"({s['n_llama_calls']:.0f} llama.cpp calls x {result['timer_cost_us_per_call']:.2f} us)")
    out.append("")
    wall = s["overhead_ms"] or 1.0
    rows = [[_STEP_NAMES.get(k, k), f"{v:.2f}", f"{100 * v / wall:.0f}%"] for k, v in s["steps_ms"].items()]
    out.append(text_table(["overhead by step, Python time only (median)", "ms", "of overhead"], rows))
    out.append("")
    inside = s["inside_ms"] or 1.0
    rows = [[k, f"{v:.2f}", f"{100 * v / inside:.0f}%"] for k, v in list(s["llama_ms"].items())[:8]]
    out.append(text_table(["inside llama.cpp (median)", "ms", "of inside"], rows))
    if result.get("profile"):
        out.append("")
        rows = [[p["function"], str(p["calls"]), f"{100 * p['share_of_outside']:.1f}%"] for p in result["profile"]]
        out.append(text_table(["cProfile, outside llama.cpp (one run)", "calls", "own time"], rows))
    return "\n".join(out)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from qds_lite.vlm import resolve_vlm

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    model = Path(args.model) if args.model else tiny_model(args.cache)
    images = [Path(p) for p in args.image] if args.image else default_images()
    if args.images:
        images = images[:args.images]
    if not images:
        raise SystemExit("vlm_overhead: no images")
    files = resolve_vlm(model, args.quant)
    critic = make_critic(model, zooms=args.zooms, min_zooms=args.min_zooms, quant=args.quant, threads=args.threads,
                         n_ctx=args.ctx)
    try:
        print(f"{files.name} {files.quant} ({files.llm.stat().st_size / 1e6:.1f} MB + mmproj "
              f"{files.mmproj.stat().st_size / 1e6:.1f} MB), {len(images)} images x {args.repeat} repeats, "
              f"zooms {critic.min_zooms}..{critic.max_zooms}, threads {args.threads}", file=sys.stderr, flush=True)
        result = measure(critic, images, args.repeat, progress=args.progress)
        if args.profile:
            from qds_lite.io import load_image

            result["profile"] = profile_outside(critic, load_image(images[0]), args.profile)
        env = _environment(critic, args.threads)
    finally:
        critic.close()
    print(tables(result))
    if args.json:
        doc = {
            "command": shlex.join([sys.executable, "-m", "benchmarks.vlm_overhead", *argv]),
            "started": started, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "bar": BAR, "model": {"path": str(model), **critic.model_info},
            "settings": {"zooms": args.zooms, "min_zooms": critic.min_zooms, "repeat": args.repeat,
                         "threads": args.threads, "n_ctx": args.ctx, "glance_side": critic.glance_side,
                         "zoom_max_side": critic.zoom_max_side, "think_chars": critic.think_chars,
                         "temperature": critic.temperature},
            "images": [str(p) for p in images], "summary": result["summary"],
            "timer_cost_us_per_call": result["timer_cost_us_per_call"], "profile": result.get("profile"),
            "records": [{k: v for k, v in r.items() if k != "run"} for r in result["records"]],
            "environment": env,
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vlm_overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=None, help="score the first N images (default: all)")
    ap.add_argument("--image", action="append", help="an image to score (repeatable; default: the shipped JPEGs)")
    ap.add_argument("--zooms", type=int, default=3, help="zoom budget K (default 3)")
    ap.add_argument("--min-zooms", type=int, default=None, help="zooms the grammar forces before a verdict "
                    "(default: K, so every run crops K times; 0 = the qds score default)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats per image after one warm-up (default 3)")
    ap.add_argument("--model", help="a converted qds VLM folder (default: the tiny random Qwen2.5-VL, built once)")
    ap.add_argument("--quant", help="quantization to run (default: the manifest's default)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    ap.add_argument("--ctx", type=int, default=CTX, help=f"context size (default {CTX}, as qds score)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE),
                    help=f"where the tiny model is built (default {DEFAULT_CACHE})")
    ap.add_argument("--profile", type=int, default=8, metavar="K",
                    help="list the K largest cProfile entries outside llama.cpp from one extra run (0: skip)")
    ap.add_argument("--progress", action="store_true", help="one line per run on stderr")
    ap.add_argument("--json", help="write everything to this JSON file")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(_parser().parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
