"""HTTP inference server: FastAPI over ONNX Runtime (CPU or GPU providers), no torch in the
process; or over a TensorRT engine (`.engine`, through `TrtPredictor`: tensorrt, and torch for
the GPU buffers, imported only then).

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
Preprocessing and class names come from the ONNX file's metadata (an engine's JSON record
carries a copy), so the server cannot drift from training. Bad input gets a 4xx whose `detail` names the problem and the fix.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and FastAPI is imported inside create_app so that this module imports without it.
import logging
import threading
from pathlib import Path
from typing import Any

from serving.metrics import Metrics
from serving.middleware import PROBES, AuthAndMetrics
from serving.routes_v1 import add_v1_routes
from serving.routes_v2 import SERVER_NAME, add_v2_routes
from serving.settings import ServeSettings
from serving.state import ServerState, error

log = logging.getLogger(__name__)

__all__ = ["PROBES", "SERVER_NAME", "ServerState", "api_reference_html", "create_app"]


def create_app(
    model: str | Path,
    settings: ServeSettings | None = None,
    *,
    load_in_background: bool = False,
    **overrides: Any,
):
    """The FastAPI app for one model file: ONNX, or a TensorRT engine. `overrides` are
    ServeSettings fields. Loading in the foreground, a model that cannot load raises: the
    pipeline's own error where it has one (GpuUnavailable without TensorRT or a GPU,
    ArtefactError for an engine built elsewhere), else an ArtefactError."""
    _require_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from serving.settings import load_settings

    # Checked like the command line's settings: a bad value is a ConfigError naming it.
    s = load_settings(None, {**(settings or ServeSettings()).model_dump(), **overrides})
    path = Path(model)
    state = ServerState(path, s, Metrics.create())
    name = s.model_name or _default_name(path)
    if not load_in_background:
        state.load()
        if state.error:
            from pipeline.errors import ArtefactError, PipelineError

            if isinstance(state.failure, PipelineError):
                raise state.failure
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
    add_v1_routes(app, state, path)
    add_v2_routes(app, state, name)
    return app


def _default_name(path: Path) -> str:
    """The run's name for a model inside a run folder, else the file's stem."""
    from pipeline.artifacts import Manifest

    m = Manifest.load(path.parent)
    if m is not None and m.stage == "export":
        return path.parent.parent.name
    return path.stem


def _middleware(app, state: ServerState) -> None:
    from fastapi import HTTPException

    key = state.settings.api_key

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        response = error(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    app.add_middleware(AuthAndMetrics, state=state, key=key)


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
        return error(503, state.error or "the model is loading", retry_after=1)

    @app.get("/metrics")
    def metrics():
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/docs", include_in_schema=False)
    def docs():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(api_reference_html(app.openapi()))


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
