"""`qds triage`: score a whole shoot on every core, resumably, and group its bursts.

Files are found by walking the folders (symlinks followed, loops broken, hidden entries skipped);
what each file is gets decided by its content when it is loaded, so only well-known companions
(sidecars, reports, videos) are passed over by name. Each worker process loads the critic once and
handles one file at a time, so memory stays flat however large the shoot; the parent keeps one small
:class:`Photo` per file and the traces live in the SQLite cache (qds_lite.triage_cache), which also
makes a re-run score only new or changed files. Outputs are written by qds_lite.triage_outputs.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol as P
from .bursts import Frame, capture_time, dhash, group_bursts
from .errors import ImageLoadError, QdsError
from .io import LoadedImage, load_image
from .model_store import sha256_file
from .triage_cache import Entry, TriageCache, options_digest, result_key

THUMB_SIZE = 320  # long side of the contact-sheet thumbnails kept in the cache (about 15 KB each)
# Passed over by name: other tools' sidecars, qds's own reports, and videos, which a shoot folder holds too.
COMPANION_SUFFIXES = frozenset(
    ".xmp .pp3 .dop .on1 .thm .xml .json .jsonl .csv .html .htm .txt .md .log .db .sqlite3 .ini .lrcat "
    ".mov .mp4 .m4v .avi .mts .m2ts .mkv .3gp .wav .mp3 .m4a .aac".split())


@dataclass
class Photo:
    """One file of the shoot, as the parent process keeps it (the trace itself stays in the cache)."""

    path: Path  # as found under the folder given (or as given)
    key: str | None = None  # cache key of its result
    score: float | None = None
    level: str | None = None
    capture_time: float = 0.0
    time_source: str = "mtime"
    phash: int | None = None
    error: str | None = None
    cached: bool = False
    group: int = 0
    group_size: int = 1
    pick: bool = False

    @property
    def display(self) -> str:
        return str(self.path)


@dataclass
class TriageRun:
    photos: list[Photo]
    cache: TriageCache
    model: dict
    backend: str
    ignored: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    roots: list[Path] = field(default_factory=list)
    cache_dir: tempfile.TemporaryDirectory | None = None  # a --no-cache run's cache, removed with the run

    @property
    def scored(self) -> list[Photo]:
        return [p for p in self.photos if p.error is None and p.score is not None]

    @property
    def failed(self) -> list[Photo]:
        return [p for p in self.photos if p.error is not None]


# --- discovery ---------------------------------------------------------------------------------
def discover(inputs: Iterable[str | os.PathLike], exclude: Iterable[Path] = ()) -> tuple[list[Photo], int]:
    """Every candidate file under ``inputs`` (files given directly are always candidates).

    Returns the photos (unreadable folders and broken links become photos with an ``error``) and the
    number of companion files passed over. ``exclude``: folders never entered (qds's own outputs).
    """
    skip = {os.path.realpath(p) for p in exclude}
    photos: list[Photo] = []
    ignored = 0
    for given in inputs:
        root = Path(given)
        if not root.is_dir():
            photos.append(Photo(root, error=None if root.exists() else "file not found"))
            continue
        seen: set[tuple[int, int]] = set()
        for folder, files, err in _walk(root, seen, skip):
            if err is not None:
                photos.append(Photo(folder, error=err))
                continue
            for name in sorted(files):
                path = folder / name
                if name.startswith("."):
                    continue
                if Path(name).suffix.lower() in COMPANION_SUFFIXES:
                    ignored += 1
                    continue
                error = None if os.path.exists(path) else "broken symbolic link"
                photos.append(Photo(path, error=error))
    return photos, ignored


def _walk(root: Path, seen: set[tuple[int, int]], skip: set[str]) -> Iterator[tuple[Path, list[str], str | None]]:
    """os.walk with symlinks followed, each real folder entered once (so link loops end), errors kept."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen or os.path.realpath(folder) in skip:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as e:
            yield folder, [], f"cannot read folder ({e.strerror or e})"
            continue
        dirs, files = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.name.startswith("."):
                    dirs.append(entry.name)
            else:
                files.append(entry.name)
        yield folder, files, None
        stack.extend(folder / d for d in sorted(dirs, reverse=True))


# --- scoring -----------------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(model: str | None, backend: str, zooms: int, cache_path: str, digest: str,
                 quiet_signals: bool) -> None:
    """Load the critic once per worker process; Ctrl-C is the parent's to handle."""
    from . import load

    if quiet_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_worker(load(model, backend=backend, threads=1, zooms=zooms), cache_path, digest)


def _set_worker(critic, cache_path: str | Path, digest: str) -> None:
    _worker.update(critic=critic, cache=TriageCache(cache_path, readonly=True), digest=digest)


def _score_one(task: tuple[str, str | None]) -> dict:
    """Hash, look up, else decode + score one file. Returns a plain dict (it crosses processes)."""
    path, sha = task
    critic, cache = _worker["critic"], _worker["cache"]
    try:
        if sha is None:
            sha = sha256_file(Path(path))
        key = result_key(sha, critic.model["sha256"], _worker["digest"])
        if cache.has(key):
            return {"path": path, "sha": sha, "key": key, "cached": True}
        loaded = load_image(path, glance_only=critic.max_zooms == 0)  # --zooms 0: a draft decode is enough
        result = critic.score(loaded)
        when, source = capture_time(None, Path(path))  # reads the EXIF header only
    except QdsError as e:
        if not os.path.exists(path):
            return {"path": path, "error": "file vanished during the run"}
        return {"path": path, "error": e.reason if isinstance(e, ImageLoadError) else e.message}
    except OSError as e:  # vanished or unreadable between the walk and now
        return {"path": path, "error": _os_reason(e)}
    return {"path": path, "sha": sha, "key": key, "cached": False, "trace": result.trace,
            "phash": dhash(loaded.glance), "time": when, "time_source": source, "thumbnail": _thumbnail(loaded)}


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file vanished during the run"
    return f"cannot read file ({e.strerror or e})"


