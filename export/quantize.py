"""ONNX Runtime FP16 and static INT8 (QDQ, per-channel) models from the FP32 export.

INT8 follows onnxruntime's own recipe: `quant_pre_process` (shape inference and graph
optimisation, so batch norm is folded before quantisation) then `quantize_static` with
calibration batches drawn from the training split, never from test. Per-channel int8
weights and uint8 activations: per-tensor weights lose accuracy on depthwise and narrow
convolutions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a float32 NCHW array."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int) -> None:
        self._it = iter(
            [
                {input_name: np.ascontiguousarray(data[i : i + batch])}
                for i in range(0, len(data), batch)
            ]
        )

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # single pass is all MinMax calibration needs
        pass


def quantize_int8(
    src: Path, dst: Path, calibration: np.ndarray, *, per_channel: bool = True
) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Batches(input_name, calibration, batch=32),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations inside, float32 input and output so callers need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst
