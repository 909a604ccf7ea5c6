"""Serving: the HTTP server over ONNX Runtime, and its benchmark script.

The model is a hand-built ONNX graph (pool, flatten, linear) with the export stage's metadata,
so these tests need no training and no torch.
"""

from __future__ import annotations

import io
from importlib.util import find_spec

import numpy as np
import pytest

from tests.conftest import REPO
from tests.tiny_onnx import CLASSES, SIZE


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
        (
            {"files": [("file", (f"{i}.png", _png((i, i, i)), "image/png")) for i in range(4)]},
            413,
            "over 3",
        ),
        ({"data": {"note": "hi"}, "files": []}, 415, "not an image"),
        ({"content": b"x" * 200_001, "headers": {"content-type": "image/png"}}, 413, "bytes"),
    ],
)
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


@needs_http
def test_http_benchmark_script_runs(tiny_model):
    import subprocess
    import sys

    repo = REPO
    res = subprocess.run(
        [sys.executable, "benchmarks/serve_http.py", str(tiny_model), "--requests", "3"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("batch")]
    assert len(lines) == 2 and all("HTTP/in-process" in ln for ln in lines)


@needs_http
def test_docs_page_needs_no_network(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    page = r.text
    assert "/v1/predict" in page and "/openapi.json" in page
    # Nothing is fetched from elsewhere: no scripts at all, no absolute URLs.
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert client.get("/redoc").status_code == 404
