"""Builders: the Triton model repository (validated with Triton's own schema) and TensorRT's
guards and engine.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ConfigError
from tests.tiny_onnx import CLASSES, SIZE, fake_run, tiny_onnx

# ---------------------------------------------------------------- Triton

needs_triton = pytest.mark.skipif(
    find_spec("tritonclient") is None or find_spec("grpc") is None,
    reason="the serve extra (tritonclient[grpc]) is not installed",
)


@needs_triton
def test_triton_repository_round_trips_through_the_schema(tmp_path, tiny_model):
    from export.triton import read_config, write_repository

    d = write_repository(
        tiny_model, tmp_path / "repo", name="tiny", kind="gpu", tensorrt="fp16", instances=2
    )
    assert (d / "1" / "model.onnx").read_bytes() == tiny_model.read_bytes()
    assert (d / "labels.txt").read_text().split() == CLASSES
    cfg = read_config(d)
    assert cfg.name == "tiny" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64 and list(cfg.dynamic_batching.preferred_batch_size) == [
        8,
        16,
        32,
        64,
    ]
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, SIZE, SIZE])]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [
        ("logits", [4], "labels.txt")
    ]
    assert cfg.instance_group[0].count == 2
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert json.loads(cfg.parameters["std"].string_value) == [0.25, 0.25, 0.25]
    assert not (tmp_path / "repo" / ".tiny.partial").exists()


@needs_triton
def test_triton_fixed_batch_model_and_refusals(tmp_path):
    from export.triton import read_config, write_repository

    fixed = tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    d = write_repository(fixed, tmp_path / "repo", kind="cpu")
    cfg = read_config(d)
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, SIZE, SIZE]
    assert not cfg.HasField("dynamic_batching")
    with pytest.raises(ConfigError, match="--overwrite"):
        write_repository(fixed, tmp_path / "repo", kind="cpu")
    with pytest.raises(ConfigError, match="--kind gpu"):
        write_repository(fixed, tmp_path / "r2", kind="cpu", tensorrt="fp16")
    with pytest.raises(ConfigError, match="plain folder name"):
        write_repository(fixed, tmp_path / "r3", name="../x")


@needs_triton
def test_triton_and_tensorrt_cli(tmp_path, tiny_model, monkeypatch):
    import torch

    from pipeline.__main__ import main

    run = fake_run(tmp_path, tiny_model)
    out = tmp_path / "repo"
    assert main(["triton", str(run), "--out", str(out), "--kind", "cpu"]) == 0
    assert (out / "classifier" / "config.pbtxt").is_file()
    assert main(["triton", str(run), "--out", str(out)]) == 2  # exists: refused, exit 2
    if not torch.cuda.is_available():
        assert main(["tensorrt", str(run)]) == 7  # no GPU: a clear refusal, nothing written
        assert not (run / "tensorrt").exists()


# ---------------------------------------------------------------- TensorRT


def test_tensorrt_without_gpu_says_what_is_missing():
    import torch

    from pipeline.errors import GpuUnavailable
    from serving.predictor import require_tensorrt

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; the refusal path is for machines without one")
    with pytest.raises(GpuUnavailable, match="needs a CUDA GPU"):
        require_tensorrt()


def test_int8_engine_needs_symmetric_qdq(tmp_path):
    from export.tensorrt import _check_int8_qdq
    from pipeline.errors import PipelineError

    def qdq(zero_point: np.ndarray) -> Path:
        scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
        zp = numpy_helper.from_array(zero_point, "zp")
        g = helper.make_graph(
            [
                helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"]),
            ],
            "qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            [scale, zp],
        )
        p = tmp_path / f"q{zero_point.dtype}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
        return p

    with pytest.raises(PipelineError, match="symmetric INT8 only"):
        _check_int8_qdq(qdq(np.array(128, np.uint8)))
    _check_int8_qdq(qdq(np.array(0, np.int8)))  # accepted
    with pytest.raises(PipelineError, match="no Q/DQ nodes"):
        _check_int8_qdq(tiny_onnx(tmp_path / "plain.onnx"))


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path, tiny_model):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from export.tensorrt import Profile, build_engine
    from serving.bench import benchmark_engine
    from serving.predictor import OrtPredictor

    engine, cache = tmp_path / "m.engine", tmp_path / "timing.cache"
    record = build_engine(
        tiny_model, engine, precision="fp32", profile=Profile(1, 4, 8), timing_cache=cache
    )
    assert record["profile"] == {"min": 1, "opt": 4, "max": 8} and cache.stat().st_size > 0
    assert json.loads(engine.with_suffix(".json").read_text())["tensorrt"] == record["tensorrt"]
    x = np.random.default_rng(1).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    res = benchmark_engine(
        engine,
        (3, SIZE, SIZE),
        [1, 8],
        warmup=2,
        iters=5,
        reference=x,
        reference_logits=OrtPredictor(tiny_model).run(x),
    )
    assert res["parity"]["top1_agreement"] == 1.0 and res["parity"]["max_abs_diff"] < 1e-3
    assert res["batch_8"]["images_per_s"] > 0


def test_engine_precision_follows_the_graph_checked_before_any_gpu(tmp_path, tiny_model):
    from export.quantize import convert_fp16
    from export.tensorrt import Profile, build_engine, graph_precision

    assert graph_precision(tiny_model) == "fp32"
    fp16 = convert_fp16(tiny_model, tmp_path / "m.fp16.onnx")
    assert graph_precision(fp16) == "fp16"
    with pytest.raises(
        ConfigError, match="fp32 graph; a strongly typed fp16 engine needs the FP16"
    ):
        build_engine(tiny_model, tmp_path / "x.engine", precision="fp16")
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        Profile(1, 64, 32)


def test_an_engine_built_elsewhere_is_refused_naming_both(tmp_path):
    from pipeline.errors import ArtefactError
    from serving.engine_record import check_engine_record

    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"engine")
    here = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    engine.with_suffix(".json").write_text(
        json.dumps({"tensorrt": "11.4.0", "gpu": "NVIDIA A10", "compute_capability": "8.6"})
    )
    with pytest.raises(
        ArtefactError, match=r"TensorRT 11\.4\.0 for NVIDIA A10.*TensorRT 11\.4\.0 and NVIDIA H100"
    ):
        check_engine_record(engine, "11.4.0", here)
    engine.with_suffix(".json").write_text(json.dumps({"tensorrt": "11.4.0", **here}))
    check_engine_record(engine, "11.4.0", here)  # built here: accepted
    with pytest.raises(ArtefactError, match="TensorRT 11.4.0 .* TensorRT 10.9"):
        check_engine_record(engine, "10.9", here)


@needs_triton
def test_triton_with_preprocessing_takes_pixels_and_matches_the_server_path(tmp_path, tiny_model):
    from PIL import Image

    from export.triton import read_config, write_repository
    from serving.predictor import OrtPredictor

    d = write_repository(
        tiny_model,
        tmp_path / "repo",
        name="tiny",
        kind="gpu",
        tensorrt="fp16",
        preprocessing=True,
        max_queue_delay_us=250,
    )
    cfg = read_config(d)  # Triton's own schema
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
        ("pixels", [SIZE, SIZE, 3], 2)  # TYPE_UINT8
    ]
    assert [o.name for o in cfg.output] == ["logits", "probabilities"]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    warm = cfg.model_warmup[0]
    assert warm.batch_size == 1 and warm.inputs["pixels"].zero_data
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.parameters["trt_engine_cache_enable"] == "true"
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    served = OrtPredictor(d / "1" / "model.onnx")
    logits, probs = served.session.run(None, {"pixels": pixels})
    plain = OrtPredictor(tiny_model)
    ref = plain.run(plain.preprocess([np.asarray(Image.fromarray(p)) for p in pixels]))
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert not (tmp_path / "repo" / ".tiny.partial").exists()


# ---------------------------------------------------------------- Triton: TensorRT engines


@needs_triton
def test_triton_packages_an_engine_as_a_tensorrt_plan(tmp_path):
    from export.triton import read_config, write_repository
    from tests.tiny_onnx import ENGINE_TENSORRT, fake_engine

    engine = fake_engine(tmp_path / "model.fp16.engine")
    d = write_repository(engine, tmp_path / "repo", name="tiny_trt", kind="gpu", instances=2)
    assert (d / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert not (d / "1" / "model.onnx").exists()
    assert json.loads((d / "engine.json").read_text())["tensorrt"] == ENGINE_TENSORRT
    assert (d / "labels.txt").read_text().split() == CLASSES
    cfg = read_config(d)  # Triton's own schema
    assert cfg.platform == "tensorrt_plan" and cfg.name == "tiny_trt"
    assert cfg.max_batch_size == 16  # the engine profile's max batch
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
        ("input", [3, SIZE, SIZE], 11)  # TYPE_FP32
    ]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [
        ("logits", [len(CLASSES)], "labels.txt")
    ]
    group = cfg.instance_group[0]
    assert group.count == 2 and group.kind == 1  # KIND_GPU
    warm = cfg.model_warmup[0]
    assert warm.batch_size == 1 and warm.inputs["input"].zero_data
    assert list(warm.inputs["input"].dims) == [3, SIZE, SIZE]
    assert cfg.parameters["engine_tensorrt"].string_value == ENGINE_TENSORRT
    assert cfg.parameters["engine_gpu"].string_value.startswith("NVIDIA H100")
    assert json.loads(cfg.parameters["mean"].string_value) == [0.5, 0.5, 0.5]
    assert not cfg.HasField("optimization")  # no ONNX Runtime accelerator on a plan
    # a smaller max batch than the profile's is allowed
    d = write_repository(engine, tmp_path / "repo", name="small", max_batch_size=8, kind="gpu")
    assert read_config(d).max_batch_size == 8


@needs_triton
def test_triton_engine_refusals_name_the_fix(tmp_path, tiny_model):
    from export.triton import write_repository
    from pipeline.errors import ArtefactError
    from tests.tiny_onnx import fake_engine

    engine = fake_engine(tmp_path / "model.fp16.engine")
    repo = tmp_path / "repo"
    with pytest.raises(ConfigError, match="GPU instances only"):
        write_repository(engine, repo, kind="cpu")
    with pytest.raises(ConfigError, match="already a TensorRT engine"):
        write_repository(engine, repo, kind="gpu", tensorrt="fp16")
    with pytest.raises(ConfigError, match="edits the ONNX graph"):
        write_repository(engine, repo, kind="gpu", preprocessing=True)
    with pytest.raises(ConfigError, match="over model.fp16.engine's profile max batch 16"):
        write_repository(engine, repo, kind="gpu", max_batch_size=32)
    starts_at_4 = fake_engine(tmp_path / "b.engine", profile={"min": 4, "opt": 8, "max": 16})
    with pytest.raises(ConfigError, match="min batch of 1"):
        write_repository(starts_at_4, repo, kind="gpu")
    old = fake_engine(tmp_path / "old.engine", inputs=None, outputs=None)
    with pytest.raises(ArtefactError, match="holds no tensor names.*rebuild"):
        write_repository(old, repo, kind="gpu")
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"x")
    with pytest.raises(ArtefactError, match="no record bare.json"):
        write_repository(bare, repo, kind="gpu")
    assert not repo.exists() or not any(repo.iterdir())  # nothing half-written


@needs_triton
def test_triton_cli_packages_the_runs_engine_and_checks_its_hash(tmp_path, tiny_model):
    from export.triton import read_config
    from pipeline.__main__ import main

    run = fake_run(tmp_path, tiny_model, engine=True)
    out = tmp_path / "repo"
    args = ["triton", str(run), "--artefact", "tensorrt_fp16", "--out", str(out)]
    assert main([*args, "--name", "trt"]) == 0
    assert read_config(out / "trt").platform == "tensorrt_plan"
    assert main([*args, "--name", "cpu", "--kind", "cpu"]) == 2  # an engine runs on GPUs only
    engine = run / "04_export" / "model.fp16.engine"
    assert main(["triton", str(engine), "--out", str(out), "--name", "direct"]) == 0
    engine.write_bytes(b"tampered")
    assert main([*args, "--name", "again"]) == 8  # not what the export stage made
    assert not (out / "again").exists()


def test_engine_record_names_tensor_types_as_numpy_does():
    from types import SimpleNamespace

    from export.tensorrt import tensor_records

    trt = SimpleNamespace(float32="DataType.FLOAT", float16="DataType.HALF")
    tensors = [
        SimpleNamespace(name="input", dtype="DataType.HALF", shape=(-1, 3, SIZE, SIZE)),
        SimpleNamespace(name="logits", dtype="DataType.FP8", shape=(-1, 4)),
    ]
    assert [t.to_dict() for t in tensor_records(trt, tensors)] == [
        {"name": "input", "dtype": "float16", "shape": [-1, 3, SIZE, SIZE]},
        {"name": "logits", "dtype": "fp8", "shape": [-1, 4]},  # Triton has no type: refused there
    ]
