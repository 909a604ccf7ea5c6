"""HTTP inference server: FastAPI over ONNX Runtime (CPU or GPU providers), no torch in the process.

    python -m pipeline serve runs/digits-resnet18 --port 8000
    curl -F file=@cat.png -F file=@dog.jpg 'localhost:8000/v1/predict?top_k=3'
    curl --data-binary @cat.png -H 'Content-Type: image/png' localhost:8000/v1/predict

Endpoints:
- `POST /v1/predict`: image files (multipart `file` fields, or one raw image body) -> top-k
  labels; `GET /v1/model`: classes, preprocessing, limits.
- The Open Inference Protocol (KServe v2, Triton HTTP/REST), for tritonclient, perf_analyzer
  and KServe tooling: `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`,
  `/v2/models/{name}/ready`, `POST /v2/models/{name}/infer` (JSON tensors or the binary tensor
  data extension) on the model's own tensors (preprocessed float32 NCHW in, logits out).
- `GET /metrics` (Prometheus), `GET /healthz` (liveness), `/docs` (a self-contained page).

Images from concurrent requests (v1 and v2) are batched into one inference call
(`serving.batching`): up to `max_batch_size` images or `max_queue_delay_us`. The queue is
bounded (`max_queue` images): beyond it, and past a request's deadline, the answer is 503 with
Retry-After. Readiness comes only after the model is loaded and one warm-up inference ran.
Preprocessing and class names come from the ONNX file's metadata, so the server cannot drift
from training. Bad input gets a 4xx whose `detail` names the problem and the fix.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside create_app so that this module imports without FastAPI.
import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching import Batcher, BatchStats, Closed, DeadlineExceeded, QueueFull
from serving.classify import BadImage, Classifier, TooLarge
from serving.metrics import Metrics
from serving.predictor import OrtPredictor
from serving.settings import ServeSettings

log = logging.getLogger(__name__)

SERVER_NAME = "skd-pipeline"
PROBES = ("/healthz", "/v2/health/live", "/v2/health/ready")  # open without the API key
INFERENCE_ROUTES = ("/v1/predict", "/v2/models/{name}/infer")


class ServerState:
    """The model, its batcher and readiness; loaded in the foreground or in a thread."""

    def __init__(self, model: Path, settings: ServeSettings, metrics: Metrics) -> None:
        self.model, self.settings, self.metrics = model, settings, metrics
        self.clf: Classifier | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.error: str | None = None
        self.decodes = threading.BoundedSemaphore(settings.max_concurrent_decodes)
        self.in_flight = 0  # inference requests being handled (the middleware counts them)

    def load(self) -> None:
        """Load the model and run one warm-up inference; then the server is ready."""
        try:
            s = self.settings
            clf = Classifier(
                OrtPredictor(self.model, threads=s.threads, providers=s.providers, spin=False),
                s.max_pixels,
            )
            shape = [d if isinstance(d, int) else 1 for d in clf.predictor.input_shape]
            clf.predictor.run(np.zeros(shape, np.float32))  # warm-up: allocations, kernels
            self.clf = clf
            self.ready = True
            self.metrics.model_ready.set(1)
            log.info("model %s loaded and warmed up: ready", self.model)
        except Exception as exc:  # noqa: BLE001 - reported by readiness and the log
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", self.model, self.error)

    def batcher_for(self) -> Batcher:
        if self.batcher is None:  # created on the serving loop at first use
            s, m = self.settings, self.metrics

            def on_batch(size: int, seconds: float) -> None:
                m.batch_size.observe(size)
                m.inference_seconds.observe(seconds)

            self.batcher = Batcher(
                self.clf.predictor.run,
                max_batch_size=s.max_batch_size,
                max_queue_delay_us=s.max_queue_delay_us,
                max_queue=s.max_queue,
                stats=BatchStats(on_batch=on_batch, on_queue=m.queue_images.set),
                incoming=lambda: self.in_flight - self.batcher.requests_held,
            )
            self.batcher.start()
        return self.batcher


def create_app(
    model: str | Path,
    settings: ServeSettings | None = None,
    *,
    load_in_background: bool = False,
    **overrides: Any,
):
    """The FastAPI app for one ONNX model file. `overrides` are ServeSettings fields."""
    _require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    s = (settings or ServeSettings()).model_copy(update=overrides)
    ServeSettings.model_validate(s.model_dump())  # the overrides are checked too
    path = Path(model)
    state = ServerState(path, s, Metrics.create())
    name = s.model_name or _default_name(path)
    if not load_in_background:
        state.load()
        if state.error:
            from pipeline.errors import ArtefactError

            raise ArtefactError(f"cannot serve {path}: {state.error}")

    @asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=state.load, name="model-load", daemon=True).start()
        yield
        state.ready = False  # draining: no new work, finish what is queued
        state.metrics.model_ready.set(0)
        if state.batcher is not None:
            await state.batcher.close()

    app = FastAPI(
        title="Image classifier",
        description=f"Inference for {path.name} (model name {name!r} in the v2 protocol)",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: blank offline
        redoc_url=None,
        lifespan=lifespan,
    )
    _middleware(app, state)
    _probe_routes(app, state, name)
    _v1_routes(app, state, path)
    _v2_routes(app, state, name)
    return app


def _default_name(path: Path) -> str:
    """The run's name for a model inside a run folder, else the file's stem."""
    from pipeline.artifacts import Manifest

    m = Manifest.load(path.parent)
    if m is not None and m.stage == "export":
        return path.parent.parent.name
    return path.stem


def _error(status: int, detail: str, retry_after: float | None = None):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    # "error" is the v2 protocol's field, "detail" FastAPI's: clients of both read theirs.
    return JSONResponse({"detail": detail, "error": detail}, status_code=status, headers=headers)


def _middleware(app, state: ServerState) -> None:
    from fastapi import HTTPException

    key = state.settings.api_key

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        response = _error(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    app.add_middleware(_AuthAndMetrics, state=state, key=key)


class _AuthAndMetrics:
    """Plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on every request):
    the API key check, and request counts and latency by route and status."""

    def __init__(self, app, state: ServerState, key: str | None) -> None:
        self.app, self.state, self.key = app, state, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import hmac

        route, t0, status = _route(scope["path"]), time.perf_counter(), [500]
        if self.key and scope["path"] not in PROBES:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:]
            if not hmac.compare_digest(given, self.key.encode()):
                response = _error(401, "missing or wrong API key: send it as X-API-Key")
                response.headers["WWW-Authenticate"] = "Bearer"
                self.state.metrics.requests.labels(route, "401").inc()
                return await response(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        inference = route in INFERENCE_ROUTES
        if inference:
            receive = _limited(receive, self.state.settings.max_bytes)
        self.state.in_flight += inference
        try:
            await self.app(scope, receive, sending)
        finally:
            self.state.in_flight -= inference
            m = self.state.metrics
            m.requests.labels(route, str(status[0])).inc()
            m.request_seconds.labels(route).observe(time.perf_counter() - t0)


def _limited(receive, limit: int):
    """`receive` that stops a body at `limit` bytes, whether or not a Content-Length was sent
    (chunked uploads, multipart files spooled by the form parser)."""
    from fastapi import HTTPException

    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request is over {limit:,} bytes")
        return message

    return wrapped


def _route(path: str) -> str:
    """A bounded label set: model names and versions folded."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v2" and parts[2] == "models":
        return "/v2/models/{name}" + ("/" + parts[-1] if parts[-1] in ("infer", "ready") else "")
    if path in ("/v1/predict", "/v1/model", "/metrics", "/docs", "/openapi.json", "/v2", *PROBES):
        return path
    return "other"


