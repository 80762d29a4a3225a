"""Speed benchmark: `qds score` on a 12 MP JPEG against plain Python, imports and Pillow, in ONE run.

    python -m benchmarks.speed [--image PATH] [--repeat N] [--model M] [--threads T] [--out build/bench]
                               [--no-memory]

Measured, all in the same run (so a busy machine slows the baselines as much as the critic):

(a) whole-process wall time of ``python -m qds_lite score IMG`` (what ``qds score IMG`` runs), median of N;
(b) whole-process ``python -c "import numpy, PIL.Image, onnxruntime"`` (the floor any Python critic pays);
(c) whole-process bare Pillow decode of the same file (``python -c`` that opens and loads it);
    plus ``python -c pass`` (interpreter start-up alone) for reference;
(d) in-process model time per image (glance + zooms, decoding excluded: ``Result.timings_ms["model"]``) for
    each backend that loads here (onnx, numpy, gguf), and for onnx once more with two encoder threads (against
    its default of one; not with ``--threads 2``) and once more without the diagnosis' pixel cues (a copy of
    the critic in the output folder with ``cue_weight`` 0: what the cues cost): the steady state of a batch,
    median of N rounds run round-robin over them after ``qds_lite.bench.WARMUP`` runs each (each turn's first
    run untimed), and the ratios to onnx; the first image's model time in a fresh ``qds score --json`` process
    (what one shell command pays: the first encoder runs allocate), median of N; in-process decode time
    (``qds_lite.io.load_image``);
(e) peak RSS of each whole process above (``os.wait4`` rusage of that very child);
(f) peak RSS of one ``qds score`` process on a 24 MP and on a 100 MP JPEG (made the same way) against
    DESIGN.md's budgets (400 MB, 1.5 GB), beside a Pillow process decoding the same file (``--no-memory``
    skips it).

The processes of (a)-(c) are run round-robin, after one untimed warm-up each (warm disk cache), so that
background load spreads evenly over them; qds_lite's bytecode is written first, as an install does.
Without ``--image`` a 12 MP JPEG is made deterministically: the largest landscape test-split pristine photo,
centre-cropped to 4:3, upscaled to 4000x3000 with Pillow LANCZOS and saved as JPEG quality 92 in the output
folder.

Figures are reported as ratios against the baselines of the same run; absolute times depend on the
machine and on its load (recorded in speed.json).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path("build") / "bench"
SYNTH_SIZE = (4000, 3000)
SYNTH_QUALITY = 92
PLACEHOLDER_MODEL = Path("build") / "tmpmodel"
BACKENDS = ("onnx", "numpy", "gguf")
TWO_THREADS = "onnx, 2 encoder threads"  # the option against the default one thread, same run
NO_CUES = "onnx, without pixel cues"  # what the diagnosis' pixel cues cost, same run


# ------------------------------------------------------------------------------------------------
# The test image


def make_test_jpeg(path: Path, size: tuple[int, int] = SYNTH_SIZE) -> Path:
    """The deterministic test JPEG (12 MP by default; kept when it already exists: same input, same bytes)."""
    if path.is_file():
        return path
    from PIL import Image

    from export.data import pristine_photos

    def key(p: Path) -> tuple:
        with Image.open(p) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the sides
                w, h = h, w
        return (h > w, -(w * h), p.as_posix())

    src = min(pristine_photos("test"), key=key)
    upscaled_jpeg(src, path, size)
    return path


def upscaled_jpeg(src: Path, path: Path, size: tuple[int, int] = SYNTH_SIZE, mirror: bool = False) -> Path:
    """``src`` oriented (and mirrored if asked), centre-cropped to the aspect of ``size``, LANCZOS-resized to it,
    JPEG q92, written atomically."""
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    if mirror:
        img = ImageOps.mirror(img)
    w, h = img.size
    tw, th = size
    if w * th > h * tw:  # too wide: crop the sides
        cw = round(h * tw / th)
        box = ((w - cw) // 2, 0, (w - cw) // 2 + cw, h)
    else:
        ch = round(w * th / tw)
        box = (0, (h - ch) // 2, w, (h - ch) // 2 + ch)
    big = img.crop(box).resize(size, Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.jpg")
    big.save(tmp, format="JPEG", quality=SYNTH_QUALITY)
    os.replace(tmp, path)
    print(f"made {path} from {src.name} ({w}x{h} -> {tw}x{th}, JPEG q{SYNTH_QUALITY})", file=sys.stderr)
    return path


# ------------------------------------------------------------------------------------------------
# Whole-process measurements


# A tiny launcher that forks and execs the measured command and reports the wall time and the rusage of
# that child alone. Needed because a forked child inherits its parent's peak-RSS mark: launched straight
# from this (numpy-laden) process, even ``python -c pass`` would show our own peak RSS.
_LAUNCHER = """
import json, os, sys, time
null = os.open(os.devnull, os.O_RDWR)
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "maxrss": ru.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}))
"""


def run_process(cmd: Sequence[str]) -> dict:
    """Run ``cmd`` once (stdin/stdout on /dev/null): wall seconds, peak RSS (MB) of that process alone,
    exit code and stderr. ``cmd[0]`` must be an executable path (as ``sys.executable`` is)."""
    with tempfile.TemporaryFile() as err:
        if hasattr(os, "fork") and hasattr(os, "wait4"):
            p = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, *cmd], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=err, check=False)
            try:
                rep = json.loads(p.stdout.decode().strip().splitlines()[-1])
            except (IndexError, ValueError):
                rep = {"wall_s": float("nan"), "maxrss": None, "rc": p.returncode or 1}
            wall, rc = rep["wall_s"], rep["rc"]
            rss = None if rep["maxrss"] is None else rep["maxrss"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
        else:  # pragma: no cover - no fork (Windows): wall time only
            t0 = time.perf_counter()
            rc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                check=False).returncode
            wall, rss = time.perf_counter() - t0, None
        err.seek(0)
        text = err.read().decode(errors="replace")
    return {"wall_s": wall, "rss_mb": rss, "rc": rc, "stderr": text}


def process_commands(image: Path, model: str | None) -> dict[str, list[str]]:
    py = sys.executable
    qds = [py, "-m", "qds_lite", "score", str(image)] + (["--model", model] if model else [])
    return {
        "python_startup": [py, "-c", "pass"],
        "imports": [py, "-c", "import numpy, PIL.Image, onnxruntime"],
        "pillow_decode": [py, "-c", "import sys; from PIL import Image; im = Image.open(sys.argv[1]); im.load()",
                          str(image)],
        "qds_score": qds,
    }


PROCESS_LABELS = {
    "python_startup": "python -c pass",
    "imports": "python -c 'import numpy, PIL.Image, onnxruntime'",
    "pillow_decode": "python -c Pillow open + load (same JPEG)",
    "qds_score": "qds score IMG (python -m qds_lite score)",
}


def failed(cmd: Sequence[str], rc: int, stderr: str) -> RuntimeError:
    """The error a measured command that failed ends the run with: the command and the end of its stderr."""
    return RuntimeError(f"{shlex.join(cmd)} failed (exit {rc}):\n{stderr[-2000:]}")


def run_checked(cmd: Sequence[str]) -> dict:
    """:func:`run_process`, raising :func:`failed` if the command fails."""
    r = run_process(cmd)
    if r["rc"] != 0:
        raise failed(cmd, r["rc"], r["stderr"])
    return r


def byte_compile_qds() -> None:
    """Write qds_lite's bytecode as ``pip install .`` does, so that the whole-process rows time the installed
    package, not an editable checkout recompiling its sources at every start (as it does where bytecode is
    never written: PYTHONDONTWRITEBYTECODE, a read-only tree). The baselines' libraries are installed, so
    their bytecode is already there."""
    import compileall

    import qds_lite

    compileall.compile_dir(Path(qds_lite.__file__).parent, quiet=1)


def measure_processes(cmds: dict[str, list[str]], repeat: int) -> dict:
    """Warm up each command once, then run them round-robin ``repeat`` times."""
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for cmd in cmds.values():
        run_checked(cmd)
    for i in range(repeat):
        for name, cmd in cmds.items():
            runs[name].append(run_checked(cmd))
        print(f"speed: whole-process round {i + 1}/{repeat}", file=sys.stderr)
    out = {}
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        rss = [r["rss_mb"] for r in rs if r["rss_mb"] is not None]
        out[name] = {"command": shlex.join(cmds[name]), "median_s": statistics.median(walls), "min_s": min(walls),
                     "runs_s": walls, "peak_rss_mb": max(rss) if rss else None,
                     "median_rss_mb": statistics.median(rss) if rss else None}
    return out


# DESIGN.md section 8: peak memory scoring a 24 MP JPEG and a 100 MP image.
MEMORY_CASES = (("24mp", (6000, 4000), 400.0), ("100mp", (12500, 8000), 1500.0))  # name, size, budget MB


def measure_memory(out: Path, model: str | None) -> dict:
    """Peak RSS of one ``qds score`` process on each MEMORY_CASES JPEG (made like the 12 MP one), beside a
    Pillow process that only decodes the same file."""
    result = {}
    for name, size, budget in MEMORY_CASES:
        image = make_test_jpeg(out / f"memory_{name}.jpg", size)
        cmds = process_commands(image, model)
        runs = {k: run_checked(cmds[k]) for k in ("pillow_decode", "qds_score")}
        result[name] = {"size": list(size), "megapixels": round(size[0] * size[1] / 1e6, 1), "budget_mb": budget,
                        "qds_score_rss_mb": runs["qds_score"]["rss_mb"], "qds_score_s": runs["qds_score"]["wall_s"],
                        "pillow_decode_rss_mb": runs["pillow_decode"]["rss_mb"]}
        print(f"speed: memory {name} measured", file=sys.stderr)
    return result


# ------------------------------------------------------------------------------------------------
# In-process model time


def without_pixel_cues(model: str | None, out: Path) -> Path | None:
    """A copy of the critic in ``out`` whose manifest turns its diagnosis' pixel cues off (``cue_weight`` 0: the
    runtime then computes none), or None for a critic without them."""
    import shutil

    from qds_lite.model_store import resolve

    files = resolve(model)
    if not files.config.get("diagnosis", {}).get("cue_weight"):
        return None
    folder = out / "critic-without-pixel-cues"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(files.root, folder)
    doc = json.loads((folder / "manifest.json").read_text())
    doc["config"]["diagnosis"]["cue_weight"] = 0.0
    (folder / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    return folder


def measure_models(image: Path, model: str | None, threads: int | None, repeat: int,
                   out: Path) -> tuple[dict, dict]:
    """Per backend: steady-state model ms (median/min over ``repeat`` rounds, backends round-robin after
    ``WARMUP`` runs each, so that neither the process's own warm-up nor a burst of background load falls on one
    backend) and the score; skipped ones."""
    import qds_lite
    from qds_lite.bench import WARMUP
    from qds_lite.io import load_image

    decode_ms = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        loaded = load_image(image)
        decode_ms.append((time.perf_counter() - t) * 1e3)
    critics, skipped = {}, {}
    configs = {name: (name, threads, model) for name in BACKENDS}
    if threads != 2:
        configs[TWO_THREADS] = ("onnx", 2, model)
    if (no_cues := without_pixel_cues(model, out)) is not None:
        configs[NO_CUES] = ("onnx", threads, str(no_cues))
    for name, (backend, n, folder) in configs.items():
        try:
            critics[name] = qds_lite.load(folder, backend=backend, threads=n)
        except Exception as e:  # noqa: BLE001  a missing or broken optional engine only drops that backend
            skipped[name] = f"{type(e).__name__}: {getattr(e, 'message', e)}"
            print(f"speed: skipping backend {name}: {skipped[name]}", file=sys.stderr)
    for critic in critics.values():
        for _ in range(WARMUP):
            critic.score(loaded)
    runs: dict[str, list] = {name: [] for name in critics}
    for _ in range(repeat):
        for name, critic in critics.items():
            # Untimed first: the engine used before this one leaves its idle threads spinning a while after
            # it returns (onnxruntime's, OpenBLAS's), which a process running one backend never meets.
            critic.score(loaded)
            runs[name].append(critic.score(loaded))
    results = {}
    for name, rs in runs.items():
        ms = [float(r.timings_ms["model"]) for r in rs]
        results[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "runs_ms": ms,
                         "score": float(rs[-1].score),
                         "zooms": sum(1 for s in rs[-1].steps if s.get("tool") == "zoom")}
        print(f"speed: in-process {name}: {results[name]['median_ms']:.1f} ms", file=sys.stderr)
    results["_decode"] = {"median_ms": statistics.median(decode_ms), "min_ms": min(decode_ms)}
    return results, skipped


def measure_first_image(image: Path, model: str | None, threads: int | None, backends: Sequence[str],
                        repeat: int) -> dict[str, dict]:
    """Model ms of the first (and only) image of a fresh ``qds score --json`` process per backend, as one
    shell command pays it (its first encoder runs are slower than later ones), median of ``repeat`` rounds.
    Raises RuntimeError with the command's stderr if one fails."""
    ms: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeat):
        for name in backends:
            cmd = [sys.executable, "-m", "qds_lite", "score", str(image), "--json", "--backend", name]
            cmd += (["--model", model] if model else []) + (["--threads", str(threads)] if threads else [])
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                raise failed(cmd, p.returncode, p.stderr)
            ms[name].append(float(json.loads(p.stdout.splitlines()[-1])["timings_ms"]["model"]))
    return {name: {"median_ms": statistics.median(v), "min_ms": min(v), "runs_ms": v} for name, v in ms.items()}


