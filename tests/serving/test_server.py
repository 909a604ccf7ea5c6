"""The server as clients see it: tritonclient over the v2 protocol, metrics, readiness,
back-pressure, the API key, request limits and slow clients. A real uvicorn server runs on a
loopback port in a thread; the model is the hand-built ONNX classifier."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from importlib.util import find_spec

import numpy as np
import pytest

from tests.tiny_onnx import SIZE

pytestmark = pytest.mark.skipif(
    any(find_spec(m) is None for m in ("fastapi", "uvicorn", "prometheus_client", "httpx")),
    reason="the serve extra is not installed",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(model, **settings):
    """uvicorn with the server's own protocol (header deadline) on 127.0.0.1, in a thread."""
    import uvicorn

    from serving.http import create_app
    from serving.server import header_timeout_protocol
    from serving.settings import ServeSettings

    s = ServeSettings(port=_free_port(), **settings)
    app = create_app(model, s, load_in_background=True)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=s.port,
        log_level="warning",
        http=header_timeout_protocol(s.header_timeout_s),
        limit_concurrency=s.max_connections,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    import httpx

    url = f"http://127.0.0.1:{s.port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the server never became ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.skipif(find_spec("tritonclient") is None, reason="tritonclient is not installed")
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infers_like_the_model(tiny_model, binary: bool) -> None:
    import tritonclient.http as httpclient

    from serving.predictor import OrtPredictor

    with live_server(tiny_model, model_name="tiny") as url:
        client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        meta = client.get_model_metadata("tiny")
        assert meta["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}
        ]
        assert client.get_server_metadata()["name"] == "skd-pipeline"
        x = _x(3)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("tiny", [inp], outputs=[out], request_id="r1")
        np.testing.assert_allclose(
            result.as_numpy("logits"), OrtPredictor(tiny_model).run(x), rtol=1e-5, atol=1e-5
        )
        assert result.get_response()["id"] == "r1"
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("other", [inp])
        bad = httpclient.InferInput("input", [1, 3, SIZE + 1, SIZE + 1], "FP32")
        bad.set_data_from_numpy(_x(1)[:, :, :1, :1].repeat(SIZE + 1, 2).repeat(SIZE + 1, 3))
        with pytest.raises(InferenceServerException, match="the model takes"):
            client.infer("tiny", [bad])
        client.close()


def test_metrics_count_requests_batches_and_readiness(tiny_model) -> None:
    import httpx

    with live_server(tiny_model, model_name="tiny") as url:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3, SIZE, SIZE],
                    "datatype": "FP32",
                    "data": _x(2).ravel().tolist(),
                }
            ]
        }
        for _ in range(3):
            r = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["shape"] == [2, 4]
        text = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'requests_total{route="/v2/models/{name}/infer",status="200"} 3.0' in text
    assert "batch_size_count" in text and "inference_seconds_bucket" in text
    assert "queue_images 0.0" in text and "model_ready 1.0" in text
    assert 'request_seconds_count{route="/v2/models/{name}/infer"} 3.0' in text


def test_concurrent_clients_are_batched_together(tiny_model, monkeypatch) -> None:
    import threading

    import httpx

    from serving.batching import Batcher
    from serving.predictor import OrtPredictor
    from tests.serving.test_http import _png

    clients = 16
    arrived = threading.Semaphore(0)
    real_submit, real_run = Batcher.submit, OrtPredictor.run

    async def counted(self, batch, timeout_s):
        arrived.release()
        return await real_submit(self, batch, timeout_s)

    armed, first = threading.Event(), threading.Event()

    def gated(self, batch):  # the first call holds the model until every request is queued,
        if armed.is_set() and not first.is_set():  # however slowly the clients get scheduled
            first.set()
            for _ in range(clients):
                assert arrived.acquire(timeout=30), "not every client reached the queue"
        return real_run(self, batch)

    monkeypatch.setattr(Batcher, "submit", counted)
    monkeypatch.setattr(OrtPredictor, "run", gated)
    with live_server(tiny_model, max_batch_size=16) as url:
        armed.set()  # after the warm-up inference

        def one(i: int) -> int:
            png = _png((i * 20 % 255, 10, 10))
            return httpx.post(
                f"{url}/v1/predict", content=png, headers={"content-type": "image/png"}, timeout=60
            ).status_code

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(one, range(clients)))
        text = httpx.get(f"{url}/metrics", timeout=5).text
    assert codes == [200] * clients
    count = float(text.split("batch_size_count ")[1].split()[0])
    # The first call takes what had arrived when it started; the rest wait in the queue for it
    # and then go together: two calls (a server without batching would make sixteen).
    assert count <= 2


