"""The INT8 recipe: calibration methods, activation symmetry, what stays in float, and the
TensorRT Q/DQ check that only the symmetric recipe passes (checked here on CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.onnx import export_onnx
from export.quantize import quantize_int8
from export.tensorrt import _check_int8_qdq
from pipeline.config import Int8Config
from pipeline.errors import ConfigError
from serving.predictor import OrtPredictor


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    path = tmp_path_factory.mktemp("q") / "model.onnx"
    export_onnx(net, torch.randn(2, 3, 8, 8), path, opset=18)
    return path


def _calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("activations", ["asymmetric", "symmetric"])
def test_every_recipe_gives_a_model_close_to_fp32(fp32, tmp_path, calibration, activations):
    dst = tmp_path / "q.onnx"
    recipe = Int8Config(calibration=calibration, activations=activations)
    quantize_int8(fp32, dst, _calibration(), recipe)
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    ref, got = OrtPredictor(fp32).run(x), OrtPredictor(dst).run(x)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.9
    model = onnx.load(str(dst))
    inits = {i.name: i for i in model.graph.initializer}
    activation_zero_points = {
        onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[2]].data_type)
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    }
    assert activation_zero_points == {np.dtype(np.int8 if activations == "symmetric" else np.uint8)}


def test_only_the_symmetric_recipe_passes_the_tensorrt_qdq_check(fp32, tmp_path):
    sym, asym = tmp_path / "sym.onnx", tmp_path / "asym.onnx"
    tensorrt = Int8Config(activations="symmetric", bias="float")
    quantize_int8(fp32, sym, _calibration(), tensorrt)
    quantize_int8(fp32, asym, _calibration(), Int8Config(activations="asymmetric"))
    _check_int8_qdq(sym)  # accepted: what tensorrt_int8 builds from
    with pytest.raises(ConfigError, match="symmetric INT8 only"):
        _check_int8_qdq(asym)
    with pytest.raises(ConfigError, match="int32 zero point"):  # int32 biases: refused too
        _check_int8_qdq(
            quantize_int8(
                fp32, tmp_path / "b.onnx", _calibration(), Int8Config(activations="symmetric")
            )
        )


def test_excluded_operators_stay_in_float(fp32, tmp_path):
    dst = tmp_path / "q.onnx"
    quantize_int8(fp32, dst, _calibration(), Int8Config(exclude_op_types=["Gemm"]))
    graph = onnx.load(str(dst)).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert gemm.input[1] in floats  # its weights stayed float
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert conv.input[1] not in floats  # the convolutions' did not
