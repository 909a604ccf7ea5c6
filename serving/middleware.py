"""ASGI middleware of the server: the API key, request metrics by route and status, the body
byte limit on inference routes."""

import hmac
import time

from serving.state import ServerState, error

PROBES = ("/healthz", "/v2/health/live", "/v2/health/ready")  # open without the API key
INFERENCE_ROUTES = ("/v1/predict", "/v2/models/{name}/infer")


class AuthAndMetrics:
    """Plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on every request):
    the API key check, and request counts and latency by route and status."""

    def __init__(self, app, state: ServerState, key: str | None) -> None:
        self.app, self.state, self.key = app, state, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, t0, status = route_label(scope["path"]), time.perf_counter(), [500]
        if self.key and scope["path"] not in PROBES:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:]
            if not hmac.compare_digest(given, self.key.encode()):
                response = error(401, "missing or wrong API key: send it as X-API-Key")
                response.headers["WWW-Authenticate"] = "Bearer"
                self.state.metrics.requests.labels(route, "401").inc()
                return await response(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        inference = route in INFERENCE_ROUTES
        if inference:
            receive = limited(receive, self.state.settings.max_bytes)
        self.state.in_flight += inference
        try:
            await self.app(scope, receive, sending)
        finally:
            self.state.in_flight -= inference
            m = self.state.metrics
            m.requests.labels(route, str(status[0])).inc()
            m.request_seconds.labels(route).observe(time.perf_counter() - t0)


def limited(receive, limit: int):
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


def route_label(path: str) -> str:
    """A bounded label set: model names and versions folded."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v2" and parts[2] == "models":
        return "/v2/models/{name}" + ("/" + parts[-1] if parts[-1] in ("infer", "ready") else "")
    if path in ("/v1/predict", "/v1/model", "/metrics", "/docs", "/openapi.json", "/v2", *PROBES):
        return path
    return "other"
