"""The registry of export variants: models made from the FP32 ONNX export, by the names
`export.formats` takes. Each entry names its file and its builder (the TensorRT one imported when used).

The `tensorrt_*` variants are engines built on the machine that runs the export: on one
without a CUDA GPU or TensorRT their builder raises GpuUnavailable and the export stage
records them as skipped, with the reason (unless `export.require_gpu`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.quantize import convert_fp16, quantize_int8
from serving.predictor import require_tensorrt


@dataclass(frozen=True)
class Variant:
    name: str
    filename: str
    build: Callable[..., Path]  # (fp32, dst, calibration, export config) -> the file made
    backend: str  # how validation describes the runtime
    gpu: bool = False  # needs a CUDA GPU and TensorRT to build


def _int8(src: Path, dst: Path, calibration: Callable[[], np.ndarray], cfg) -> Path:
    return quantize_int8(src, dst, calibration(), cfg.int8 if cfg is not None else None)


def _fp16(src: Path, dst: Path, calibration: Callable[[], np.ndarray], cfg) -> Path:
    return convert_fp16(src, dst)


def _engine(precision: str) -> Callable[..., Path]:
    """A TensorRT engine in `precision`, from the ONNX graph of that precision (strongly typed
    networks take their precision from the graph): the FP32 export, its FP16 conversion, or a
    symmetric INT8 Q/DQ model with float biases (the INT8 recipe otherwise as configured)."""

    def build(src: Path, dst: Path, calibration: Callable[[], np.ndarray], cfg) -> Path:
        from export.tensorrt import Profile, build_engine  # loads onnx: keeps it out of `check`

        require_tensorrt()  # before any file is made
        graph = src
        if precision == "fp16":
            graph = convert_fp16(src, dst.with_name("model.fp16.tensorrt.onnx"))
        elif precision == "int8":
            # GPU int8 accumulates in int32: the CPU's 7-bit weight range would only cost precision.
            recipe = cfg.int8.model_copy(
                update={"activations": "symmetric", "bias": "float", "reduce_range": False}
            )
            graph = quantize_int8(
                src, dst.with_name("model.int8.tensorrt.onnx"), calibration(), recipe
            )
        e = cfg.engine
        build_engine(
            graph,
            dst,
            precision=precision,
            profile=Profile(e.min_batch, e.opt_batch, e.max_batch),
            timing_cache=dst.with_name("timing.cache"),
            workspace_gib=e.workspace_gib,
        )
        return dst

    return build


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("onnx_int8", "model.int8.onnx", _int8, "onnxruntime CPU int8 (QDQ)"),
        Variant("onnx_fp16", "model.fp16.onnx", _fp16, "onnxruntime CPU fp16"),
        *(
            Variant(f"tensorrt_{p}", f"model.{p}.engine", _engine(p), f"TensorRT {p}", gpu=True)
            for p in ("fp32", "fp16", "int8")
        ),
    )
}