def _probe_routes(app, state: ServerState, name: str) -> None:
    from fastapi import Response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready():
        if state.ready:
            return {"ready": True}
        return _error(503, state.error or "the model is loading", retry_after=1)

    @app.get("/metrics")
    def metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/docs", include_in_schema=False)
    def docs():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(api_reference_html(app.openapi()))


def _require_ready(state: ServerState) -> None:
    from fastapi import HTTPException

    if state.ready:
        return
    if state.clf is not None:  # loaded once: this is the drain at shutdown
        raise HTTPException(503, "the server is shutting down", {"Retry-After": "5"})
    raise HTTPException(
        503, state.error or "the model is loading; retry shortly", {"Retry-After": "1"}
    )


async def _run(state: ServerState, batch: np.ndarray) -> np.ndarray:
    """Logits for a preprocessed batch through the shared batcher; HTTP errors for overload."""
    from fastapi import HTTPException

    _require_ready(state)
    s = state.settings
    try:
        return await state.batcher_for().submit(batch, s.request_timeout_s)
    except ValueError as exc:  # more images than the queue can ever hold
        raise HTTPException(413, f"{exc}; send fewer images per request") from None
    except QueueFull as exc:
        raise HTTPException(503, f"server busy ({exc}); retry", {"Retry-After": "1"}) from None
    except DeadlineExceeded:
        raise HTTPException(
            503, f"not answered within {s.request_timeout_s:g} s; retry", {"Retry-After": "1"}
        ) from None
    except Closed:
        raise HTTPException(503, "the server is shutting down", {"Retry-After": "5"}) from None


