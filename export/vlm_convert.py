"""Convert a Hugging Face Qwen2.5-VL-architecture checkpoint into a qds VLM critic: GGUF + mmproj + manifest.

    python -m export.vlm_convert HF_DIR --out DIR [--quant Q4_K_M Q5_K_M Q8_0] [--name NAME]

Conversion is llama.cpp's own ``convert_hf_to_gguf.py`` (language model, then ``--mmproj`` for the vision
tower and projector), taken from the source distribution of the installed llama-cpp-python so that the
files match the runtime that loads them. It is found, in order, at ``--llama-cpp DIR``, ``$QDS_LLAMA_CPP_DIR``
or the cache ``~/.cache/qds/llama.cpp-VERSION`` (``$XDG_CACHE_HOME`` respected), which is filled on first use
with ``pip download --no-binary llama-cpp-python --no-deps llama-cpp-python==VERSION`` (only the converter, its
``conversion/`` package and ``gguf-py/`` are kept, about 2 MB). The converter needs torch, transformers,
safetensors and sentencepiece. Quantization is llama.cpp's (``llama_model_quantize``); the mmproj stays F16,
as published Qwen2.5-VL GGUFs ship it. Tensors whose rows are not a multiple of the k-quant block (256) get
llama.cpp's fallback type, so tiny test models quantize too.

The manifest (``manifest.json``, read by ``qds_lite.vlm.resolve_vlm``) records every file's sha256 and size,
the prompt protocol version, the chat template as llama.cpp reads it, and the converter's version. The
export ends by loading every quantization with its mmproj through the runtime.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from qds_lite import __version__
from qds_lite.errors import QdsError
from qds_lite.model_store import MANIFEST_VERSION, sha256_file
from qds_lite.vlm_protocol import PROTOCOL_VERSION

SUPPORTED = {  # Hugging Face architecture -> what llama.cpp's converter and libmtmd run it as
    "Qwen2_5_VLForConditionalGeneration": "qwen2.5-vl",
    "Qwen2VLForConditionalGeneration": "qwen2-vl",
}
QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")  # F16: keep the unquantized conversion
DEFAULT_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class ConversionError(QdsError):
    """The checkpoint cannot be converted (unsupported architecture, converter failure, bad output)."""


def _say(msg: str) -> None:
    print(f"vlm_convert: {msg}", flush=True)


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception as e:  # noqa: BLE001 - any failure means the same thing here
        raise ConversionError("llama-cpp-python is not installed", hint="pip install 'qds-lite[gguf]'") from e


def converter_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The llama.cpp folder holding ``convert_hf_to_gguf.py`` (fetched into the cache if needed)."""
    given = explicit or os.environ.get("QDS_LLAMA_CPP_DIR")
    if given:
        root = Path(given)
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise ConversionError(f"{root}: no convert_hf_to_gguf.py there")
        return root
    version = llama_cpp_version()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qds" / f"llama.cpp-{version}"
    if not (cache / "convert_hf_to_gguf.py").is_file():
        fetch_converter(version, cache)
    return cache


def fetch_converter(version: str, dest: Path) -> None:
    """Download llama-cpp-python's sdist from PyPI with pip and keep llama.cpp's converter from it."""
    _say(f"fetching llama.cpp's converter from the llama-cpp-python {version} source distribution (pip download)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        # --no-binary for this one package only: with :all:, pip also builds the sdist's build requirements
        # (cmake among them) from source just to read its metadata, which took 6 minutes instead of 10 s
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", "llama-cpp-python", "--no-deps",
               f"llama-cpp-python=={version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            why = done.stderr.strip()[-300:]
            raise ConversionError(f"could not download llama-cpp-python {version}'s sdist: {why}",
                                  hint="or pass --llama-cpp DIR (a llama.cpp checkout of the same version)")
        out = Path(tmp) / "llama.cpp"
        prefix = f"{sdists[0].name[:-len('.tar.gz')]}/vendor/llama.cpp/"
        with tarfile.open(sdists[0], "r|gz") as tar:  # one pass over the stream (random access re-reads it)
            for m in tar:
                if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_CONVERTER_PARTS) and m.isfile():
                    m.name = m.name[len(prefix):]
                    tar.extract(m, out, filter="data")
        if not (out / "convert_hf_to_gguf.py").is_file():
            raise ConversionError(f"llama-cpp-python {version}'s sdist has no vendor/llama.cpp/convert_hf_to_gguf.py")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)


def check_architecture(hf_dir: Path) -> str:
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{hf_dir}: no readable config.json ({e})",
                              hint="pass a Hugging Face checkpoint folder") from e
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED), None)
    if arch is None:
        raise ConversionError(f"{hf_dir}: unsupported architecture {', '.join(archs) or '(none given)'}",
                              hint=f"qds runs Qwen-VL-class critics: {', '.join(SUPPORTED)}")
    return arch


