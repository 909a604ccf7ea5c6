"""A hand-built ONNX classifier (pool, flatten, linear) with the export stage's metadata, so
serving and export tests need no training and no torch; a fake run folder around it; and a
fake TensorRT engine (bytes no TensorRT would load) with the JSON record the builder writes,
for everything around an engine that runs without a GPU."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


ENGINE_GPU = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
ENGINE_TENSORRT = "11.4.0"


def fake_engine(path: Path, data: bytes = b"not a real engine", **record: Any) -> Path:
    """`path` with some bytes and, beside it, the record `export.tensorrt.build_engine` writes
    for a tiny_onnx model (fields in `record` replace the defaults; None removes one)."""
    path.write_bytes(data)
    rec: dict[str, Any] = {
        "tensorrt": ENGINE_TENSORRT,
        **ENGINE_GPU,
        "precision": "fp16",
        "profile": {"min": 1, "opt": 8, "max": 16},
        "onnx": "model.fp16.tensorrt.onnx",
        "build_s": 1.5,
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(CLASSES)]}],
        "metadata": {
            "classes": json.dumps(CLASSES),
            "input_size": str(SIZE),
            "resize": str(SIZE),
            "mean": "[0.5, 0.5, 0.5]",
            "std": "[0.25, 0.25, 0.25]",
        },
        "engine_sha256": hashlib.sha256(data).hexdigest(),
    }
    for k, v in record.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    path.with_suffix(".json").write_text(json.dumps(rec, indent=2))
    return path


def fake_run(tmp_path: Path, model: Path, *, engine: bool = False) -> Path:
    """A run folder whose export stage holds `model` as its `onnx` artefact and, with
    `engine`, a fake TensorRT engine as its `tensorrt_fp16` artefact."""
    export = tmp_path / "run" / "04_export"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    artefacts = {"onnx": "model.onnx"}
    if engine:
        fake_engine(export / "model.fp16.engine")
        artefacts["tensorrt_fp16"] = "model.fp16.engine"
    m = Manifest(stage="export", key="k", status="complete")
    m.extra = {"artefacts": artefacts}
    m.files = hash_files(export)
    m.write(export)
    return export.parent
