"""Known full-size critics (``registry.json``: data, not code) and checking models on disk.

Nothing here downloads anything. Memory needs are estimates: the quantized language model plus the F16
vision projector plus ``RUNTIME_OVERHEAD_GB`` for an 8k-token KV cache and llama.cpp's compute buffers
(for a Qwen2.5-7B: 28 layers x 2 x 4 KV heads x 128 x 8192 tokens x 2 bytes = 0.47 GB, rounded up).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REGISTRY_PATH = Path(__file__).resolve().parent / "registry.json"
RUNTIME_OVERHEAD_GB = 1.0


@dataclass(frozen=True)
class RemoteCritic:
    name: str
    hf_repo: str
    license: str
    verified: bool  # every file's sha256 recorded in the registry
    sizes_gb: dict[str, float]  # estimated file sizes per quantization, plus "mmproj-F16"

    def memory_gb(self, quant: str = "Q4_K_M") -> float:
        """Estimated RAM (CPU) or VRAM (full offload) to run ``quant``."""
        return self.sizes_gb[quant] + self.sizes_gb.get("mmproj-F16", 0.0) + RUNTIME_OVERHEAD_GB


@cache
def remote_critics() -> tuple[RemoteCritic, ...]:
    doc = json.loads(REGISTRY_PATH.read_text())
    return tuple(RemoteCritic(name, c["hf_repo"], c.get("license", "?"), bool(c.get("verified")),
                              dict(c.get("estimated_size_gb", {})))
                 for name, c in doc["critics"].items())


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