def _thumbnail(loaded: LoadedImage) -> bytes:
    buf = io.BytesIO()
    loaded.thumbnail(THUMB_SIZE).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def run(inputs: Iterable[str | os.PathLike], *, model: str | None = None, backend: str = "auto",
        zooms: int = P.DEFAULT_ZOOMS, workers: int | None = None, cache_path: Path | None = None,
        exclude: Iterable[Path] = (), max_gap_s: float = 2.0,
        progress: Callable[[int], Callable[[Photo], None]] | None = None) -> TriageRun:
    """Score every photo under ``inputs``; group bursts; return the run (outputs are written by the caller).

    ``cache_path`` None keeps the cache in a temporary folder for this run only. ``progress(total)``
    returns a callback invoked once per photo as it completes. Ctrl-C stops early with
    ``interrupted`` set; everything scored so far is in the cache.
    """
    from . import load
    from .model_store import resolve

    t0 = time.perf_counter()
    inputs = [Path(i) for i in inputs]
    photos, ignored = discover(inputs, exclude)
    files = resolve(model)  # sha256-verified; fails early on a bad model
    model_info = {"name": files.name, "sha256": files.sha256}
    tmp = None
    if cache_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="qds-triage-")
        cache_path = Path(tmp.name) / "triage.sqlite3"
    cache = TriageCache(cache_path)
    # The backend is not part of the key: backends agree within the parity contract (score within 1.0).
    digest = options_digest(zooms=zooms)
    run_ = TriageRun(photos, cache, model_info, backend, ignored, roots=inputs, cache_dir=tmp)
    done = progress(len(photos)) if progress else (lambda _p: None)

    todo: list[tuple[str, str | None]] = []
    by_path: dict[str, Photo] = {}
    for photo in photos:
        if photo.error is not None:
            done(photo)
            continue
        path = str(photo.path)
        try:
            sha = cache.known_sha256(os.path.realpath(path), os.stat(path))
        except OSError as e:
            photo.error = _os_reason(e)
            done(photo)
            continue
        key = sha and result_key(sha, model_info["sha256"], digest)
        if key and _fill_from_cache(photo, cache, key):
            done(photo)
            continue
        todo.append((path, sha))
        by_path[path] = photo
    # Loaded here only when something needs scoring: a fully cached re-run never pays for it. Also run in
    # this process when one worker is enough, and checks the backend before any worker starts.
    critic = load(model, backend=backend, threads=1, zooms=zooms) if todo else None
    if critic is not None:
        backend = run_.backend = critic.backend_name  # what "auto" chose, for the workers too

    try:
        for out in _map(todo, critic, model, backend, zooms, cache_path, digest, workers):
            photo = by_path[out["path"]]
            if "error" in out:
                photo.error = out["error"]
            else:
                cache.remember_path(os.path.realpath(out["path"]), os.stat(out["path"]), out["sha"])
                if out["cached"]:
                    _fill_from_cache(photo, cache, out["key"])
                else:
                    entry = Entry(out["trace"], out["phash"], out["time"], out["time_source"])
                    cache.put(out["key"], entry, out["thumbnail"])
                    _fill(photo, out["key"], entry, cached=False)
            done(photo)
    except KeyboardInterrupt:
        run_.interrupted = True
    _group(run_.scored, max_gap_s)
    run_.seconds = time.perf_counter() - t0
    return run_


def _fill_from_cache(photo: Photo, cache: TriageCache, key: str) -> bool:
    entry = cache.get(key)
    if entry is not None:
        _fill(photo, key, entry, cached=True)
    return entry is not None


def _fill(photo: Photo, key: str, entry: Entry, cached: bool) -> None:
    photo.key, photo.cached = key, cached
    photo.score, photo.level = entry.trace["score"], entry.trace["level"]
    photo.capture_time, photo.time_source, photo.phash = entry.capture_time, entry.time_source, entry.phash


def _map(todo: list[tuple[str, str | None]], critic, model: str | None, backend: str, zooms: int,
         cache_path: Path, digest: str, workers: int | None) -> Iterator[dict]:
    """Results of _score_one over ``todo`` as they complete: in this process for one worker, else a pool."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    if workers == 1:
        _set_worker(critic, cache_path, digest)
        for task in todo:
            yield _score_one(task)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads and an open database
    with ctx.Pool(workers, _init_worker, (model, backend, zooms, str(cache_path), digest, True)) as pool:
        try:
            yield from pool.imap_unordered(_score_one, todo, chunksize=1)
        except BaseException:
            pool.terminate()
            raise


def _group(photos: list[Photo], max_gap_s: float) -> None:
    frames = [Frame(str(i), p.capture_time, p.time_source, p.phash, p.score) for i, p in enumerate(photos)]
    for group in group_bursts(frames, max_gap_s=max_gap_s):
        for k in group.members:
            photo = photos[int(k)]
            photo.group, photo.group_size, photo.pick = group.id, len(group.members), k == group.best