def _v1_routes(app, state: ServerState, path: Path) -> None:
    from fastapi import HTTPException, Query, Request, Response
    from starlette.concurrency import run_in_threadpool

    s = state.settings

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        if state.clf is None:
            raise HTTPException(503, state.error or "the model is loading")
        meta = state.clf.predictor.metadata
        return {
            "file": path.name,
            "classes": state.clf.classes,
            "num_classes": state.clf.num_classes,
            "input": {
                "size": meta.get("input_size"),
                "resize": meta.get("resize"),
                "mean": meta.get("mean"),
                "std": meta.get("std"),
                "layout": "NCHW float32, RGB",
            },
            "providers": state.clf.predictor.session.get_providers(),
            "limits": {
                "max_images": s.max_images,
                "max_bytes": s.max_bytes,
                "max_pixels": s.max_pixels,
                "max_request_pixels": s.max_request_pixels,
            },
            "batching": {
                "max_batch_size": s.max_batch_size,
                "max_queue_delay_us": s.max_queue_delay_us,
                "max_queue": s.max_queue,
            },
        }

    def prepare(uploads):
        with state.decodes:  # bounds the memory of images being decoded at once
            return state.clf.prepare(uploads)

    @app.post("/v1/predict", response_model=None)
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, description="classes to return per image, best first"),
    ) -> Response:
        _require_ready(state)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_bytes:
            raise HTTPException(413, f"request is {int(declared):,} bytes, over {s.max_bytes:,}")
        try:
            uploads = await _with_deadline(
                _read_uploads(request, request.headers.get("content-type", ""), s),
                s.body_timeout_s,
            )
            t0 = time.perf_counter()
            pixels = state.clf.work_pixels(uploads, s.max_request_pixels)  # headers only
            if pixels <= s.inline_decode_pixels:
                batch = state.clf.prepare(uploads)  # small: cheaper than a hop to a thread
            else:
                batch = await run_in_threadpool(prepare, uploads)
        except BadImage as exc:
            raise HTTPException(400, str(exc)) from None
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        t1 = time.perf_counter()
        logits = await _run(state, batch)
        t2 = time.perf_counter()
        out = {
            "predictions": state.clf.answer([n for n, _ in uploads], logits, top_k),
            "timing_ms": {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3},
            "model": path.name,
        }
        # Serialised here: FastAPI's response validation costs more than the model call.
        return Response(json.dumps(out).encode(), media_type="application/json")


async def _with_deadline(coro, seconds: float):
    from fastapi import HTTPException

    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the request body did not arrive within {seconds:g} s") from None


async def _read_uploads(request, ctype: str, s: ServeSettings) -> list[tuple[str, bytes]]:
    from fastapi import HTTPException

    limit, max_n = s.max_bytes, s.max_images
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=max_n + 1, max_fields=max_n + 16)
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise HTTPException(
                400, "the multipart form holds no file; send images as -F file=@image.png"
            )
        if len(files) > max_n:
            raise HTTPException(413, f"{len(files)} images in one request, over {max_n}")
        uploads, total = [], 0
        for i, f in enumerate(files):
            data = await f.read()
            total += len(data)
            if total > limit:
                raise HTTPException(413, f"request is over {limit:,} bytes of images")
            uploads.append((f.filename or f"file{i}", data))
        return uploads
    if ctype.startswith(("application/json", "application/x-www-form-urlencoded", "text/")):
        raise HTTPException(
            415,
            f"Content-Type {ctype!r} is not an image; send multipart/form-data with file "
            "fields, or the raw image bytes with Content-Type image/*",
        )
    data = await _body(request, limit)
    if not data:
        raise HTTPException(
            400, "empty request body; send an image (raw bytes or multipart file fields)"
        )
    return [("body", data)]


async def _body(request, limit: int) -> bytes:
    from fastapi import HTTPException

    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, f"request is over {limit:,} bytes")
    return bytes(data)


