"""Finding critics and checking them: bundled models, manifests, sha256 verification.

A critic is a folder with a ``manifest.json`` (name, version, architecture config, files with sha256
and size, training and evaluation figures) and the files it lists. Only safe formats are ever read
(.npz without pickle, .onnx, .gguf), and only after their sha256 matches the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from .errors import ModelError

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "qds-small-v1"
MANIFEST_VERSION = 1
SAFE_SUFFIXES = (".npz", ".onnx", ".gguf")


@dataclass(frozen=True)
class ModelFiles:
    name: str
    root: Path
    manifest: dict

    def path(self, role: str) -> Path:
        """Path of the file with the given role ('weights', 'encoder_onnx', 'reasoner_onnx', 'reasoner_gguf')."""
        for entry in self.manifest["files"]:
            if entry["role"] == role:
                return self.root / entry["path"]
        raise ModelError(f"{self.name}: manifest lists no {role} file")

    @property
    def sha256(self) -> str:
        """Identity of the critic: sha256 of its manifest (which pins every file's sha256)."""
        return hashlib.sha256((self.root / "manifest.json").read_bytes()).hexdigest()

    @property
    def config(self) -> dict:
        return self.manifest["config"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_package_data(path: Path, what: str, hint: str = "reinstall qds-lite") -> None:
    """Raise ModelError unless ``path``, a learned file shipped inside the package (the NIQE model, refine's
    edit gate), has the sha256 that the ``manifest.json`` beside it records for its name: package data is
    read like a critic's files, only once checked. ``what`` names it in the message."""
    try:
        expected = json.loads((path.parent / "manifest.json").read_text())["files"][path.name]
        actual = sha256_file(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{what} {path} is missing, unreadable or not in its manifest ({type(e).__name__})",
                         hint=hint) from None
    if actual != expected:
        raise ModelError(f"{what} {path} does not match the sha256 in {path.parent / 'manifest.json'}", hint=hint)


def cache_dir() -> Path:
    """qds's own cache folder: $QDS_CACHE_DIR, else $XDG_CACHE_HOME/qds, else ~/.cache/qds."""
    return Path(os.environ.get("QDS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qds"))


def pulled_dir(name: str) -> Path:
    """Where `qds models pull NAME` leaves the manifest of a full-size critic."""
    return cache_dir() / "models" / name


def model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder holding ``name_or_path``'s manifest.json: the path itself, else a pulled critic of that
    name; None if neither exists (bundled names are resolved by :func:`resolve`)."""
    for root in (Path(name_or_path), pulled_dir(str(name_or_path))):
        if (root / "manifest.json").is_file():
            return root
    return None


def available_models() -> list[str]:
    """Names of the critics bundled with the package."""
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/manifest.json"))


def resolve(name_or_path: str | os.PathLike | None = None) -> ModelFiles:
    """A bundled model name or a folder holding a manifest.json -> its verified files."""
    target = name_or_path or os.environ.get("QDS_MODEL", DEFAULT_MODEL)
    root = Path(target)
    if not (root / "manifest.json").is_file():
        root = BUNDLED_DIR / str(target)
    if not (root / "manifest.json").is_file():
        known = ", ".join(available_models()) or "none"
        raise ModelError(f"unknown model {target!r} (bundled: {known})",
                         hint="pass a bundled name or a folder containing manifest.json")
    return _verified(root.resolve(), _folder_state(root))


def _folder_state(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, mtime and size of each file in ``root``: a folder changed on disk is read and checked again."""
    return tuple(sorted((p.name, st.st_mtime_ns, st.st_size) for p in root.iterdir() if p.is_file()
                        for st in [p.stat()]))


@cache
def _verified(root: Path, state: tuple[tuple[str, int, int], ...]) -> ModelFiles:
    """Checked once per folder and ``state`` (:func:`_folder_state`): a manifest rewritten in the same
    process (export.calibrate) or a file replaced since is read and checked again."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{root}: unreadable manifest.json ({e})") from e
    name = manifest.get("name", root.name)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ModelError(f"{name}: manifest version {manifest.get('manifest_version')} is not "
                         f"{MANIFEST_VERSION}", hint="re-run `python -m export.build` or update qds-lite")
    for entry in manifest["files"]:
        path = root / entry["path"]
        if path.suffix not in SAFE_SUFFIXES:
            raise ModelError(f"{name}: {entry['path']} is not a safe model format {SAFE_SUFFIXES}")
        if not path.is_file():
            raise ModelError(f"{name}: missing file {entry['path']}", hint="reinstall the model")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise ModelError(f"{name}: {entry['path']} does not match its sha256 in manifest.json",
                             hint="the file is corrupt or was replaced; reinstall the model")
    return ModelFiles(name=name, root=root, manifest=manifest)


class Weights(Mapping[str, np.ndarray]):
    """The critic's weights as float32, read from the .npz on first use of each array.

    Stored as float16 (the reference uses the same rounded values). Lazy because the onnx and gguf
    backends only need the two embedding tables, and decompressing the encoder costs start-up time."""

    def __init__(self, path: Path) -> None:
        self._npz = np.load(path, allow_pickle=False)
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._npz[key].astype(np.float32)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)


def load_weights(files: ModelFiles) -> Weights:
    return Weights(files.path("weights"))
