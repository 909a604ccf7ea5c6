"""Serving: artefact lookup, the HTTP server, the Triton repository, TensorRT's guards and engine.

The model is a hand-built ONNX graph (pool, flatten, linear) with the export stage's metadata,
so these tests need no training and no torch.
"""

from __future__ import annotations

import io
import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ConfigError
from serving.artefacts import resolve_onnx

CLASSES = ["cat", "dog", "ship", "truck"]
SIZE = 8


def _tiny_onnx(path: Path, *, batch: int | str = "N", classes=CLASSES) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.1, -0.2, 0.3, 0.0], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "classes": json.dumps(classes),
        "input_size": str(SIZE),
        "resize": str(SIZE),
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return _tiny_onnx(tmp_path / "model.onnx")


def _noise_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _png(color, size=(12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- artefacts


def _fake_run(tmp_path: Path, model: Path) -> Path:
    export = tmp_path / "run" / "03_export"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    manifest = {"extra": {"artefacts": {"onnx": "model.onnx"}}}
    (export / "manifest.json").write_text(json.dumps(manifest))
    return export.parent


def test_resolve_onnx_from_run_export_folder_and_file(tmp_path, tiny_model):
    run = _fake_run(tmp_path, tiny_model)
    assert resolve_onnx(run) == run / "03_export" / "model.onnx"
    assert resolve_onnx(run / "03_export") == run / "03_export" / "model.onnx"
    assert resolve_onnx(tiny_model) == tiny_model
    with pytest.raises(ConfigError, match="has no 'onnx_int8' artefact.*it has: onnx"):
        resolve_onnx(run, "onnx_int8")
    with pytest.raises(ConfigError, match="no finished export"):
        resolve_onnx(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_onnx(tmp_path / "nope")


# ---------------------------------------------------------------- HTTP

needs_http = pytest.mark.skipif(
    any(find_spec(m) is None for m in ("fastapi", "httpx", "python_multipart")),
    reason="the serve extra (FastAPI, python-multipart) or httpx is not installed",
)


@pytest.fixture
def client(tiny_model):
    from fastapi.testclient import TestClient

    from serving.http import create_app

    return TestClient(create_app(tiny_model, max_images=3, max_bytes=200_000))


@needs_http
def test_health_and_model_metadata(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["num_classes"] == 4
    assert info["input"]["size"] == SIZE and info["input"]["std"] == [0.25, 0.25, 0.25]


@needs_http
def test_multipart_batch_matches_the_predictor(client, tiny_model):
    from PIL import Image

    from serving.predictor import OrtPredictor

    colors = [(250, 10, 10), (10, 10, 250)]
    files = [("file", (f"img{i}.png", _png(c), "image/png")) for i, c in enumerate(colors)]
    r = client.post("/v1/predict?top_k=3", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == ["img0.png", "img1.png"]
    ref = OrtPredictor(tiny_model)
    arrays = [np.asarray(Image.new("RGB", (12, 10), c)) for c in colors]
    logits = ref.run(ref.preprocess(arrays))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for p, want in zip(preds, probs, strict=True):
        top = p["top_k"]
        assert len(top) == 3
        assert [t["index"] for t in top] == list(np.argsort(-want)[:3])
        assert [t["label"] for t in top] == [CLASSES[t["index"]] for t in top]
        np.testing.assert_allclose([t["probability"] for t in top], np.sort(want)[::-1][:3], 1e-5)


@needs_http
def test_raw_body_and_top_k_capped_at_the_class_count(client):
    r = client.post(
        "/v1/predict?top_k=10", content=_png((0, 200, 0)), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text
    top = r.json()["predictions"][0]["top_k"]
    assert len(top) == 4 and sum(t["probability"] for t in top) == pytest.approx(1.0)


@needs_http
@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"files": [("file", ("a.png", b"not an image", "image/png"))]}, 400, "not an image"),
        ({"files": [("file", ("t.png", _noise_png()[:6000], "image/png"))]}, 400, "corrupt"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"json": {"image": "x"}}, 415, "not an image"),
        ({"files": [("file", (f"{i}.png", _png((i, i, i)), "image/png")) for i in range(4)]}, 413, "over 3"),
        ({"data": {"note": "hi"}, "files": []}, 415, "not an image"),
        ({"content": b"x" * 200_001, "headers": {"content-type": "image/png"}}, 413, "bytes"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx(client, kwargs, status, needle):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@needs_http
def test_bad_top_k_and_decompression_limit(tiny_model):
    from fastapi.testclient import TestClient

    from serving.http import create_app

    c = TestClient(create_app(tiny_model, max_pixels=100))
    png = {"content": _png((5, 5, 5)), "headers": {"content-type": "image/png"}}
    assert c.post("/v1/predict?top_k=0", **png).status_code == 422
    r = c.post("/v1/predict", **png)
    assert r.status_code == 400 and "12x10 is 120 pixels" in r.json()["detail"]
    assert c.get("/healthz").status_code == 200  # the worker survived all of it


@needs_http
def test_multipart_without_files_says_how_to_send(client):
    r = client.post("/v1/predict", files={"note": (None, "hello")})
    assert r.status_code == 400 and "-F file=@" in r.json()["detail"]


# ---------------------------------------------------------------- Triton

needs_triton = pytest.mark.skipif(
    find_spec("tritonclient") is None or find_spec("grpc") is None,
    reason="the serve extra (tritonclient[grpc]) is not installed",
)


@needs_triton
def test_triton_repository_round_trips_through_the_schema(tmp_path, tiny_model):
    from serving.triton import read_config, write_repository

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
    from serving.triton import read_config, write_repository

    fixed = _tiny_onnx(tmp_path / "fixed.onnx", batch=1)
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

    run = _fake_run(tmp_path, tiny_model)
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

    from serving.tensorrt import GpuUnavailable, require_tensorrt

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; the refusal path is for machines without one")
    with pytest.raises(GpuUnavailable, match="needs a CUDA GPU"):
        require_tensorrt()


def test_int8_engine_needs_symmetric_qdq(tmp_path):
    from pipeline.errors import PipelineError
    from serving.tensorrt import _check_int8_qdq

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
        _check_int8_qdq(_tiny_onnx(tmp_path / "plain.onnx"))


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path, tiny_model):
    from serving.predictor import OrtPredictor
    from serving.tensorrt import benchmark, build_engine

    engine = build_engine(tiny_model, tmp_path / "m.engine", precision="fp32", max_batch=8)
    x = np.random.default_rng(1).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    res = benchmark(
        engine, (3, SIZE, SIZE), [1, 8], warmup=2, iters=5,
        reference=x, reference_logits=OrtPredictor(tiny_model).run(x),
    )  # fmt: skip
    assert res["parity"]["top1_agreement"] == 1.0 and res["parity"]["max_abs_diff"] < 1e-3
    assert res["batch_8"]["images_per_s"] > 0


@needs_http
def test_http_benchmark_script_runs(tiny_model):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "benchmarks/serve_http.py", str(tiny_model), "--requests", "3"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("batch")]
    assert len(lines) == 2 and all("HTTP/in-process" in ln for ln in lines)
