"""The data fingerprint follows file contents: two copies of one data set agree (their
modification times differ), a changed file does not, and hashes are cached by path, size and
modification time outside the data folder."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from pipeline.data import content
from pipeline.data.files import FileList, files_fingerprint


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(folder))
    return folder


def _data(root: Path) -> FileList:
    paths = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            p = root / cls / f"{i}.png"
            p.write_bytes(f"{cls}-{i}".encode() * 10)
            paths.append(p)
    return FileList(paths=paths, labels=[0, 0, 0, 1, 1, 1])


def _relist(fl: FileList, src: Path, dst: Path) -> FileList:
    return FileList([dst / p.relative_to(src) for p in fl.paths], list(fl.labels))


def test_two_copies_with_other_modification_times_fingerprint_the_same(tmp_path, cache):
    a = _data(tmp_path / "node0")
    shutil.copytree(tmp_path / "node0", tmp_path / "node1")  # copytree keeps mtimes: change them
    b = _relist(a, tmp_path / "node0", tmp_path / "node1")
    for p in b.paths:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    assert files_fingerprint(a, tmp_path / "node0") == files_fingerprint(b, tmp_path / "node1")
    rows = sqlite3.connect(cache / content.CACHE_FILE).execute("SELECT COUNT(*) FROM files")
    assert rows.fetchone()[0] == 12  # both copies, by path; nothing written beside the data
    assert sorted(p.name for p in (tmp_path / "node0" / "cat").iterdir()) == [
        "0.png",
        "1.png",
        "2.png",
    ]


def test_changed_contents_change_the_fingerprint_and_the_cache_follows(tmp_path, cache):
    fl = _data(tmp_path / "d")
    before = files_fingerprint(fl, tmp_path / "d")
    assert files_fingerprint(fl, tmp_path / "d") == before  # from the cache
    fl.paths[2].write_bytes(b"other contents, other size")
    assert files_fingerprint(fl, tmp_path / "d") != before
    fl.paths[2].unlink()
    assert files_fingerprint(fl, tmp_path / "d") != before  # a missing file counts


def test_cached_hash_is_reused_while_path_size_and_mtime_match(tmp_path, cache, monkeypatch):
    fl = _data(tmp_path / "d")
    files_fingerprint(fl, tmp_path / "d")
    calls = []
    real = content.file_sha256
    monkeypatch.setattr(content, "file_sha256", lambda p: calls.append(p) or real(p))
    files_fingerprint(fl, tmp_path / "d")
    assert calls == []
    os.utime(fl.paths[0], ns=(5, 5))
    files_fingerprint(fl, tmp_path / "d")
    assert calls == [fl.paths[0]]


def test_an_unwritable_cache_folder_still_fingerprints(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    fl = _data(tmp_path / "d")
    assert len(files_fingerprint(fl, tmp_path / "d")) == 16
