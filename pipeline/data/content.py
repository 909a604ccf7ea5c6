"""Content hashes of data files, cached by (path, size, modification time).

A data set's fingerprint is built from what its files hold, not from when they were written:
two copies of one data set (one per node of a multi-node run, or a copy to local disk) get the
same fingerprint although their modification times differ. Hashing every file is paid once:
the hashes are kept in an SQLite file under the user's cache folder (`PIPELINE_CACHE_DIR`,
else `$XDG_CACHE_HOME/pipeline`, else `~/.cache/pipeline`), never beside the data (which may
be read-only), and reused while a file keeps its path, size and modification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("pipeline.data")

CACHE_FILE = "file-sha256.sqlite"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    explicit = os.environ.get("PIPELINE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pipeline"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _open_cache() -> sqlite3.Connection | None:
    """The hash cache, or None where it cannot be opened (every file is hashed then)."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / CACHE_FILE, timeout=60)
        db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, sha256 TEXT)"
        )
        return db
    except (OSError, sqlite3.Error) as exc:
        log.debug("file hash cache unavailable (%s); hashing every data file", exc)
        return None


def content_hashes(paths: Sequence[Path]) -> list[str | None]:
    """sha256 of each file's contents (None: the file is missing), from the cache where the
    file's path, size and modification time match what was hashed."""
    stats: list[tuple[str, int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
            stats.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            stats.append(None)
    db = _open_cache()
    known: dict[str, tuple[int, int, str]] = {}
    if db is not None:
        keys = [s[0] for s in stats if s is not None]
        with contextlib.suppress(sqlite3.Error):
            for i in range(0, len(keys), 900):  # SQLite's bound-parameter limit
                part = keys[i : i + 900]
                rows = db.execute(
                    f"SELECT path, size, mtime_ns, sha256 FROM files WHERE path IN "
                    f"({','.join('?' * len(part))})",
                    part,
                )
                known.update({r[0]: (r[1], r[2], r[3]) for r in rows})
    out: list[str | None] = [None] * len(stats)
    todo = []
    for i, s in enumerate(stats):
        if s is None:
            continue
        hit = known.get(s[0])
        if hit is not None and hit[:2] == s[1:]:
            out[i] = hit[2]
        else:
            todo.append(i)
    if todo:
        from pipeline.data.base import available_cpus

        if len(todo) > 1000:
            log.info("hashing the contents of %d data files (cached for later runs)", len(todo))
        with ThreadPoolExecutor(max(1, min(8, available_cpus()))) as pool:
            for i, digest in zip(
                todo, pool.map(lambda j: file_sha256(paths[j]), todo), strict=True
            ):
                out[i] = digest
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                with db:
                    db.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                        [(*stats[i], out[i]) for i in todo],
                    )
    if db is not None:
        db.close()
    return out
