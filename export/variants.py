"""The registry of export variants: models made from the FP32 ONNX export, by the names
`export.formats` takes. Each entry names its file and its builder (imported when used)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Variant:
    name: str
    filename: str
    build: Callable[..., Path]  # (fp32, dst, calibration, export config) -> the file made
    backend: str  # how validation describes the runtime


def _int8(src: Path, dst: Path, calibration: Callable[[], np.ndarray], cfg) -> Path:
    from export.quantize import quantize_int8

    return quantize_int8(src, dst, calibration(), cfg.int8 if cfg is not None else None)


def _fp16(src: Path, dst: Path, calibration: Callable[[], np.ndarray], cfg) -> Path:
    from export.quantize import convert_fp16

    return convert_fp16(src, dst)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("onnx_int8", "model.int8.onnx", _int8, "onnxruntime CPU int8 (QDQ)"),
        Variant("onnx_fp16", "model.fp16.onnx", _fp16, "onnxruntime CPU fp16"),
    )
}
