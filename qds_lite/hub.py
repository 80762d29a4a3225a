"""``qds models pull``: fetch a registry critic from the Hugging Face Hub and check its sha256s.

huggingface-hub does the transfer, so its conventions hold: files land in its cache (``$HF_HUB_CACHE``,
default ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``), ``HF_HUB_OFFLINE=1`` means the cache only, an
interrupted download resumes where it stopped, its progress bars show, and its token opens gated repos.
This module picks what to fetch from the registry entry (``qds_lite/registry.json``), checks every
fetched file against the sha256 recorded there, and, for a ready GGUF entry, writes the qds manifest that
``qds score --model`` reads. huggingface-hub is an optional extra, imported only here and only when called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .atomic import write_text_atomic
from .errors import ModelError
from .model_store import MANIFEST_VERSION, pulled_dir, sha256_file
from .registry import RemoteCritic, remote_critic
from .vlm_protocol import PROTOCOL_VERSION

INSTALL_HINT = "pip install 'qds-lite[hub]'"


@dataclass(frozen=True)
class Pulled:
    critic: RemoteCritic
    commit: str
    snapshot: Path  # huggingface-hub's snapshot folder: the repo's files at ``commit``
    sha256: dict[str, str]  # repo path -> sha256 of every file this pull covers
    verified: bool  # False: the sha256s are of what arrived, checked against nothing (trust on first use)
    size: int  # bytes
    model_dir: Path | None  # gguf entries: the folder to pass to ``qds score --model``


@dataclass(frozen=True)
class Cached:
    commit: str
    snapshot: Path
    n_files: int
    size: int  # bytes


def require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise ModelError("huggingface-hub is not installed", hint=INSTALL_HINT) from e


def pull(name: str, revision: str | None = None, quant: str | None = None, allow_unverified: bool = False,
         progress: Callable[[str], None] = lambda _: None) -> Pulled:
    """Fetch registry critic ``name`` (at ``revision``, default the registry's) into the Hugging Face cache.

    The registry's sha256s hold for its pinned commit only, so an unverified entry or another
    ``revision`` is refused unless ``allow_unverified``; the returned sha256s are then of whatever
    arrived (trust on first use). ``progress`` is told each file's path before it is hashed.
    """
    critic = remote_critic(name)
    rev = revision or critic.revision
    verified = critic.verified and rev == critic.revision
    if not verified and not allow_unverified:
        why = (f"its sha256s are recorded for commit {critic.revision}, not {rev}" if critic.verified
               else "the registry records no sha256 for its files")
        raise ModelError(f"{name}: {why}, so the download cannot be checked",
                         hint="pass --allow-unverified to pull anyway and print the hashes to record")
    if quant and critic.format != "gguf":
        raise ModelError(f"{name}: --quant picks a file of a GGUF entry; this one is a Hugging Face checkpoint",
                         hint="choose quantizations when converting, with `python -m export.vlm_convert --quant`")
    patterns = critic.patterns(quant)
    require_hub()
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, filter_repo_objects

    where = f"{critic.hf_repo}@{rev or 'main'}"
    try:
        snapshot = Path(snapshot_download(critic.hf_repo, revision=rev, allow_patterns=patterns))
    except LocalEntryNotFoundError as e:
        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"{name}: {where} is not (completely) in the Hugging Face cache {constants.HF_HUB_CACHE} "
                             "and HF_HUB_OFFLINE is set, so nothing was downloaded",
                             hint="unset HF_HUB_OFFLINE to download it") from e
        raise ModelError(f"{name}: cannot reach the Hugging Face Hub and {where} is not in the cache",
                         hint="check the connection and pull again; finished files are kept") from e
    except HfHubHTTPError as e:
        raise ModelError(f"{name}: the Hugging Face Hub refused {where}: {str(e).splitlines()[0]}",
                         hint="gated repos need `hf auth login` or $HF_TOKEN") from e
    on_disk = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    got = list(filter_repo_objects(on_disk, allow_patterns=patterns))
    if not got:
        raise ModelError(f"{name}: {where} has no file matching {', '.join(patterns)}")
    expected = ({p: critic.files[p] for p in filter_repo_objects(list(critic.files), allow_patterns=patterns)}
                if verified else None)
    sha256 = _hash_and_check(name, snapshot, got, expected, progress)
    model_dir = _write_gguf_manifest(critic, snapshot, quant, sha256) if critic.format == "gguf" else None
    size = sum((snapshot / p).stat().st_size for p in got)
    return Pulled(critic, snapshot.name, snapshot, sha256, verified, size, model_dir)


def _hash_and_check(name: str, snapshot: Path, got: list[str], expected: dict[str, str] | None,
                    progress: Callable[[str], None]) -> dict[str, str]:
    """sha256 of every file in ``got``; with ``expected`` (repo path -> sha256), exactly those files must be
    there and match."""
    fix = f"delete {snapshot.parents[1]} and pull again"  # huggingface-hub never re-fetches a cached file
    if expected is not None:
        missing, unknown = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing:
            raise ModelError(f"{name}: not in the download: {', '.join(missing)}",
                             hint="pull again online (finished files are kept)")
        if unknown:
            raise ModelError(f"{name}: no sha256 in the registry for {', '.join(unknown)}",
                             hint="record them in the registry entry, or narrow what it fetches")
    sha256 = {}
    for path in got:
        progress(path)
        sha256[path] = digest = sha256_file(snapshot / path)
        if expected is not None and digest != expected[path]:
            raise ModelError(f"{name}: {path} does not match its sha256 in the registry "
                             f"(expected {expected[path]}, got {digest})", hint=fix)
    return sha256


def _write_gguf_manifest(critic: RemoteCritic, snapshot: Path, quant: str | None, sha256: dict[str, str]) -> Path:
    """A qds VLM manifest for a ready GGUF pair, in ``<qds cache>/models/NAME``. Its file paths are absolute:
    the files stay in the Hugging Face cache, nothing is copied."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ModelError("the gguf package is not installed (it reads the chat template)", hint=INSTALL_HINT) from e
    quant = quant or next(iter(critic.llm))
    llm = snapshot / critic.llm[quant]
    field = GGUFReader(llm).fields.get("tokenizer.chat_template")
    files = [{"path": str(snapshot / path), "role": role, **extra, "sha256": sha256[path],
              "size": (snapshot / path).stat().st_size}
             for path, role, extra in ((critic.llm[quant], "llm", {"quant": quant}), (critic.mmproj, "mmproj", {}))]
    manifest = {
        "manifest_version": MANIFEST_VERSION, "kind": "vlm", "name": critic.name, "version": __version__,
        "architecture": critic.architecture, "protocol_version": PROTOCOL_VERSION, "default_quant": quant,
        "chat_template": bytes(field.parts[field.data[0]]).decode() if field is not None else "",
        "files": files, "source": {"hf_repo": critic.hf_repo, "revision": snapshot.name},
        "total_size": sum(f["size"] for f in files),
    }
    out = pulled_dir(critic.name)  # $QDS_CACHE_DIR/models/NAME or ~/.cache/qds/models/NAME
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return out


def cached(critics: Iterable[RemoteCritic]) -> dict[str, Cached]:
    """Which critics the Hugging Face cache holds (at the pinned revision, else the newest). Reads only."""
    require_hub()
    from huggingface_hub import CacheNotFound, constants, scan_cache_dir

    try:  # scan_cache_dir's default is fixed at import; constants is what snapshot_download reads
        info = scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return {}
    repos = {r.repo_id: r for r in info.repos if r.repo_type == "model"}
    found = {}
    for c in critics:
        revisions = [r for r in repos[c.hf_repo].revisions
                     if c.revision in (None, r.commit_hash)] if c.hf_repo in repos else []
        if revisions:
            r = max(revisions, key=lambda r: r.last_modified)
            found[c.name] = Cached(r.commit_hash, r.snapshot_path, len(r.files), r.size_on_disk)
    return found
