"""The triage cache: what the critic said about each photo, so a re-run only scores what is new.

One SQLite file (default ``$QDS_CACHE_DIR`` or ``$XDG_CACHE_HOME/qds`` or ``~/.cache/qds``, file
``triage.sqlite3``; ``qds triage --cache PATH`` picks another, e.g. inside the shoot folder):

- ``results``: keyed by the file's content sha256 + the model's sha256 + the scoring options, so a
  renamed or copied photo is not scored twice, an edited one is, and a new model or zoom budget
  scores afresh. Holds the trace JSON, the perceptual hash, the capture time and a small thumbnail.
- ``paths``: path + size + mtime + inode -> content sha256, so an unchanged file is not even re-hashed.

Rows are committed one by one as results arrive (WAL journal), so Ctrl-C loses nothing already
scored. Readers in worker processes open the same file read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import QdsError
from .model_store import cache_dir

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,            -- content sha256 : model sha256 : options digest
    trace TEXT NOT NULL,             -- Result.trace as JSON
    phash INTEGER NOT NULL,          -- 64-bit difference hash, stored signed
    capture_time REAL NOT NULL,
    time_source TEXT NOT NULL,
    thumbnail BLOB
);
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


def default_path() -> Path:
    return cache_dir() / "triage.sqlite3"


def options_digest(**options: object) -> str:
    """A short stable digest of the options that change what the critic says."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """What the cache holds about one photo, besides its thumbnail (read apart: only the contact sheet needs it)."""

    trace: dict
    phash: int
    capture_time: float
    time_source: str


class TriageCache:
    """Open (creating if needed) the cache at ``path``; ``readonly`` for worker processes."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version()
        except sqlite3.Error as e:
            raise QdsError(f"{self.path}: cannot open the triage cache ({e})",
                           hint="pass --cache PATH elsewhere, or --no-cache") from e
        except OSError as e:
            raise QdsError(f"{self.path}: cannot create the triage cache ({e.strerror or e})",
                           hint="pass --cache PATH elsewhere, or --no-cache") from e

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise QdsError(f"{self.path}: triage cache schema {row[0]}, this qds writes {SCHEMA_VERSION}",
                           hint="delete the file or pass --cache PATH elsewhere")

    def close(self) -> None:
        self.db.close()

    # --- path index -------------------------------------------------------------------------------
    def known_sha256(self, path: str, st: os.stat_result) -> str | None:
        """The content hash recorded for ``path`` if the file is unchanged since (size, mtime, inode)."""
        row = self.db.execute("SELECT size, mtime_ns, inode, sha256 FROM paths WHERE path=?", (path,)).fetchone()
        if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            return row[3]
        return None

    def remember_path(self, path: str, st: os.stat_result, sha256: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO paths VALUES (?, ?, ?, ?, ?)",
                            (path, st.st_size, st.st_mtime_ns, st.st_ino, sha256))

    # --- results ----------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = self.db.execute("SELECT trace, phash, capture_time, time_source FROM results WHERE key=?",
                              (key,)).fetchone()
        if row is None:
            return None
        return Entry(json.loads(row[0]), row[1] & (2**64 - 1), row[2], row[3])

    def thumbnail(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT thumbnail FROM results WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def has(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM results WHERE key=?", (key,)).fetchone() is not None

    def put(self, key: str, entry: Entry, thumbnail: bytes | None) -> None:
        phash = entry.phash - 2**64 if entry.phash >= 2**63 else entry.phash  # SQLite integers are signed
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                            (key, json.dumps(entry.trace), phash, entry.capture_time, entry.time_source, thumbnail))


def result_key(content_sha256: str, model_sha256: str, options: str) -> str:
    return f"{content_sha256}:{model_sha256[:16]}:{options}"
