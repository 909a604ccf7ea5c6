"""One table of tensor data types and how each system names them: numpy, the inference
protocol (KServe v2 / Triton `datatype`; Triton's config writes `TYPE_<name>`), ONNX
(`TensorProto` element types), ONNX Runtime's type strings and TensorRT.

A type's `name` is numpy's, and also the attribute TensorRT and torch give it (`trt.float16`,
`torch.float16`); it is what an engine's JSON record writes. numpy has no bfloat16, so that row
has no numpy dtype. The rows agree with tritonclient's `np_to_triton_dtype` /
`triton_to_np_dtype` and onnx's `helper.tensor_dtype_to_np_dtype` (tests/serving/test_dtypes.py
checks it); the table is spelt out so that serving needs neither of them to import. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # numpy's name; TensorRT's and torch's attribute
    protocol: str  # the inference protocol's datatype; Triton's config says TYPE_<protocol>
    onnx: int  # ONNX TensorProto element type
    tensorrt: bool  # TensorRT has it (an engine's tensors are of these types)

    @property
    def numpy(self) -> np.dtype | None:
        """numpy's dtype; None for bfloat16, which numpy lacks."""
        return None if self.name == "bfloat16" else np.dtype(self.name)

    @property
    def ort(self) -> str:
        """ONNX Runtime's type string: `tensor(float)` for float32, as ONNX names its types."""
        return f"tensor({ONNX_NAMES.get(self.name, self.name)})"

    @property
    def triton(self) -> str:
        """Triton's model-config data type."""
        return f"TYPE_{self.protocol}"


# ONNX's own names where they are not numpy's.
ONNX_NAMES = {"float32": "float", "float64": "double"}

TABLE: tuple[DType, ...] = (
    DType("bool", "BOOL", 9, True),
    DType("uint8", "UINT8", 2, True),
    DType("uint16", "UINT16", 4, False),
    DType("uint32", "UINT32", 12, False),
    DType("uint64", "UINT64", 13, False),
    DType("int8", "INT8", 3, True),
    DType("int16", "INT16", 5, False),
    DType("int32", "INT32", 6, True),
    DType("int64", "INT64", 7, True),
    DType("float16", "FP16", 10, True),
    DType("float32", "FP32", 1, True),
    DType("float64", "FP64", 11, False),
    DType("bfloat16", "BF16", 16, True),
)

BY_NAME = {t.name: t for t in TABLE}
BY_ONNX = {t.onnx: t for t in TABLE}
BY_ORT = {t.ort: t for t in TABLE}

# The inference protocol's datatypes numpy can hold, and back.
PROTOCOL: dict[str, np.dtype] = {t.protocol: t.numpy for t in TABLE if t.numpy is not None}
PROTOCOL_NAMES: dict[np.dtype, str] = {v: k for k, v in PROTOCOL.items()}

# The types an engine's tensors can have, by name (`getattr(tensorrt, name)`).
TENSORRT_NAMES = tuple(t.name for t in TABLE if t.tensorrt)


def from_ort(type_string: str) -> np.dtype:
    """numpy's dtype for an ONNX Runtime type string; float32 where numpy has none."""
    t = BY_ORT.get(type_string)
    return t.numpy if t is not None and t.numpy is not None else np.dtype(np.float32)


def triton_of_onnx(elem_type: int) -> str | None:
    """Triton's config data type for an ONNX element type; None where Triton has none."""
    t = BY_ONNX.get(elem_type)
    return t.triton if t is not None else None


def triton_of_name(name: str | None) -> str | None:
    """Triton's config data type for a TensorRT tensor type as an engine record names it; None
    for one Triton lacks (fp8, int4)."""
    t = BY_NAME.get(str(name))
    return t.triton if t is not None and t.tensorrt else None


def tensorrt_name(trt, dtype) -> str:
    """A TensorRT DataType's name (numpy's: float32, float16, ...); TensorRT's own, lower
    case, for a type not in the table (fp8)."""
    for name in TENSORRT_NAMES:
        if getattr(trt, name, None) == dtype:
            return name
    return str(dtype).rsplit(".", 1)[-1].lower()
