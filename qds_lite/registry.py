"""Known full-size critics (``registry.json``: data, not code) and checking models on disk.

Nothing here downloads anything (``qds_lite.hub`` pulls an entry). Memory needs are estimates: the
quantized language model plus the F16 vision projector plus ``RUNTIME_OVERHEAD_GB`` for an 8k-token KV
cache and llama.cpp's compute buffers (for a Qwen2.5-7B: 28 layers x 2 x 4 KV heads x 128 x 8192 tokens x 2
bytes = 0.47 GB, rounded up).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import ModelError

REGISTRY_PATH = Path(__file__).resolve().parent / "registry.json"
RUNTIME_OVERHEAD_GB = 1.0
FORMATS = ("hf-checkpoint", "gguf")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class RemoteCritic:
    """One registry entry: what ``qds models pull NAME`` fetches from the Hugging Face Hub, and its sha256s."""

    name: str
    hf_repo: str
    license: str
    format: str  # "hf-checkpoint" (convert with export.vlm_convert) or "gguf" (ready language model + mmproj)
    revision: str | None  # commit the sha256s were recorded at; None: the repo's main branch (unverified only)
    allow_patterns: tuple[str, ...]  # hf-checkpoint: which repo files to fetch
    llm: dict[str, str]  # gguf: quantization -> repo path of the language model
    mmproj: str | None  # gguf: repo path of the vision projector
    architecture: str
    files: dict[str, str]  # repo path -> sha256, for every file a pull fetches; empty until recorded
    sizes_gb: dict[str, float]  # estimated file sizes per quantization, plus "mmproj-F16"

    @property
    def verified(self) -> bool:
        return bool(self.files)

    def patterns(self, quant: str | None = None) -> list[str]:
        """What one pull fetches: the checkpoint's patterns, or one GGUF quantization (default the first) + mmproj."""
        if self.format == "hf-checkpoint":
            return list(self.allow_patterns)
        quant = quant or next(iter(self.llm))
        if quant not in self.llm:
            raise ModelError(f"{self.name}: no {quant} language model (has {', '.join(self.llm)})")
        return [self.llm[quant], self.mmproj]

    def memory_gb(self, quant: str = "Q4_K_M") -> float:
        """Estimated RAM (CPU) or VRAM (full offload) to run ``quant``."""
        return self.sizes_gb[quant] + self.sizes_gb.get("mmproj-F16", 0.0) + RUNTIME_OVERHEAD_GB


def remote_critics() -> tuple[RemoteCritic, ...]:
    return _load(REGISTRY_PATH)


def remote_critic(name: str) -> RemoteCritic:
    for c in remote_critics():
        if c.name == name:
            return c
    known = ", ".join(c.name for c in remote_critics()) or "none"
    raise ModelError(f"unknown critic {name!r} (known: {known})", hint="`qds models list` shows them")


@cache
def _load(path: Path) -> tuple[RemoteCritic, ...]:
    doc = json.loads(path.read_text())
    critics = []
    for name, c in doc["critics"].items():
        critic = RemoteCritic(name, c["hf_repo"], c.get("license", "?"), c.get("format", "hf-checkpoint"),
                              c.get("revision"), tuple(c.get("allow_patterns", ())), dict(c.get("llm", {})),
                              c.get("mmproj"), c.get("architecture", "?"), dict(c.get("files", {})),
                              dict(c.get("estimated_size_gb", {})))
        problem = _problem(critic)
        if problem:
            raise ModelError(f"{path}: {name}: {problem}")
        critics.append(critic)
    return tuple(critics)


def _problem(c: RemoteCritic) -> str | None:
    if c.format not in FORMATS:
        return f"format {c.format!r} is not one of {FORMATS}"
    if c.format == "hf-checkpoint" and not c.allow_patterns:
        return "an hf-checkpoint entry needs allow_patterns"
    if c.format == "gguf" and not (c.llm and c.mmproj):
        return "a gguf entry needs llm and mmproj"
    if c.files and not _COMMIT.fullmatch(c.revision or ""):
        return "recorded sha256s need revision pinned to the 40-hex commit they were taken at"
    return None


def verify(model: str | os.PathLike) -> list[str]:
    """sha256-check every file of a bundled name or a model folder (small critic or VLM); returns what was
    checked, one line each. Raises ModelError on the first file that does not match its manifest."""
    from .model_store import _verified, resolve

    root = Path(model)
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("kind") == "vlm":
        from .vlm import resolve_vlm

        doc = json.loads(manifest.read_text())
        quants = [f["quant"] for f in doc["files"] if f["role"] == "llm"]
        return [f"{resolve_vlm(root, q).name} {q}: language model and mmproj match their sha256" for q in quants]
    _verified.cache_clear()  # check the bytes on disk now, not a result from earlier in this process
    files = resolve(model)
    return [f"{files.name}: {len(files.manifest['files'])} files match their sha256"]