def _run_converter(script: Path, args: list[str], verbose: bool) -> None:
    cmd = [sys.executable, str(script), *args]
    done = subprocess.run(cmd, capture_output=not verbose, text=True)
    if done.returncode != 0:
        tail = "\n".join(((done.stderr or "") + (done.stdout or "")).strip().splitlines()[-12:])
        raise ConversionError(f"llama.cpp's converter failed ({' '.join(args)}):\n{tail}",
                              hint="run with --verbose to see its whole output")


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None, verbose: bool = False) -> None:
    """llama.cpp's quantizer (the one behind llama-quantize), in process."""
    from qds_lite.backends.gguf_backend import _import_llama_cpp

    ll = _import_llama_cpp(verbose)
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    rc = ll.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConversionError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})")


def _chat_template(gguf_path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else ""


def _entry(root: Path, name: str, role: str, **extra: str) -> dict:
    path = root / name
    size, digest = path.stat().st_size, sha256_file(path)
    print(f"wrote {path} (sha256 {digest}, {size} bytes)", flush=True)
    return {"path": name, "role": role, **extra, "sha256": digest, "size": size}


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, quants: tuple[str, ...] = DEFAULT_QUANTS,
            name: str | None = None, llama_cpp: str | os.PathLike | None = None, verify: bool = True,
            verbose: bool = False) -> Path:
    """Convert, quantize, write manifest.json, check the result loads; returns the manifest's path."""
    hf_dir, out = Path(hf_dir), Path(out)
    arch = check_architecture(hf_dir)
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise ConversionError(f"unknown quantization {', '.join(bad) or '(none)'}", hint=f"choose from {QUANTS}")
    name = name or hf_dir.resolve().name
    script = converter_dir(llama_cpp) / "convert_hf_to_gguf.py"
    out.mkdir(parents=True, exist_ok=True)
    base, mmproj = f"{name}-F16.gguf", f"mmproj-{name}-F16.gguf"
    n_steps = 3 + len([q for q in quants if q != "F16"])
    _say(f"[1/{n_steps}] language model ({arch}) -> {base} (llama.cpp convert_hf_to_gguf.py)")
    _run_converter(script, [str(hf_dir), "--outfile", str(out / base), "--outtype", "f16"], verbose)
    _say(f"[2/{n_steps}] vision encoder and projector -> {mmproj}")
    _run_converter(script, [str(hf_dir), "--mmproj", "--outfile", str(out / mmproj), "--outtype", "f16"], verbose)
    step = 2
    for q in quants:
        if q != "F16":
            step += 1
            _say(f"[{step}/{n_steps}] quantizing to {q} (llama_model_quantize)")
            quantize(out / base, out / f"{name}-{q}.gguf", q, verbose=verbose)
    template = _chat_template(out / base)
    files = [_entry(out, f"{name}-{q}.gguf", "llm", quant=q) for q in quants]
    files.append(_entry(out, mmproj, "mmproj"))
    if "F16" not in quants:
        (out / base).unlink()
    config = json.loads((hf_dir / "config.json").read_text())
    manifest = {
        "manifest_version": MANIFEST_VERSION, "kind": "vlm", "name": name, "version": __version__,
        "architecture": arch, "runtime": SUPPORTED[arch], "protocol_version": PROTOCOL_VERSION,
        "default_quant": quants[0], "chat_template": template, "files": files,
        "source": {"path": str(hf_dir.resolve()), "config_sha256": sha256_file(hf_dir / "config.json"),
                   "model_type": config.get("model_type")},
        "converter": {"llama_cpp_python": llama_cpp_version(), "script": "convert_hf_to_gguf.py"},
        "total_size": sum(f["size"] for f in files),
    }
    path = out / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path} (sha256 {sha256_file(path)}, {path.stat().st_size} bytes)", flush=True)
    if verify:
        from qds_lite.vlm import VLMCritic

        _say(f"[{n_steps}/{n_steps}] checking that each quantization loads with its mmproj")
        for q in quants:
            VLMCritic(out, quant=q, n_ctx=512, n_gpu_layers=0, verify=False, verbose=verbose).close()
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.vlm_convert", description=__doc__.split("\n")[0])
    ap.add_argument("hf_dir", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)")
    ap.add_argument("--out", required=True, help="output folder for the GGUFs and manifest.json")
    ap.add_argument("--quant", nargs="+", default=list(DEFAULT_QUANTS), choices=QUANTS,
                    help="quantizations of the language model (first = default at run time)")
    ap.add_argument("--name", help="critic name (default: the checkpoint folder's name)")
    ap.add_argument("--llama-cpp", help="llama.cpp folder with convert_hf_to_gguf.py (default: fetched, cached)")
    ap.add_argument("--no-verify", action="store_true", help="skip loading the result through the runtime")
    ap.add_argument("--verbose", action="store_true", help="show the converter's and llama.cpp's own output")
    args = ap.parse_args(argv)
    try:
        convert(args.hf_dir, args.out, tuple(args.quant), args.name, args.llama_cpp, not args.no_verify, args.verbose)
    except QdsError as e:
        print(f"vlm_convert: {e}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
