"""The image routes: `POST /v1/predict` (image files -> top-k labels) and `GET /v1/model`."""

import json
import time
from pathlib import Path
from typing import Any

from serving.classify import BadImage, TooLarge
from serving.settings import ServeSettings
from serving.state import ServerState, read_body, require_ready, run, with_deadline


def add_v1_routes(app, state: ServerState, path: Path) -> None:
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
            "platform": state.clf.predictor.platform,
            "providers": state.clf.predictor.providers,
            "warnings": state.clf.predictor.warnings,
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
        require_ready(state)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_bytes:
            raise HTTPException(413, f"request is {int(declared):,} bytes, over {s.max_bytes:,}")
        try:
            uploads = await with_deadline(
                read_uploads(request, request.headers.get("content-type", ""), s),
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
        logits = await run(state, batch)
        t2 = time.perf_counter()
        out = {
            "predictions": state.clf.answer([n for n, _ in uploads], logits, top_k),
            "timing_ms": {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3},
            "model": path.name,
        }
        # Serialised here: FastAPI's response validation costs more than the model call.
        return Response(json.dumps(out).encode(), media_type="application/json")


async def read_uploads(request, ctype: str, s: ServeSettings) -> list[tuple[str, bytes]]:
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
    data = await read_body(request, limit)
    if not data:
        raise HTTPException(
            400, "empty request body; send an image (raw bytes or multipart file fields)"
        )
    return [("body", data)]