def _v2_routes(app, state: ServerState, name: str) -> None:
    from fastapi import HTTPException, Request, Response

    from serving import v2

    s = state.settings

    def check(model: str, ver: str = "1") -> None:
        if model != name:
            raise HTTPException(404, f"unknown model {model!r}; this server serves {name!r}")
        if ver not in ("", "1"):
            raise HTTPException(404, f"model {name!r} has version 1 only, not {ver!r}")

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version(SERVER_NAME)
        except PackageNotFoundError:
            ver = "0"
        return {"name": SERVER_NAME, "version": ver, "extensions": ["binary_tensor_data"]}

    def tensors(items) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "datatype": v2.NAMES[np.dtype(_np_type(t.type))],
             "shape": [d if isinstance(d, int) else -1 for d in t.shape]}
            for t in items
        ]  # fmt: skip

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{ver}")
    def model_metadata(model: str, ver: str = "1") -> dict[str, Any]:
        check(model, ver)
        if state.clf is None:
            raise HTTPException(503, state.error or "the model is loading")
        sess = state.clf.predictor.session
        return {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": tensors(sess.get_inputs()),
            "outputs": tensors(sess.get_outputs()),
        }

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{ver}/ready")
    def model_ready(model: str, ver: str = "1"):
        check(model, ver)
        return {"name": name, "ready": True} if state.ready else _error(503, "not ready", 1)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{ver}/infer")
    async def infer(model: str, request: Request, ver: str = "1"):
        check(model, ver)
        _require_ready(state)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_bytes:
            raise HTTPException(413, f"request is {int(declared):,} bytes, over {s.max_bytes:,}")
        body = await _with_deadline(_body(request, s.max_bytes), s.body_timeout_s)
        out_name = state.clf.predictor.session.get_outputs()[0].name
        try:
            req, arrays = v2.parse_request(body, request.headers.get(v2.HEADER_LENGTH.lower()))
            x = _model_input(state, arrays, req)
            v2.check_outputs(req, [out_name])  # before the model runs, not after
        except v2.ProtocolError as exc:
            raise HTTPException(400, str(exc)) from None
        logits = await _run(state, x)
        content, headers = v2.encode_response(name, "1", req, {out_name: logits})
        return Response(content, headers=headers)


def _np_type(onnx_type: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}  # fmt: skip
    return table.get(onnx_type, np.float32)


def _model_input(state: ServerState, arrays: dict[str, np.ndarray], req: dict) -> np.ndarray:
    """The one input tensor, checked against the model's name, datatype and shape."""
    from serving.v2 import NAMES, ProtocolError

    inp = state.clf.predictor.session.get_inputs()[0]
    if set(arrays) != {inp.name}:
        raise ProtocolError(f"this model takes one input, {inp.name!r}; got {sorted(arrays)}")
    x = arrays[inp.name]
    want_type = NAMES[np.dtype(_np_type(inp.type))]
    sent_type = next(t.get("datatype") for t in req["inputs"] if t.get("name") == inp.name)
    if sent_type != want_type:
        raise ProtocolError(f"input {inp.name!r} is {want_type}; got {sent_type}")
    want = [d if isinstance(d, int) else None for d in inp.shape]
    if x.ndim != len(want) or any(
        w is not None and w != d for w, d in zip(want, x.shape, strict=True)
    ):
        shown = [d if d is not None else -1 for d in want]
        raise ProtocolError(
            f"input {inp.name!r} has shape {list(x.shape)}; the model takes {shown}"
        )
    if x.shape[0] > state.settings.max_images:
        raise ProtocolError(f"{x.shape[0]} images in one request, over {state.settings.max_images}")
    return np.ascontiguousarray(x, dtype=_np_type(inp.type))


def api_reference_html(schema: dict[str, Any]) -> str:
    """A plain HTML page listing the OpenAPI schema's endpoints and parameters: no scripts,
    no styles or fonts from elsewhere, so it works on a machine without internet."""
    from html import escape

    info = schema.get("info", {})
    rows = []
    for route, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(
                f"{p['name']} ({p.get('in', '')}): {p.get('description', '')}".strip()
                for p in op.get("parameters", [])
            )
            rows.append(
                f"<tr><td><code>{escape(method.upper())} {escape(route)}</code></td>"
                f"<td>{escape(op.get('summary', ''))}</td><td>{escape(params)}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(info.get('title', 'API'))}</title></head><body>"
        f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>"
        f"<p>{escape(info.get('description', ''))}</p>"
        "<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a></p>"
        "<table border='1' cellpadding='4'><tr><th>endpoint</th><th>summary</th>"
        "<th>parameters</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def _require_serve_extra() -> None:
    import importlib.util

    missing = [
        m
        for m in ("fastapi", "uvicorn", "python_multipart", "prometheus_client")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"serving over HTTP needs {', '.join(missing)} (not installed): "
            "pip install -e '.[serve]'"
        )