# ------------------------------------------------------------------------------------------------
# Reporting


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def build_tables(proc: dict, models: dict, memory: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    p_rows = [[PROCESS_LABELS[k], _f(v["median_s"], ".3f"), _f(v["min_s"], ".3f"), _f(v["peak_rss_mb"], ".0f")]
              for k, v in proc.items()]
    q, dec, imp, start = (proc[k] for k in ("qds_score", "pillow_decode", "imports", "python_startup"))
    r_rows = [
        ["qds score / Pillow decode process (wall, median)", _f(_ratio(q["median_s"], dec["median_s"]), ".2f") + "x"],
        ["qds score / import-only process (wall, median)", _f(_ratio(q["median_s"], imp["median_s"]), ".2f") + "x"],
        ["qds score - Pillow decode process (s)", _f(q["median_s"] - dec["median_s"], ".3f")],
        ["qds score - import-only process (s)", _f(q["median_s"] - imp["median_s"], ".3f")],
        ["qds score - python start-up (s)", _f(q["median_s"] - start["median_s"], ".3f")],
        ["peak RSS: qds score / Pillow decode process",
         _f(_ratio(q["peak_rss_mb"], dec["peak_rss_mb"]), ".2f") + "x"],
    ]
    onnx = models.get("onnx", {}).get("median_ms")
    m_rows = []
    for name in (*BACKENDS, TWO_THREADS, NO_CUES):
        if name not in models:
            continue
        m = models[name]
        ref = models.get("numpy", {}).get("score")
        diff = None if ref is None else abs(m["score"] - ref)
        m_rows.append([name, _f(m["median_ms"], ".1f"), _f(m["min_ms"], ".1f"), _f(_ratio(m["median_ms"], onnx), ".2f"),
                       _f(m.get("first_image_ms"), ".1f"), _f(m["score"], ".2f"), _f(diff, ".2f")])
    m_rows.append(["(in-process decode, load_image)", _f(models["_decode"]["median_ms"], ".1f"),
                   _f(models["_decode"]["min_ms"], ".1f"), "", "", "", ""])
    mem_rows = [[f"{m['size'][0]}x{m['size'][1]} JPEG ({m['megapixels']:g} MP)", _f(m["qds_score_rss_mb"], ".0f"),
                 _f(m["pillow_decode_rss_mb"], ".0f"), _f(m["budget_mb"], ".0f")] for m in memory.values()]
    tables = {
        "processes": (["whole process", "median s", "min s", "peak RSS MB"], p_rows),
        "ratios": (["ratio (same run)", "value"], r_rows),
        "models": (["backend", "model ms median (in-process)", "min", "x onnx", "first image ms (fresh process)",
                    "score", "abs diff vs numpy"], m_rows),
    }
    if mem_rows:
        tables["memory"] = (["peak memory, one run", "qds score RSS MB", "Pillow decode RSS MB", "budget MB"],
                            mem_rows)
    return tables


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _environment() -> dict:
    env = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "cpus": os.cpu_count(), "processor": platform.processor()}
    for mod in ("numpy", "PIL", "onnxruntime", "llama_cpp"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    env["env"] = {k: v for k, v in os.environ.items()
                  if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") or k.startswith("QDS_")}
    return env


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def resolve_model(model: str | None) -> tuple[str | None, dict]:
    """The model to time: the given one, else the bundled default, else the untrained placeholder."""
    from qds_lite.errors import QdsError
    from qds_lite.model_store import resolve

    try:
        files = resolve(model)
        return model, {"name": files.name, "root": str(files.root), "sha256": files.sha256, "placeholder": False}
    except QdsError:
        if model is not None or not (PLACEHOLDER_MODEL / "manifest.json").is_file():
            raise
    files = resolve(str(PLACEHOLDER_MODEL))
    print(f"speed: the bundled critic is not there yet; timing the placeholder {PLACEHOLDER_MODEL} "
          "(same architecture, untrained)", file=sys.stderr)
    return str(PLACEHOLDER_MODEL), {"name": files.name, "root": str(files.root), "sha256": files.sha256,
                                    "placeholder": True}


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from PIL import Image

    from qds_lite.errors import QdsError

    started = _dt.datetime.now(_dt.timezone.utc)
    load_start = _loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = Path(args.image) if args.image else make_test_jpeg(out / "speed_12mp.jpg")
    if not image.is_file():
        print(f"speed: no such image {image}", file=sys.stderr)
        return 2
    try:
        model, model_info = resolve_model(args.model)
    except QdsError as e:
        print(f"speed: {e.message}", file=sys.stderr)
        return 2
    with Image.open(image) as im:
        img_info = {"path": str(image), "size": list(im.size), "format": im.format,
                    "megapixels": round(im.size[0] * im.size[1] / 1e6, 2), "bytes": image.stat().st_size,
                    "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}
    print(f"speed: {image} ({img_info['size'][0]}x{img_info['size'][1]}, {img_info['megapixels']} MP), "
          f"model {model_info['name']}, {args.repeat} repeats", file=sys.stderr)

    byte_compile_qds()
    try:
        proc = measure_processes(process_commands(image, model), args.repeat)
    except RuntimeError as e:
        print(f"speed: {e}", file=sys.stderr)
        return 1
    models, skipped = measure_models(image, model, args.threads, args.repeat, out)
    try:
        first = measure_first_image(image, model, args.threads, [b for b in BACKENDS if b in models], args.repeat)
        memory = {} if args.no_memory else measure_memory(out, model)
    except RuntimeError as e:
        print(f"speed: {e}", file=sys.stderr)
        return 1
    for name, f in first.items():
        models[name] |= {"first_image_ms": f["median_ms"], "first_image_runs_ms": f["runs_ms"]}
    finished = _dt.datetime.now(_dt.timezone.utc)
    load_end = _loadavg()

    tables = build_tables(proc, models, memory)
    for header, rows in tables.values():
        print(text_table(header, rows))
        print()
    command = "python -m benchmarks.speed" + ("" if not argv else " " + shlex.join(argv))
    onnx = models.get("onnx", {}).get("median_ms")
    ratios = {
        "qds_score_over_pillow_decode": _ratio(proc["qds_score"]["median_s"], proc["pillow_decode"]["median_s"]),
        "qds_score_over_imports": _ratio(proc["qds_score"]["median_s"], proc["imports"]["median_s"]),
        "qds_score_minus_pillow_decode_s": proc["qds_score"]["median_s"] - proc["pillow_decode"]["median_s"],
        "qds_score_minus_imports_s": proc["qds_score"]["median_s"] - proc["imports"]["median_s"],
        "peak_rss_qds_over_pillow": _ratio(proc["qds_score"]["peak_rss_mb"], proc["pillow_decode"]["peak_rss_mb"]),
        "numpy_over_onnx_model": _ratio(models.get("numpy", {}).get("median_ms"), onnx),
        "gguf_over_onnx_model": _ratio(models.get("gguf", {}).get("median_ms"), onnx),
        "two_encoder_threads_over_onnx_model": _ratio(models.get(TWO_THREADS, {}).get("median_ms"), onnx),
        "onnx_over_onnx_without_pixel_cues_model": _ratio(onnx, models.get(NO_CUES, {}).get("median_ms")),
    }
    doc = {
        "command": command, "argv": [sys.executable, "-m", "benchmarks.speed", *argv],
        "started": started.isoformat(), "finished": finished.isoformat(),
        "loadavg_start": load_start, "loadavg_end": load_end,
        "image": img_info, "model": model_info, "repeat": args.repeat, "threads": args.threads,
        "processes": proc, "models": models, "memory": memory, "skipped_backends": skipped, "ratios": ratios,
        "environment": _environment(),
    }
    (out / "speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = [
        "<!-- produced by benchmarks/speed.py; do not edit by hand -->",
        f"{img_info['size'][0]}x{img_info['size'][1]} JPEG ({img_info['megapixels']} MP), critic "
        f"`{model_info['name']}`, median of {args.repeat} runs; every row measured in the same run.",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if model_info["placeholder"]:
        md += [f"**Note: timed the untrained placeholder `{PLACEHOLDER_MODEL}`, not the shipped critic.**", ""]
    for header, rows in tables.values():
        md += [md_table(header, rows), ""]
    if skipped:
        md += ["Skipped backends: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
    md += [f"_{finished.strftime('%Y-%m-%d %H:%M UTC')}, {platform.platform()}, {os.cpu_count()} CPUs, "
           f"load average {load_start} -> {load_end}._", ""]
    (out / "speed.md").write_text("\n".join(md))
    print(f"wrote {out / 'speed.json'}, {out / 'speed.md'}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=None, help="JPEG to time (default: a synthesized 12 MP JPEG in --out)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="critic name or folder (default: the bundled qds-small-v1, else build/tmpmodel)")
    p.add_argument("--threads", type=int, default=None, help="threads for the in-process backends (default: theirs)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory runs on a 24 MP and a 100 MP JPEG (DESIGN.md section 8)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.repeat < 1:
        _parser().error("--repeat must be at least 1")
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
