"""The export stage: torch -> ONNX with a dynamic batch axis and a pinned opset, checked and
compared with the torch model on real test images.

The `torch.export`-based exporter is used with `dynamic_shapes`; the older `dynamic_axes` path
is the one users report breaking. Class names and preprocessing travel in the model's metadata
so a server needs nothing but the .onnx file.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts import Manifest
from pipeline.config import PipelineConfig
from pipeline.errors import ExportParityError, StageError
from pipeline.models.io import build_backbone, load_weights, read_spec

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
            dynamic_shapes={"x": {0: batch}},
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise StageError("torch.onnx.export returned no program; upgrade torch and onnxscript")
    program.save(str(path))


def add_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def onnx_metadata(spec: dict[str, Any], source_key: str) -> dict[str, Any]:
    p = spec["preset"]
    return {
        "classes": spec["classes"],
        "input_size": p["input_size"],
        "resize": p["resize"] or p["input_size"],
        "mean": p["mean"],
        "std": p["std"],
        "layout": "NCHW, RGB, float32, (x/255 - mean)/std",
        "arch": spec["arch"],
        "source_key": source_key,
    }


def ort_parity(
    onnx_path: Path, model: torch.nn.Module, images: torch.Tensor, chunk: int = 128
) -> dict:
    from serving.predictor import OrtPredictor

    pred = OrtPredictor(onnx_path)
    diffs, agree = [], 0
    with torch.inference_mode():
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk]
            ref = model(x).numpy()
            got = pred.run(x.numpy())
            diffs.append(float(np.abs(ref - got).max()))
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return {
        "max_abs_diff": max(diffs),
        "top1_agreement": agree / len(images),
        "samples": len(images),
    }


def run(cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx) -> Any:
    from pipeline.prune import test_batch
    from pipeline.runner import StageResult

    prune = inputs["prune"]
    spec = read_spec(prune.folder, "classifier")
    model = load_weights(build_backbone(spec), prune.folder, "classifier")
    images = test_batch(ctx, cfg.export.parity_samples)
    path = out_dir / "model.onnx"
    export_onnx(model, images[:2], path, cfg.export.opset)
    add_metadata(path, onnx_metadata(spec, prune.key))
    parity = ort_parity(path, model, images)
    e = cfg.export
    log.info(
        "onnx parity: max |diff| %.3g, top-1 agreement %.4f",
        parity["max_abs_diff"],
        parity["top1_agreement"],
    )
    if parity["max_abs_diff"] > e.atol or parity["top1_agreement"] < e.min_top1_agreement:
        raise ExportParityError(
            f"ONNX Runtime logits differ from torch: max |diff| {parity['max_abs_diff']:.3g} "
            f"(limit export.atol={e.atol}), top-1 agreement {parity['top1_agreement']:.4f} "
            f"(limit export.min_top1_agreement={e.min_top1_agreement}) on {parity['samples']} test images"
        )
    (out_dir / "classes.json").write_text(json.dumps(spec["classes"]))
    metrics = {"onnx": {"parity": parity, "opset": e.opset, "bytes": path.stat().st_size}}
    artefacts = {"onnx": "model.onnx"}
    for fmt in e.formats:
        made = make_variant(fmt, path, out_dir, ctx, e.calibration_samples)
        artefacts[fmt] = made.name
        # Reduced precision is judged on accuracy by the validate gates; this records how far it moved.
        metrics[fmt] = {"parity": ort_parity(made, model, images), "bytes": made.stat().st_size}
        log.info(
            "%s: top-1 agreement with torch %.4f", fmt, metrics[fmt]["parity"]["top1_agreement"]
        )
    return StageResult(metrics=metrics, extra={"artefacts": artefacts})


def calibration_batch(ctx, n: int) -> np.ndarray:
    """Train images spread over the whole split, with the deterministic evaluation transform."""
    from pipeline.data import Transformed, eval_transform

    train = ctx.data.train
    picks = np.linspace(0, len(train) - 1, num=min(n, len(train))).round().astype(int)
    view = Transformed(
        train.base, [train.indices[i] for i in picks], eval_transform(ctx.data.preset)
    )
    return view.stack().numpy().astype(np.float32)


def make_variant(fmt: str, fp32: Path, out_dir: Path, ctx, calibration_samples: int) -> Path:
    from export.quantize import convert_fp16, quantize_int8

    if fmt == "onnx_int8":
        return quantize_int8(
            fp32, out_dir / "model.int8.onnx", calibration_batch(ctx, calibration_samples)
        )
    if fmt == "onnx_fp16":
        return convert_fp16(fp32, out_dir / "model.fp16.onnx")
    raise StageError(f"unknown export format {fmt!r}")
