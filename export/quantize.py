"""ONNX Runtime FP16 and static INT8 (QDQ, per-channel) models from the FP32 export.

INT8 follows onnxruntime's own recipe: `quant_pre_process` (shape inference and graph
optimisation, so batch norm is folded before quantisation) then `quantize_static` with
calibration batches drawn from the training split, never from test. The recipe is
`export.int8`: calibration method, per-channel weights (per-tensor weights lose accuracy on
depthwise and narrow convolutions), uint8 activations with zero points or symmetric int8 ones
and float biases (the only kinds TensorRT builds), weights in a 7-bit range where the CPU's
int8 kernels would saturate (`serving/cpu.py` says why), and operators or nodes kept in float.
The recipe as applied goes into the model's metadata (`quantization`), so a runtime can tell.

onnx and onnxruntime are imported inside the functions that use them: the configuration and
the stage table import this module (through `export.variants`), and `check` stays free of them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import serving.cpu


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


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, recipe=None) -> Path:
    """Static INT8 QDQ model of `src`. `recipe` has the fields of the `export.int8` config
    (calibration, percentile, per_channel, reduce_range, activations, bias, exclude_op_types,
    exclude_nodes); None, or a missing field, takes that config's defaults. Weights are always
    symmetric int8 (in [-64, 63] with reduce_range)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def opt(name: str, default):
        return getattr(recipe, name, default) if recipe is not None else default

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[opt("calibration", "minmax")]
    symmetric = opt("activations", "asymmetric") == "symmetric"
    reduce, why = resolve_reduce_range(opt("reduce_range", "auto"))
    exclude_types, exclude_nodes = opt("exclude_op_types", []), opt("exclude_nodes", [])
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre), load_external_data=False).graph
        op_types = sorted({n.op_type for n in graph.node} - set(exclude_types))
        quantize_static(
            str(pre),
            str(dst),
            _Batches(input_name, calibration, batch=32),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types if exclude_types else None,
            nodes_to_exclude=list(exclude_nodes) or None,
            per_channel=opt("per_channel", True),
            reduce_range=reduce,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": symmetric,
                "WeightSymmetric": True,
                "CalibPercentile": opt("percentile", 99.999),
                "QuantizeBias": opt("bias", "int32") == "int32",
            },
        )
    applied = {
        "format": "QDQ",
        "weights": "int8, symmetric, "
        + ("per channel" if opt("per_channel", True) else "per tensor"),
        "weight_bits": 7 if reduce else 8,
        "weight_bits_why": why,
        "activations": "int8, symmetric" if symmetric else "uint8, asymmetric",
        "calibration": opt("calibration", "minmax"),
        "bias": opt("bias", "int32"),
    }
    _add_metadata(dst, "quantization", applied)
    return dst


def resolve_reduce_range(setting: str | bool) -> tuple[bool, str]:
    """`export.int8.reduce_range` as a decision, with the reason: auto follows this CPU."""
    if setting == "auto":
        saturates, cpu = serving.cpu.int8_saturates()
        return saturates, f"auto; the exporting CPU: {cpu}"
    return bool(setting), f"export.int8.reduce_range={str(bool(setting)).lower()}"


def _add_metadata(path: Path, key: str, value: Any) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = next((p for p in model.metadata_props if p.key == key), None)
    if entry is None:
        entry = model.metadata_props.add()
        entry.key = key
    entry.value = json.dumps(value)
    onnx.save(model, str(path))


def quantization_of(path: Path) -> dict | None:
    """The recipe recorded in an INT8 model's metadata, or None (not made here, or float)."""
    import onnx

    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        if p.key == "quantization":
            try:
                return json.loads(p.value)
            except ValueError:
                return None
    return None


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations inside, float32 input and output so callers need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst
