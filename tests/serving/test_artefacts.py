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
