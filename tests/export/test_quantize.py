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
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
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


def _weight_codes(path) -> np.ndarray:
    """Every int8 weight code of the quantized convolutions and the linear layer."""
    model = onnx.load(str(path))
    int8 = [
        onnx.numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1
    ]
    return np.concatenate([w.ravel().astype(np.int32) for w in int8])


def test_reduce_range_keeps_weights_in_seven_bits_and_the_recipe_is_recorded(fp32, tmp_path):
    from export.quantize import quantization_of

    full, reduced = tmp_path / "full.onnx", tmp_path / "reduced.onnx"
    quantize_int8(fp32, full, _calibration(), Int8Config(reduce_range=False))
    quantize_int8(fp32, reduced, _calibration(), Int8Config(reduce_range=True))
    assert np.abs(_weight_codes(full)).max() > 64  # per-channel scales reach +-127
    assert np.abs(_weight_codes(reduced)).max() <= 64
    assert quantization_of(full)["weight_bits"] == 8
    q = quantization_of(reduced)
    assert q["weight_bits"] == 7 and q["weight_bits_why"] == "export.int8.reduce_range=true"
    assert q["activations"] == "uint8, asymmetric" and q["weights"].endswith("per channel")
    assert OrtPredictor(reduced).metadata["quantization"] == q  # a runtime reads it back
    assert quantization_of(fp32) is None


@pytest.mark.parametrize("saturates", [True, False])
def test_auto_reduce_range_follows_the_exporting_cpu(fp32, tmp_path, monkeypatch, saturates):
    import serving.cpu
    from export.quantize import quantization_of

    monkeypatch.setattr(serving.cpu, "int8_saturates", lambda: (saturates, "a test CPU"))
    dst = tmp_path / "auto.onnx"
    quantize_int8(fp32, dst, _calibration(), Int8Config())  # reduce_range defaults to auto
    q = quantization_of(dst)
    assert q["weight_bits"] == (7 if saturates else 8)
    assert q["weight_bits_why"] == "auto; the exporting CPU: a test CPU"
    assert (np.abs(_weight_codes(dst)).max() <= 64) == saturates


def test_a_runtime_warns_of_eight_bit_weights_on_a_saturating_cpu(fp32, tmp_path, monkeypatch):
    import serving.cpu

    full, reduced = tmp_path / "full.onnx", tmp_path / "reduced.onnx"
    quantize_int8(fp32, full, _calibration(), Int8Config(reduce_range=False))
    quantize_int8(fp32, reduced, _calibration(), Int8Config(reduce_range=True))
    monkeypatch.setattr(serving.cpu, "int8_saturates", lambda: (True, "x86 CPU without VNNI"))
    (warning,) = OrtPredictor(full).warnings
    assert "x86 CPU without VNNI" in warning and "export.int8.reduce_range=true" in warning
    assert OrtPredictor(reduced).warnings == []  # 7-bit weights do not saturate
    assert OrtPredictor(fp32).warnings == []  # nor does a float model
    monkeypatch.setattr(serving.cpu, "int8_saturates", lambda: (False, "x86 CPU with VNNI"))
    assert OrtPredictor(full).warnings == []


def test_the_model_card_says_where_each_int8_model_keeps_its_accuracy():
    from export.model_card import _int8_note

    note = _int8_note(
        {
            "onnx_int8": {"weight_bits": 8, "weight_bits_why": "auto; the exporting CPU: VNNI"},
            "other": {"weight_bits": 7, "weight_bits_why": "export.int8.reduce_range=true"},
        }
    )
    assert "`onnx_int8` uses full 8-bit weights" in note and "reduce_range=true`" in note
    assert "`other` keeps its weights in a 7-bit range" in note
    assert _int8_note({}) == ""


def test_reduce_range_setting_is_auto_true_or_false():
    from pydantic import ValidationError

    from pipeline.config import load_config

    assert Int8Config().reduce_range == "auto"
    cfg = load_config(None, ["export.int8.reduce_range=true"])
    assert cfg.export.int8.reduce_range is True
    with pytest.raises(ValidationError):
        Int8Config(reduce_range="sometimes")
