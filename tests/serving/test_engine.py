"""Serving TensorRT engines and ONNX Runtime's GPU providers: which back end a file gets, and
every refusal, on CPU (fake engine bytes with the builder's JSON record; TensorRT and the GPU
stood in for where a path needs them). The real GPU path is the `gpu`-marked test at the end.
"""

from __future__ import annotations

import json
import types
from importlib.util import find_spec

import numpy as np
import pytest

from pipeline.errors import ArtefactError, ConfigError, GpuUnavailable
from tests.tiny_onnx import CLASSES, ENGINE_GPU, ENGINE_TENSORRT, SIZE, fake_engine, fake_run

needs_http = pytest.mark.skipif(
    any(find_spec(m) is None for m in ("fastapi", "httpx", "python_multipart")),
    reason="the serve extra (FastAPI, python-multipart) or httpx is not installed",
)


def _no_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; this refusal is for machines without one")


@pytest.fixture
def never_serve(monkeypatch):
    """`serve` must fail before a port is bound."""
    import pipeline.__main__

    def refuse(*a, **k):
        raise AssertionError("the server started; the model should have been refused first")

    monkeypatch.setattr(pipeline.__main__, "serve", refuse)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 11.4.0 on an H100, as far as the checks before deserialization can tell."""
    import serving.predictor as p

    monkeypatch.setattr(p, "require_tensorrt", lambda: types.SimpleNamespace(__version__="11.4.0"))
    gpu = dict(ENGINE_GPU)
    monkeypatch.setattr(p, "_gpu_identity", lambda torch: gpu)
    return gpu


def test_serving_an_engine_without_tensorrt_or_gpu_says_what_to_install(
    tmp_path, tiny_model, capsys, never_serve
):
    from pipeline.__main__ import main

    _no_gpu()
    run = fake_run(tmp_path, tiny_model, engine=True)
    assert main(["serve", str(run), "--artefact", "tensorrt_fp16"]) == 7
    text = capsys.readouterr().err  # the command's own log
    assert "GpuUnavailable" in text and "needs a CUDA GPU" in text
    if find_spec("tensorrt") is None:  # both missing pieces are named, with where to get them
        assert "tensorrt package is not installed" in text
        assert "NVIDIA's package index" in text and "NGC container" in text


@needs_http
def test_create_app_raises_the_pipelines_own_error_for_an_engine(tmp_path):
    from serving.http import create_app

    _no_gpu()
    engine = fake_engine(tmp_path / "model.fp16.engine")
    with pytest.raises(GpuUnavailable, match="needs a CUDA GPU"):
        create_app(engine)


def test_an_engine_built_for_another_gpu_is_refused_before_it_loads(
    tmp_path, tiny_model, capsys, fake_tensorrt, never_serve
):
    from pipeline.__main__ import main

    run = fake_run(tmp_path, tiny_model, engine=True)
    fake_tensorrt.update(gpu="NVIDIA A10", compute_capability="8.6")  # this machine
    assert main(["serve", str(run), "--artefact", "tensorrt_fp16"]) == 8
    text = capsys.readouterr().err
    assert f"built with TensorRT {ENGINE_TENSORRT} for NVIDIA H100" in text
    assert "this machine has TensorRT 11.4.0 and NVIDIA A10 (8.6)" in text


def test_an_engine_for_another_tensorrt_version_is_refused(tmp_path, fake_tensorrt):
    from serving.predictor import TrtPredictor

    engine = fake_engine(tmp_path / "m.engine", tensorrt="10.9.0")
    with pytest.raises(ArtefactError, match=r"TensorRT 10\.9\.0 for .*TensorRT 11\.4\.0"):
        TrtPredictor(engine)


def test_an_engine_without_its_preprocessing_is_refused_for_serving(tmp_path, fake_tensorrt):
    from serving.predictor import TrtPredictor, load_predictor

    engine = fake_engine(tmp_path / "m.engine", metadata=None)  # an older record, ONNX gone
    with pytest.raises(ArtefactError, match="without the model's preprocessing.*Rebuild"):
        load_predictor(engine)  # refused before TensorRT deserializes anything
    with pytest.raises(ArtefactError, match="without the model's preprocessing"):
        TrtPredictor(engine, need_metadata=True)


def test_engine_metadata_from_the_record_or_the_onnx_beside_it(tmp_path, tiny_model):
    from serving.engine_record import engine_metadata, read_engine_record

    engine = fake_engine(tmp_path / "m.engine")
    meta = engine_metadata(engine, read_engine_record(engine))
    assert meta["classes"] == CLASSES and meta["input_size"] == SIZE and meta["std"] == [0.25] * 3
    older = fake_engine(tmp_path / "old.engine", metadata=None, onnx="model.onnx")
    (tmp_path / "model.onnx").write_bytes(tiny_model.read_bytes())
    assert engine_metadata(older, read_engine_record(older))["classes"] == CLASSES


def test_onnx_runtime_options_are_refused_for_an_engine(tmp_path):
    from serving.predictor import load_predictor

    engine = fake_engine(tmp_path / "m.engine")
    with pytest.raises(ConfigError, match="ONNX Runtime's.*TensorRT engine"):
        load_predictor(engine, providers=["CUDAExecutionProvider"])


@needs_http
def test_the_server_runs_an_engine_through_the_engine_back_end(tmp_path, tiny_model, monkeypatch):
    """The server picks the TensorRT back end by the file; here it is stood in for by ONNX
    Runtime on the same model, so everything around it (metadata, v1, v2) is exercised."""
    from fastapi.testclient import TestClient

    import serving.predictor as p
    from serving.http import create_app

    made = []

    class StandIn(p.OrtPredictor):
        platform = "tensorrt_plan"

        def __init__(self, path, *, need_metadata=False):
            made.append((path, need_metadata))
            super().__init__(tiny_model)

    monkeypatch.setattr(p, "TrtPredictor", StandIn)
    engine = fake_engine(tmp_path / "model.fp16.engine")
    c = TestClient(create_app(engine, model_name="tiny"))
    assert made == [(engine, True)]
    meta = c.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    info = c.get("/v1/model").json()
    assert info["file"] == engine.name and info["classes"] == CLASSES
    assert info["input"]["size"] == SIZE and info["input"]["std"] == [0.25] * 3
    # every request goes through the engine back end and its logits come back unchanged
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 3, SIZE, SIZE],
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    out = c.post("/v2/models/tiny/infer", content=json.dumps(body)).json()
    assert out["outputs"][0]["name"] == "logits" and out["outputs"][0]["shape"] == [2, 4]
    served = np.asarray(out["outputs"][0]["data"], np.float32).reshape(2, 4)
    np.testing.assert_allclose(served, p.OrtPredictor(tiny_model).run(x), rtol=1e-5, atol=1e-5)
    assert len(made) == 1  # the server loaded the engine once, then only ran it


# ---------------------------------------------------------------- ONNX Runtime GPU providers


def test_onnx_runtime_gpu_provider_missing_from_the_build(tiny_model):
    from serving.predictor import import_onnxruntime, ort_gpu_predictor

    if "CUDAExecutionProvider" in import_onnxruntime().get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(GpuUnavailable, match=r"has no CUDAExecutionProvider.*'\.\[gpu\]'"):
        ort_gpu_predictor(tiny_model, "CUDAExecutionProvider")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_onnx_runtime_falling_back_to_cpu_is_caught(tiny_model, monkeypatch):
    """onnxruntime-gpu without a usable GPU runs on the CPU without raising; that is refused."""
    from serving.predictor import import_onnxruntime, ort_gpu_predictor

    _no_gpu()
    ort = import_onnxruntime()
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(GpuUnavailable, match="could not start CUDAExecutionProvider.*fell back"):
        ort_gpu_predictor(tiny_model, "CUDAExecutionProvider")
    with pytest.raises(GpuUnavailable, match="could not start TensorrtExecutionProvider.*NGC"):
        ort_gpu_predictor(tiny_model, "TensorrtExecutionProvider", opt_batch=8, max_batch=64)


def test_tensorrt_provider_gets_one_batch_profile(tiny_model, tmp_path):
    from serving.predictor import _profile_shapes
    from tests.tiny_onnx import tiny_onnx

    assert _profile_shapes(tiny_model, 1, 8, 256) == {
        "trt_profile_min_shapes": f"input:1x3x{SIZE}x{SIZE}",
        "trt_profile_opt_shapes": f"input:8x3x{SIZE}x{SIZE}",
        "trt_profile_max_shapes": f"input:256x3x{SIZE}x{SIZE}",
    }
    assert _profile_shapes(tiny_onnx(tmp_path / "fixed.onnx", batch=1), 1, 8, 256) == {}


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_a_built_engine_is_served_packaged_and_split_into_profile_batches(tmp_path, tiny_model):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from export.tensorrt import Profile, build_engine
    from serving.artefacts import resolve_model
    from serving.predictor import OrtPredictor, TrtPredictor

    engine = tmp_path / "model.fp32.engine"
    record = build_engine(tiny_model, engine, precision="fp32", profile=Profile(1, 2, 4))
    assert record["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, SIZE, SIZE]}]
    assert record["outputs"][0]["name"] == "logits"
    assert json.loads(record["metadata"]["classes"]) == CLASSES
    assert resolve_model(engine) == engine  # its sha256 matches the record
    trt = TrtPredictor(engine, need_metadata=True)
    x = np.random.default_rng(2).standard_normal((10, 3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(trt.run(x), OrtPredictor(tiny_model).run(x), atol=1e-4)  # 4+4+2
    assert trt.classes == CLASSES and trt.input_shape == [None, 3, SIZE, SIZE]
    if find_spec("tritonclient") is not None:
        from export.triton import read_config, write_repository

        cfg = read_config(write_repository(engine, tmp_path / "repo", kind="gpu"))
        assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    if find_spec("fastapi") is not None and find_spec("httpx") is not None:
        from fastapi.testclient import TestClient

        from serving.http import create_app

        c = TestClient(create_app(engine, model_name="tiny"))
        assert c.get("/v2/models/tiny").json()["platform"] == "tensorrt_plan"
