"""The server's state (model, batcher, readiness) and the steps every inference route shares:
readiness, submitting to the batcher with its HTTP answers for overload, deadlines on bodies."""

# No `from __future__ import annotations` here or in the route modules: FastAPI reads endpoint
# annotations at run time.
import asyncio
import logging
import threading
from pathlib import Path

import numpy as np

from serving.batching import Batcher, BatchStats, Closed, DeadlineExceeded, QueueFull
from serving.classify import Classifier
from serving.metrics import Metrics
from serving.predictor import load_predictor
from serving.settings import ServeSettings

log = logging.getLogger("serving.http")


class ServerState:
    """The model, its batcher and readiness; loaded in the foreground or in a thread."""

    def __init__(self, model: Path, settings: ServeSettings, metrics: Metrics) -> None:
        self.model, self.settings, self.metrics = model, settings, metrics
        self.clf: Classifier | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.error: str | None = None
        self.failure: Exception | None = None  # what made loading fail, for create_app to raise
        self.decodes = threading.BoundedSemaphore(settings.max_concurrent_decodes)
        self.in_flight = 0  # inference requests being handled (the middleware counts them)

    def load(self) -> None:
        """Load the model (ONNX Runtime, or TensorRT for an engine) and run one warm-up
        inference; then the server is ready."""
        try:
            s = self.settings
            clf = Classifier(
                load_predictor(self.model, threads=s.threads, providers=s.providers, spin=False),
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
            self.failure = exc
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


def error(status: int, detail: str, retry_after: float | None = None):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    # "error" is the v2 protocol's field, "detail" FastAPI's: clients of both read theirs.
    return JSONResponse({"detail": detail, "error": detail}, status_code=status, headers=headers)


def require_ready(state: ServerState) -> None:
    from fastapi import HTTPException

    if state.ready:
        return
    if state.clf is not None:  # loaded once: this is the drain at shutdown
        raise HTTPException(503, "the server is shutting down", {"Retry-After": "5"})
    raise HTTPException(
        503, state.error or "the model is loading; retry shortly", {"Retry-After": "1"}
    )


async def run(state: ServerState, batch: np.ndarray) -> np.ndarray:
    """Logits for a preprocessed batch through the shared batcher; HTTP errors for overload."""
    from fastapi import HTTPException

    require_ready(state)
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


async def with_deadline(coro, seconds: float):
    from fastapi import HTTPException

    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the request body did not arrive within {seconds:g} s") from None


async def read_body(request, limit: int) -> bytes:
    from fastapi import HTTPException

    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, f"request is over {limit:,} bytes")
    return bytes(data)
