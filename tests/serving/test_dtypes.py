"""The one dtype table agrees with onnx's, ONNX Runtime's and tritonclient's own mappings."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving import dtypes


@pytest.mark.parametrize("row", dtypes.TABLE, ids=lambda r: r.name)
def test_each_row_matches_onnx(row):
    assert np.dtype(helper.tensor_dtype_to_np_dtype(row.onnx)).name == row.name
    assert row.ort == f"tensor({TensorProto.DataType.Name(row.onnx).lower()})"


@pytest.mark.parametrize("row", dtypes.TABLE, ids=lambda r: r.name)
def test_each_row_matches_tritonclient(row):
    utils = pytest.importorskip("tritonclient.utils")
    np_type = np.dtype(utils.triton_to_np_dtype(row.protocol))
    assert np_type.name == row.name
    assert utils.np_to_triton_dtype(np_type) == row.protocol


def test_lookups():
    assert dtypes.from_ort("tensor(float)") == np.float32
    assert dtypes.from_ort("tensor(double)") == np.float64
    assert dtypes.from_ort("tensor(bfloat16)") == np.float32  # numpy has none
    assert dtypes.PROTOCOL["FP16"] == np.float16 and "BF16" not in dtypes.PROTOCOL
    assert dtypes.PROTOCOL_NAMES[np.dtype(np.bool_)] == "BOOL"
    assert dtypes.triton_of_onnx(TensorProto.FLOAT) == "TYPE_FP32"
    assert dtypes.triton_of_onnx(TensorProto.STRING) is None
    assert dtypes.triton_of_name("bfloat16") == "TYPE_BF16"
    assert dtypes.triton_of_name("float64") is None  # not a TensorRT type
    assert dtypes.triton_of_name("fp8") is None
    assert dtypes.TENSORRT_NAMES == (
        "bool",
        "uint8",
        "int8",
        "int32",
        "int64",
        "float16",
        "float32",
        "bfloat16",
    )
