"""Finding a run's deployable ONNX file from a run folder, its export folder or a file."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from serving.artefacts import resolve_onnx
from tests.tiny_onnx import fake_run


def test_resolve_onnx_from_run_export_folder_and_file(tmp_path, tiny_model):
    run = fake_run(tmp_path, tiny_model)
    assert resolve_onnx(run) == run / "04_export" / "model.onnx"
    assert resolve_onnx(run / "04_export") == run / "04_export" / "model.onnx"
    assert resolve_onnx(tiny_model) == tiny_model
    with pytest.raises(ConfigError, match="has no 'onnx_int8' artefact.*it has: onnx"):
        resolve_onnx(run, "onnx_int8")
    with pytest.raises(ConfigError, match="no finished export"):
        resolve_onnx(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_onnx(tmp_path / "nope")


def test_resolve_model_finds_the_runs_engine_and_checks_its_hashes(tmp_path, tiny_model):
    from pipeline.errors import ArtefactError
    from serving.artefacts import resolve_model

    run = fake_run(tmp_path, tiny_model, engine=True)
    engine = run / "04_export" / "model.fp16.engine"
    assert resolve_model(run, "tensorrt_fp16") == engine
    assert resolve_model(engine) == engine
    assert resolve_model(run) == run / "04_export" / "model.onnx"
    with pytest.raises(ConfigError, match="'tensorrt_fp16' is model.fp16.engine.*ONNX artefact"):
        resolve_onnx(run, "tensorrt_fp16")  # triton/tensorrt's ONNX-only lookups
    with pytest.raises(ConfigError, match="not an .onnx file or a TensorRT .engine"):
        resolve_model(run / "04_export" / "manifest.json")
    record = engine.with_suffix(".json")
    record.write_text(record.read_text().replace("H100", "A100"))
    with pytest.raises(ArtefactError, match="model.fp16.json does not match its manifest"):
        resolve_model(run, "tensorrt_fp16")  # the record is checked with the engine


def test_an_engine_outside_a_run_is_checked_against_its_record(tmp_path):
    from pipeline.errors import ArtefactError
    from serving.artefacts import resolve_model
    from tests.tiny_onnx import fake_engine

    engine = fake_engine(
        tmp_path / "model.fp16.engine"
    )  # as `python -m pipeline tensorrt` leaves it
    assert resolve_model(engine) == engine
    engine.write_bytes(b"changed since it was built")
    with pytest.raises(ArtefactError, match="does not match its record model.fp16.json"):
        resolve_model(engine)
    (tmp_path / "model.fp16.json").write_text("{ truncated")
    with pytest.raises(ArtefactError, match="is not a JSON object"):
        resolve_model(engine)


def test_a_format_the_export_skipped_says_why(tmp_path, tiny_model):
    from pipeline.artifacts import Manifest
    from serving.artefacts import resolve_model

    run = fake_run(tmp_path, tiny_model)
    m = Manifest.load(run / "04_export")
    m.metrics = {"skipped": {"tensorrt_fp16": "TensorRT needs a CUDA GPU and none is visible"}}
    m.write(run / "04_export")
    with pytest.raises(ConfigError, match="the export skipped it: TensorRT needs a CUDA GPU"):
        resolve_model(run, "tensorrt_fp16")
