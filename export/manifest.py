"""manifest.json: the critic's identity card (files with sha256 and size, config, training, eval)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qds_lite import __version__
from qds_lite.model_store import MANIFEST_VERSION, sha256_file

ROLES = {"critic.npz": "weights", "encoder.onnx": "encoder_onnx", "encoder.int8.onnx": "encoder_onnx",
         "reasoner.onnx": "reasoner_onnx", "reasoner.q8_0.gguf": "reasoner_gguf"}


def wrote(path: Path) -> str:
    """The line every export step ends with."""
    line = f"wrote {path} (sha256 {sha256_file(path)}, {path.stat().st_size} bytes)"
    print(line, flush=True)
    return line


def write(root: Path, *, name: str, config: dict, training: dict, evaluation: dict | None = None) -> Path:
    files = [{"path": f, "role": role, "sha256": sha256_file(root / f), "size": (root / f).stat().st_size}
             for f, role in ROLES.items() if (root / f).exists()]
    path = root / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    doc = {
        "manifest_version": MANIFEST_VERSION, "name": name, "version": __version__,
        "description": "Small think-with-images critic: MobileNetV2 trunk + 3-layer reasoner, trained on "
                       "synthetic localized degradations of the pristine photos",
        "files": files, "config": config, "training": training,
        "evaluation": evaluation if evaluation is not None else old.get("evaluation", {}),
        "total_size": sum(f["size"] for f in files),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    wrote(path)
    return path
