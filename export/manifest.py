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


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    wrote(path)


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
    write_json(path, doc)
    return path


def record_evaluation(root: Path, accuracy_json: Path, method: str = "qds/onnx") -> None:
    """Copy the headline figures of a benchmarks.accuracy run into the manifest's ``evaluation``.

    Only critic.npz's sha256 ties the golden vectors to the weights, so this leaves them valid. Refuses a
    folder whose files do not match its manifest, and a run that scored other files."""
    from benchmarks.accuracy import model_files_sha256
    from qds_lite.model_store import resolve

    files = resolve(root)  # raises ModelError when a file's sha256 differs from the manifest's
    run = json.loads(Path(accuracy_json).read_text())
    if run["model"].get("files") != model_files_sha256(files.manifest):
        raise ValueError(f"{accuracy_json} did not score the critic in {root} (its files' sha256 differ)")
    summary, loc = run["results"][method]["summary"], run["results"][method]["localisation"]
    baselines = {name: {k: round(run["results"][name]["summary"][k], 3) for k in ("srcc", "l_srcc", "d_auc", "p_acc")}
                 for name in run["baselines"]}
    evaluation = {
        "command": run["command"], "n_images": run["n_images"], "method": method,
        "summary": {
            "SRCC (all pooled)": round(summary["srcc"], 3), "L-test SRCC": round(summary["l_srcc"], 3),
            "D-test AUC": round(summary["d_auc"], 3), "P-test accuracy": round(summary["p_acc"], 3),
            "cross-distortion SRCC": round(summary["cross_srcc"], 3),
            "finding type top-1": round(loc["type_top1"], 3), "box IoU>=0.5": round(loc["iou_hit"], 3),
            "pristine photos given a finding": round(loc["clean_flagged"], 3),
            **({"whole-image damage named": round(loc["global_named"], 3)} if "global_named" in loc else {}),
            "score off the trained-for score": round(run["results"][method]["scale"]["mae"], 1),
            "level = trained-for level": round(run["results"][method]["scale"]["level_match"], 3),
        },
        "baselines": baselines,
    }
    path = root / "manifest.json"
    write_json(path, json.loads(path.read_text()) | {"evaluation": evaluation})


if __name__ == "__main__":
    import argparse

    from qds_lite.errors import ModelError
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    ap = argparse.ArgumentParser(description="record benchmark figures in a model's manifest")
    ap.add_argument("accuracy_json", type=Path)
    ap.add_argument("--model-dir", type=Path, default=BUNDLED_DIR / DEFAULT_MODEL)
    a = ap.parse_args()
    try:
        record_evaluation(a.model_dir, a.accuracy_json)
    except (ValueError, ModelError) as e:
        raise SystemExit(f"manifest: {e}") from e
