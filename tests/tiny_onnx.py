"""A hand-built ONNX classifier (pool, flatten, linear) with the export stage's metadata, so
serving and export tests need no training and no torch; and a fake run folder around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.artifacts import Manifest, hash_files

CLASSES = ["cat", "dog", "ship", "truck"]
SIZE = 8


def tiny_onnx(path: Path, *, batch: int | str = "N", classes=CLASSES) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.1, -0.2, 0.3, 0.0], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "classes": json.dumps(classes),
        "input_size": str(SIZE),
        "resize": str(SIZE),
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def fake_run(tmp_path: Path, model: Path) -> Path:
    """A run folder whose export stage holds `model` as its `onnx` artefact."""
    export = tmp_path / "run" / "04_export"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    m = Manifest(stage="export", key="k", status="complete")
    m.extra = {"artefacts": {"onnx": "model.onnx"}}
    m.files = hash_files(export)
    m.write(export)
    return export.parent
