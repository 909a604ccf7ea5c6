"""Manifests, folder look-up by stage name, checkpoint index and atomic commits."""

from __future__ import annotations

import pytest

from pipeline.artifacts import (
    CHECKPOINT_INDEX,
    Manifest,
    commit_dir,
    find_stage,
    read_checkpoint_index,
    stage_key,
)
from pipeline.errors import ArtefactError


def _stage(folder, stage: str, status: str = "complete") -> Manifest:
    folder.mkdir(parents=True)
    m = Manifest(stage=stage, key=f"k-{stage}", status=status)
    m.write(folder)
    return m


def test_find_stage_goes_by_the_recorded_name_not_the_folder(tmp_path) -> None:
    _stage(tmp_path / "07_whatever", "export")
    _stage(tmp_path / "02_export.partial", "export", status="running")
    _stage(tmp_path / "01_x", "validate", status="gate_failed")
    assert find_stage(tmp_path, "export").folder == tmp_path / "07_whatever"
    assert find_stage(tmp_path, "validate") is None
    assert find_stage(tmp_path, "validate", statuses=("gate_failed",)).key == "k-validate"
    assert find_stage(tmp_path, "train") is None


def test_torn_manifest_reads_as_not_done(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text('{"stage": "train", "key"')
    assert Manifest.load(tmp_path) is None


def test_checkpoint_index_is_read_or_refused_clearly(tmp_path) -> None:
    assert read_checkpoint_index(tmp_path) == {}
    p = tmp_path / CHECKPOINT_INDEX
    p.parent.mkdir()
    p.write_text('{"checkpoint": {"name": "e1"}, "checkpoints": ["e1"]}')
    assert read_checkpoint_index(tmp_path)["checkpoint"]["name"] == "e1"
    p.write_text("{not json")
    with pytest.raises(ArtefactError, match="corrupt.*--force"):
        read_checkpoint_index(tmp_path)


def test_commit_dir_replaces_the_folder_whole(tmp_path) -> None:
    final, work = tmp_path / "01_a", tmp_path / "01_a.partial"
    final.mkdir()
    (final / "old.txt").write_text("old")
    work.mkdir()
    (work / "new.txt").write_text("new")
    commit_dir(work, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"] and not work.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stage_key_depends_on_every_part() -> None:
    base = stage_key("s", {"a": 1}, {"in": "k"}, "data", "1.0")
    assert base == stage_key("s", {"a": 1}, {"in": "k"}, "data", "1.0")
    variants = [
        stage_key("t", {"a": 1}, {"in": "k"}, "data", "1.0"),
        stage_key("s", {"a": 2}, {"in": "k"}, "data", "1.0"),
        stage_key("s", {"a": 1}, {"in": "j"}, "data", "1.0"),
        stage_key("s", {"a": 1}, {"in": "k"}, "other", "1.0"),
        stage_key("s", {"a": 1}, {"in": "k"}, "data", "1.1"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
