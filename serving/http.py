"""HTTP inference server: FastAPI over an ONNX Runtime session, no torch in the process.

    python -m pipeline serve runs/digits-resnet18 --port 8000
    curl -F file=@cat.png -F file=@dog.jpg 'localhost:8000/v1/predict?top_k=3'
    curl --data-binary @cat.png -H 'Content-Type: image/png' localhost:8000/v1/predict

Endpoints: `GET /healthz`, `GET /v1/model` (classes, input size, preprocessing),
`POST /v1/predict` (one or more images as multipart `file` fields, or one image as the raw
body; every image of a request runs as one batch). The OpenAPI schema is at `/openapi.json`
and a self-contained reference page at `/docs` (no script or style from any network).

Preprocessing (resize, centre crop, normalisation) and class names come from the ONNX file's
metadata, written by the export stage, so the server cannot drift from training. Bad input gets
a 4xx whose `detail` names the problem and the fix; nothing a client sends can crash the worker.
For batching across requests and many replicas, use the Triton repository (`serving.triton`).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside create_app so that this module imports without FastAPI.
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.images import to_rgb8
from serving.predictor import OrtPredictor

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_BYTES = 32 << 20  # per request
DEFAULT_MAX_PIXELS = 40_000_000  # per image, before decoding (decompression bombs)


class BadImage(ValueError):
    """An upload that is not a decodable image; the message is for the client."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of any format Pillow reads -> uint8 HWC RGB; BadImage with the reason otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImage(f"{name}: empty upload; send the image file's bytes")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size  # read from the header, nothing decoded yet
        if w * h > max_pixels:
            raise BadImage(
                f"{name}: {w}x{h} is {w * h:,} pixels, over this server's limit of "
                f"{max_pixels:,}; downscale it before sending"
            )
        return to_rgb8(im)
    except UnidentifiedImageError:
        raise BadImage(
            f"{name}: not an image Pillow can read ({len(data)} bytes); send PNG, JPEG, BMP, "
            "GIF, TIFF or WebP"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(f"{name}: the image is truncated or corrupt ({exc}); re-encode it") from None


class Classifier:
    """Decode, preprocess, one batched ONNX Runtime call, top-k: the server's whole job."""

    def __init__(self, predictor: OrtPredictor, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.classes = predictor.classes
        n_out = predictor.session.get_outputs()[0].shape[-1]
        self.num_classes = len(self.classes) or (n_out if isinstance(n_out, int) else 0)

    def label(self, i: int) -> str:
        return self.classes[i] if i < len(self.classes) else str(i)

    def predict(self, uploads: list[tuple[str, bytes]], top_k: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        images = [decode_image(data, name, self.max_pixels) for name, data in uploads]
        batch = self.predictor.preprocess(images)
        t1 = time.perf_counter()
        probs = softmax(self.predictor.run(batch).astype(np.float64))
        t2 = time.perf_counter()
        k = min(top_k, probs.shape[1])
        preds = []
        for (name, _), p in zip(uploads, probs, strict=True):
            order = np.argsort(-p, kind="stable")[:k]
            preds.append(
                {
                    "file": name,
                    "top_k": [
                        {"index": int(i), "label": self.label(int(i)), "probability": float(p[i])}
                        for i in order
                    ],
                }
            )
        return {
            "predictions": preds,
            "timing_ms": {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3},
        }


def create_app(
    model: str | Path,
    *,
    threads: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    providers: list[str] | None = None,
):
    """The FastAPI app for one ONNX model file."""
    _require_serve_extra()
    from fastapi import FastAPI, HTTPException, Query, Request
    from starlette.concurrency import run_in_threadpool

    path = Path(model)
    clf = Classifier(OrtPredictor(path, threads=threads, providers=providers), max_pixels)
    meta = clf.predictor.metadata
    app = FastAPI(
        title="Image classifier",
        description=f"ONNX Runtime inference for {path.name}",
        version=str(meta.get("producer_version", "1")),
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: blank offline
        redoc_url=None,
    )

    @app.get("/docs", include_in_schema=False)
    def docs():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(api_reference_html(app.openapi()))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return {
            "file": path.name,
            "classes": clf.classes,
            "num_classes": clf.num_classes,
            "input": {
                "size": meta.get("input_size"),
                "resize": meta.get("resize"),
                "mean": meta.get("mean"),
                "std": meta.get("std"),
                "layout": "NCHW float32, RGB",
            },
            "providers": clf.predictor.session.get_providers(),
            "limits": {"max_images": max_images, "max_bytes": max_bytes, "max_pixels": max_pixels},
        }

    @app.post("/v1/predict")
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, description="classes to return per image, best first"),
    ) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"request is {int(declared):,} bytes, over {max_bytes:,}")
        ctype = request.headers.get("content-type", "")
        uploads = await _read_uploads(request, ctype, max_bytes, max_images)
        try:
            out = await run_in_threadpool(clf.predict, uploads, top_k)
        except BadImage as exc:
            raise HTTPException(400, str(exc)) from None
        out["model"] = path.name
        return out

    async def _read_uploads(
        request: Request, ctype: str, limit: int, max_n: int
    ) -> list[tuple[str, bytes]]:
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
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise HTTPException(413, f"request is over {limit:,} bytes")
        if not data:
            raise HTTPException(
                400, "empty request body; send an image (raw bytes or multipart file fields)"
            )
        return [("body", bytes(data))]

    return app


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
        m for m in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None
    ]
    if missing:
        from pipeline.errors import ConfigError

        raise ConfigError(
            f"serving over HTTP needs {', '.join(missing)} (not installed): "
            "pip install -e '.[serve]'"
        )


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    import uvicorn

    app = create_app(model, **kwargs)
    log.info("serving %s on http://%s:%d (docs at /docs)", model, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
