"""HTTP serving against calling the model in-process: latency and images/s, side by side.

    PYTHONPATH=. python benchmarks/serve_http.py runs/digits-resnet18 --requests 300 --batch 1 8

Starts the FastAPI app under uvicorn in this process (one worker, on a free local port), sends
PNG images over real HTTP with httpx, and times the same decode + preprocess + ONNX Runtime
call through `Classifier.predict` directly; the ratio is what HTTP, multipart parsing and the
event loop cost per request. Sequential requests, so the figures are per-request latency.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.timing import percentiles  # noqa: E402
from serving.artefacts import resolve_onnx  # noqa: E402
from serving.classify import Classifier  # noqa: E402
from serving.http import create_app  # noqa: E402
from serving.predictor import OrtPredictor  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pngs(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _summary(times: list[float], images: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {
        **percentiles(ms, (50, 99), suffix="_ms"),
        "images_per_s": images * len(times) / float(np.sum(times)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="run folder, export folder or .onnx file")
    p.add_argument("--artefact", default="onnx")
    p.add_argument("--requests", type=int, default=300, help="timed requests per batch size")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="images per request")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = p.parse_args()

    import httpx
    import uvicorn

    path = resolve_onnx(args.model, args.artefact)
    size = int(OrtPredictor(path).metadata.get("input_size", 32))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(path, threads=args.threads), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    clf = Classifier(OrtPredictor(path, threads=args.threads))
    url = f"http://127.0.0.1:{port}/v1/predict?top_k=1"
    print(f"model={path} requests={args.requests} image={size}x{size} PNG")
    with httpx.Client(timeout=30) as client:
        for b in args.batch:
            imgs = _pngs(b, size)
            files = [("file", (f"{i}.png", d, "image/png")) for i, d in enumerate(imgs)]
            uploads = [(f"{i}.png", d) for i, d in enumerate(imgs)]
            http_t, direct_t = [], []
            for i in range(args.requests + 10):  # interleaved; the first 10 of each warm up
                t0 = time.perf_counter()
                r = client.post(url, files=files)
                t1 = time.perf_counter()
                clf.predict(uploads, 1)
                t2 = time.perf_counter()
                r.raise_for_status()
                if i >= 10:
                    http_t.append(t1 - t0)
                    direct_t.append(t2 - t1)
            h, d = _summary(http_t, b), _summary(direct_t, b)
            ratio = statistics.median(http_t) / statistics.median(direct_t)
            print(
                f"batch {b:3d}: HTTP p50 {h['p50_ms']:7.2f} ms p99 {h['p99_ms']:7.2f} ms "
                f"{h['images_per_s']:8.1f} img/s | in-process p50 {d['p50_ms']:7.2f} ms "
                f"{d['images_per_s']:8.1f} img/s | HTTP/in-process {ratio:4.2f}x"
            )
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    main()
