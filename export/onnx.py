"""torch -> ONNX with a dynamic batch axis and a pinned opset, metadata for servers, and the
parity check against torch (used by the export stage on real test images).

The `torch.export`-based exporter is used with `dynamic_shapes`; the older `dynamic_axes` path
is the one users report breaking. Class names and preprocessing travel in the model's metadata
so a server needs nothing but the .onnx file.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from pipeline.errors import StageError
from pipeline.models.spec import ModelSpec
from serving.predictor import OrtPredictor

log = logging.getLogger("pipeline.export")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not actionable
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),  # positional: whatever the forward argument is called
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise StageError("torch.onnx.export returned no program; upgrade torch and onnxscript")
    program.save(str(path))


def add_metadata(
    path: Path, meta: dict[str, Any], *, doc_string: str = "", model_version: int = 1
) -> None:
    """Class names and preprocessing as metadata, a description and a version, then check."""
    model = onnx.load(str(path))
    model.doc_string = doc_string
    model.model_version = model_version
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def describe(spec: ModelSpec) -> str:
    """One sentence for the ONNX doc_string: what the model is and what it expects."""
    p = spec.preset
    return (
        f"{spec.arch} (width {spec.width}, {spec.stem} stem) image classifier over "
        f"{spec.num_classes} classes, trained with {spec.method}; input NCHW float32 RGB "
        f"{p.input_size}x{p.input_size}, (x/255 - mean)/std with mean {list(p.mean)} and std "
        f"{list(p.std)}; output logits. Class names and preprocessing are in metadata_props."
    )


def onnx_metadata(spec: ModelSpec, source_key: str) -> dict[str, Any]:
    """What a server reads from the ONNX file (keys and JSON values fixed: see serving/)."""
    return {
        "classes": list(spec.classes),
        **spec.preset.preprocessing.to_metadata(),
        "layout": "NCHW, RGB, float32, (x/255 - mean)/std",
        "arch": spec.arch,
        "source_key": source_key,
    }


def parity(run, model: torch.nn.Module, images: torch.Tensor, chunk: int = 128) -> dict:
    """An exported model's logits (`run`: numpy batch -> numpy logits) against torch's."""
    diffs, scale, agree = [], 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk]
            ref = model(x).numpy()
            got = run(x.numpy())
            diffs.append(float(np.abs(ref - got).max()))
            scale = max(scale, float(np.abs(ref).max()))
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return {
        "max_abs_diff": max(diffs),
        "max_abs_logit": scale,  # the scale the difference is judged against (export.rtol)
        "top1_agreement": agree / len(images),
        "samples": len(images),
    }


def ort_parity(
    onnx_path: Path, model: torch.nn.Module, images: torch.Tensor, chunk: int = 128
) -> dict:
    return parity(OrtPredictor(onnx_path).run, model, images, chunk)
