"""The engine record: one typed writer and reader; what the reader refuses, and how."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import ArtefactError
from serving.engine_record import (
    EngineRecord,
    Profile,
    TensorRecord,
    engine_record_path,
    read_engine_record,
)
from tests.tiny_onnx import ENGINE_GPU, ENGINE_TENSORRT, fake_engine


def test_a_record_reads_back_as_written(tmp_path):
    engine = fake_engine(tmp_path / "m.fp16.engine")
    record = read_engine_record(engine)
    assert record.built_for == (ENGINE_TENSORRT, ENGINE_GPU["gpu"], "9.0")
    assert record.profile == Profile(1, 8, 16)
    assert record.inputs[0] == TensorRecord("input", "float32", (-1, 3, 8, 8))
    assert record.to_dict() == json.loads(engine_record_path(engine).read_text())
    again = tmp_path / "again.engine"
    assert record.write(again) == tmp_path / "again.json"
    assert read_engine_record(again) == record
    assert read_engine_record(tmp_path / "none.engine") is None  # no record: left to others


def test_an_older_record_reads_with_its_later_fields_left_out(tmp_path):
    engine = fake_engine(tmp_path / "m.engine", metadata=None, inputs=None, engine_sha256=None)
    record = read_engine_record(engine)
    assert record.metadata is None and record.inputs is None and record.engine_sha256 is None
    assert "metadata" not in record.to_dict()
    with pytest.raises(ArtefactError, match=r"m\.json holds no tensor names.*older version"):
        record.require("inputs", "outputs", what="tensor names", engine=engine)
    record.require("profile", what="a batch profile", engine=engine)  # present: accepted


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"tensorrt": None}, "lacks tensorrt"),
        ({"gpu": None, "compute_capability": None}, "lacks gpu, compute_capability"),
        ({"tensorrt": ""}, "invalid tensorrt"),
        ({"profile": {"min": 1, "max": 4}}, "invalid profile"),
        ({"profile": {"min": 8, "opt": 4, "max": 2}}, "invalid profile"),
        ({"inputs": [{"name": "input", "shape": [1]}]}, "invalid inputs"),
        ({"outputs": "logits"}, "invalid outputs"),
        ({"engine_sha256": "abc"}, "invalid engine_sha256"),
        ({"build_s": "fast"}, "invalid build_s"),
        ({"metadata": ["classes"]}, "invalid metadata"),
    ],
)
def test_a_record_missing_or_with_an_invalid_key_is_refused_naming_the_fix(
    tmp_path, change, problem
):
    engine = fake_engine(tmp_path / "m.engine", **change)
    with pytest.raises(ArtefactError) as err:
        read_engine_record(engine)
    text = str(err.value)
    assert str(tmp_path / "m.json") in text and "the record of m.engine" in text
    assert problem in text
    assert "older version or edited; rebuild the engine" in text


def test_a_record_that_is_not_a_json_object_is_refused(tmp_path):
    engine = fake_engine(tmp_path / "m.engine")
    engine_record_path(engine).write_text("[1, 2]")
    with pytest.raises(ArtefactError, match="is not a JSON object.*Rebuild the engine"):
        read_engine_record(engine)


def test_the_record_keeps_only_what_was_set():
    rec = EngineRecord("11.4.0", "NVIDIA H100", "9.0", profile=Profile(1, 2, 4))
    assert rec.to_dict() == {
        "tensorrt": "11.4.0",
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "profile": {"min": 1, "opt": 2, "max": 4},
    }