def test_overload_answers_503_with_retry_after_and_nothing_else(tiny_model, monkeypatch) -> None:
    import httpx

    from serving.predictor import OrtPredictor

    real = OrtPredictor.run

    def slow(self, batch):
        time.sleep(0.05)
        return real(self, batch)

    monkeypatch.setattr(OrtPredictor, "run", slow)
    with live_server(
        tiny_model,
        model_name="tiny",
        max_batch_size=1,
        max_queue=2,
        max_images=1,
        request_timeout_s=5,
    ) as url:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIZE, SIZE],
                    "datatype": "FP32",
                    "data": _x(1).ravel().tolist(),
                }
            ]
        }

        def one(_):
            r = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=30)
            return r.status_code, r.headers.get("retry-after"), r.json()

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(24)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes
    busy = [(h, body) for c, h, body in results if c == 503]
    assert all(h == "1" and "busy" in body["error"] for h, body in busy)


def test_api_key_guards_everything_but_the_probes(tiny_model) -> None:
    from fastapi.testclient import TestClient

    from serving.http import create_app

    c = TestClient(create_app(tiny_model, api_key="s3cret"))
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 200
    r = c.get("/v1/model")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/v1/model", headers={"x-api-key": "wrong"}).status_code == 401
    assert c.get("/v1/model", headers={"x-api-key": "s3cret"}).status_code == 200
    assert c.get("/metrics", headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_not_ready_until_loaded_and_warmed_up(tiny_model) -> None:
    from fastapi.testclient import TestClient

    from serving.http import create_app

    app = create_app(tiny_model, load_in_background=True)
    c = TestClient(app)  # no lifespan: the background load never starts
    assert c.get("/v2/health/live").status_code == 200
    r = c.get("/v2/health/ready")
    assert r.status_code == 503 and "loading" in r.json()["error"]
    assert (
        c.post("/v1/predict", content=b"x", headers={"content-type": "image/png"}).status_code
        == 503
    )
    with TestClient(app) as started:  # the lifespan loads it in a thread
        deadline = time.monotonic() + 20
        while started.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_pixels_per_request_are_bounded_before_decoding(tiny_model) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from serving.http import create_app

    def png(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (9, 9, 9)).save(buf, "PNG")
        return buf.getvalue()

    c = TestClient(create_app(tiny_model, max_request_pixels=30_000))
    one = [("file", ("a.png", png(150), "image/png"))]  # 22,500 pixels: fine
    assert c.post("/v1/predict", files=one).status_code == 200
    two = one + [("file", ("b.png", png(150), "image/png"))]  # 45,000 together: refused
    r = c.post("/v1/predict", files=two)
    assert r.status_code == 413 and "per request" in r.json()["detail"]


def test_slow_headers_are_cut_off(tiny_model) -> None:
    with live_server(tiny_model, header_timeout_s=0.3) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
            t0 = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server
            assert 0.2 < time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # keep-alive:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # one request,
            response = b""
            while b'{"live":true}' not in response:  # headers and body may come apart
                chunk = sock.recv(4096)
                assert chunk, response
                response += chunk
            assert b"200 OK" in response
            time.sleep(0.6)  # then silence past the deadline, mid-headers of the next
            sock.sendall(b"GET /v2")
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""


def test_v2_protocol_errors_are_400_with_the_reason(tiny_model) -> None:
    from fastapi.testclient import TestClient

    from serving.http import create_app

    c = TestClient(create_app(tiny_model, model_name="tiny"))
    cases = [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP99", "data": [1]}]}, "FP99"),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 3, SIZE, SIZE],
                        "datatype": "FP32",
                        "data": [1.0, 2.0],
                    }
                ]
            },
            "2 values for shape",
        ),
        (
            {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]},
            "'input'",
        ),
    ]
    for body, needle in cases:
        r = c.post("/v2/models/tiny/infer", json=body)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    r = c.post(
        "/v2/models/tiny/infer", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert c.get("/v2/models/other").status_code == 404


def test_hostile_requests_get_4xx_not_500(tiny_model) -> None:
    """A thin image that would explode when resized, malformed v2 bodies, a model still
    loading, and a chunked upload over the byte limit: each a clear 4xx or 503."""
    from fastapi.testclient import TestClient
    from PIL import Image

    from serving.http import create_app

    buf = io.BytesIO()
    Image.new("RGB", (2_000_000, 1)).save(buf, "PNG")  # a few kB on the wire
    c = TestClient(create_app(tiny_model, model_name="tiny", max_bytes=100_000))
    r = c.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "once resized" in r.json()["detail"]
    for body in (
        {"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [300]}]},
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIZE, SIZE],
                    "datatype": "FP64",
                    "data": [0.0] * 3 * SIZE * SIZE,
                }
            ]
        },
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIZE, SIZE],
                    "datatype": "FP32",
                    "data": [0.0] * 3 * SIZE * SIZE,
                }
            ],
            "outputs": [{"name": "probs"}],
        },
    ):
        assert c.post("/v2/models/tiny/infer", json=body).status_code == 400, body
    metrics = c.get("/metrics").text
    assert "batch_size_count 0.0" in metrics  # none of them reached the model

    def chunks():
        for _ in range(30):
            yield b"\0" * 10_000  # 300 kB without a Content-Length

    r = c.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413
    loading = TestClient(create_app(tiny_model, model_name="tiny", load_in_background=True))
    r = loading.post("/v2/models/tiny/infer", json={"inputs": []})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
