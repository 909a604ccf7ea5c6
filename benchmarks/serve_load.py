"""Load against the HTTP server: batch-1 image requests at several concurrencies, set beside the
same model called in process by ONNX Runtime at batch 1, in the same run.

    python benchmarks/serve_load.py runs/digits-resnet18 --concurrency 1 8 32 64
    python benchmarks/serve_load.py runs/digits-resnet18 --max-batch-size 1      # batching off
    python benchmarks/serve_load.py runs/digits-resnet18 --flood 4               # 4x capacity

The server is started as its own process (`python -m pipeline serve`) on 127.0.0.1 so its
resident memory can be read before and after (/proc). Every request loop is bounded in count
(`--requests`) and time (`--seconds`) and targets only the address it is given. Writes a JSON
and a Markdown table to `--out`.

With `--client wrk` the load comes from wrk (C; far less CPU than Python's httpx on a small
machine, where client and server share the cores), bounded by `--seconds`.

`--flood F` adds an open-loop phase: requests are sent at F times the best throughput measured
above, whatever the server answers, for `--flood-seconds`; a server with back-pressure answers
only 200 and 503 and its memory stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.timing import percentiles  # noqa: E402
from serving.artefacts import resolve_onnx  # noqa: E402
from serving.classify import Classifier  # noqa: E402
from serving.predictor import OrtPredictor  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png_for(model: Path) -> bytes:
    size = int(OrtPredictor(model).metadata.get("input_size", 32))
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def in_process(model: Path, png: bytes, seconds: float, threads: int | None) -> dict:
    """Batch-1 calls of the same model in this process: decode + preprocess + run, serially."""
    clf = Classifier(OrtPredictor(model, threads=threads))
    for _ in range(20):
        clf.predict([("x", png)], 1)
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        clf.predict([("x", png)], 1)
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - t0, {200: len(lat)})


def summary(lat: list[float], elapsed: float, status: dict) -> dict:
    ms = np.asarray(lat) * 1000 if lat else np.asarray([float("nan")])
    return {
        "requests": int(sum(status.values())),
        "ok": int(status.get(200, 0)),
        "status": {str(k): v for k, v in sorted(status.items())},
        "images_per_s": status.get(200, 0) / elapsed,
        **percentiles(ms, suffix="_ms"),
    }


async def closed_loop(url: str, png: bytes, concurrency: int, requests: int, seconds: float):
    """`concurrency` clients, each sending its next request when the last is answered."""
    import httpx

    lat: list[float] = []
    status: dict = {}
    sent = 0
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            nonlocal sent
            while sent < requests and time.perf_counter() - t0 < seconds:
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=png, headers={"content-type": "image/png"})
                    code = r.status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                status[code] = status.get(code, 0) + 1
                if code == 200:
                    lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(lat, time.perf_counter() - t0, status)


async def open_loop(url: str, png: bytes, rate: float, seconds: float, max_in_flight: int):
    """Requests at a fixed rate whatever the answers, over raw keep-alive sockets (an HTTP
    client library could not offer a multiple of the server's capacity from the same two
    cores). Bounded in time and in requests in flight; a request that finds every connection
    busy is counted as not sent."""
    u = urlsplit(url)
    head = (
        f"POST {u.path}?{u.query} HTTP/1.1\r\nHost: {u.hostname}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(png)}\r\n\r\n"
    ).encode()
    request = head + png
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(max_in_flight):
        idle.put_nowait(None)  # a slot; a connection is opened on first use
    lat: list[float] = []
    status: dict = {}

    async def one(conn):
        t = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection(u.hostname, u.port)
            reader, writer = conn
            writer.write(request)
            line = await asyncio.wait_for(reader.readline(), 30)
            code = int(line.split()[1])
            length = 0
            while (h := await reader.readline()) not in (b"\r\n", b""):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            await reader.readexactly(length)
            status[code] = status.get(code, 0) + 1
            if code == 200:
                lat.append(time.perf_counter() - t)
        except (
            OSError,
            ValueError,
            IndexError,
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
        ) as exc:
            status[type(exc).__name__] = status.get(type(exc).__name__, 0) + 1
            conn = None
        idle.put_nowait(conn)

    tasks, t0, n, dropped = [], time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        await asyncio.sleep(max(0.0, t0 + n / rate - time.perf_counter()))
        n += 1
        if idle.empty():
            dropped += 1
            continue
        tasks.append(asyncio.ensure_future(one(idle.get_nowait())))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    while not idle.empty():
        conn = idle.get_nowait()
        if conn is not None:
            conn[1].close()
    out = summary(lat, elapsed, status)
    return out | {"offered_per_s": n / seconds, "not_sent_all_connections_busy": dropped}


WRK_SCRIPT = r"""
local f = io.open(os.getenv("LOAD_BODY"), "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.headers["Content-Type"] = "image/png"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%d": %d', k, v)) end
  io.write(string.format('RESULT {"seconds": %f, "p50": %f, "p90": %f, "p99": %f, "errors": %d, "status": {%s}}\n',
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def wrk_loop(url: str, png: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    """The closed loop with wrk as the client, bounded by time (`seconds`) and connections;
    its latencies are of all answered requests. `requests` does not apply: wrk runs for the
    duration."""
    if shutil.which("wrk") is None:
        raise SystemExit("--client wrk needs wrk on PATH (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        body, script = Path(tmp) / "body.png", Path(tmp) / "load.lua"
        body.write_bytes(png)
        script.write_text(WRK_SCRIPT)
        env = {
            **os.environ,
            "LOAD_BODY": str(body),
            "LOAD_LIMIT": str(max(1, requests // concurrency)),
        }
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(concurrency, 2)}",
                f"-c{concurrency}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 60,
        ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    status = {int(k): v for k, v in r["status"].items()}
    if r["errors"]:
        status["connection errors"] = r["errors"]
    return {
        "requests": sum(status.values()),
        "ok": status.get(200, 0),
        "status": {str(k): v for k, v in sorted(status.items(), key=str)},
        "images_per_s": status.get(200, 0) / r["seconds"],
        "p50_ms": r["p50"],
        "p90_ms": r["p90"],
        "p99_ms": r["p99"],
    }


def start_server(model: str, port: int, args) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "serve",
        model,
        "--artefact",
        args.artefact,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-queue-delay-us",
        str(args.max_queue_delay_us),
        "--max-queue",
        str(args.max_queue),
    ] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready within 60 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a run folder, its export folder or an .onnx file")
    p.add_argument("--artefact", default="onnx")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=2000, help="per concurrency level, at most")
    p.add_argument("--seconds", type=float, default=10.0, help="per concurrency level, at most")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    p.add_argument(
        "--client",
        choices=["python", "wrk"],
        default="python",
        help="load generator: httpx in this process, or wrk (C, far lighter on a small machine)",
    )
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--flood", type=float, default=0.0, help="offered load, x best throughput")
    p.add_argument("--flood-seconds", type=float, default=10.0)
    p.add_argument("--flood-connections", type=int, default=512, help="requests in flight, at most")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-load"))
    args = p.parse_args()
    model = resolve_onnx(args.model, args.artefact)
    png = png_for(model)
    base = in_process(model, png, min(args.seconds, 5.0), args.threads)
    server = start_server(args.model, args.port, args)
    url = f"http://127.0.0.1:{args.port}/v1/predict?top_k=1"
    res = {"model": str(model), "settings": vars(args) | {"out": str(args.out)}}
    res["in_process_batch1"] = base
    res["rss_mb_before"] = rss_mb(server.pid)
    try:
        rows = []
        for c in args.concurrency:
            if args.client == "wrk":
                r = wrk_loop(url, png, c, args.requests, args.seconds)
            else:
                r = asyncio.run(closed_loop(url, png, c, args.requests, args.seconds))
            rows.append(
                {"concurrency": c, **r, "vs_in_process": r["images_per_s"] / base["images_per_s"]}
            )
            print(
                f"concurrency {c:3d}: {r['images_per_s']:8.1f} img/s ({rows[-1]['vs_in_process']:.2f}x in-process), "
                f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms, status {r['status']}",
                flush=True,
            )
        res["levels"] = rows
        res["rss_mb_after_levels"] = rss_mb(server.pid)
        if args.flood:
            best = max(r["images_per_s"] for r in rows)
            f = asyncio.run(
                open_loop(url, png, args.flood * best, args.flood_seconds, args.flood_connections)
            )
            f["offered_x_capacity"] = f["offered_per_s"] / best
            res["flood"] = f | {"factor": args.flood, "rss_mb_after": rss_mb(server.pid)}
            print(
                f"flood ({f['offered_per_s']:.0f}/s offered, {f['offered_x_capacity']:.1f}x capacity): status {f['status']}, "
                f"rss {res['rss_mb_after_levels']:.0f} -> {res['flood']['rss_mb_after']:.0f} MB"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    res["server_exit_code"] = server.returncode
    write(res, args.out)


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(res, indent=2))
    b = res["in_process_batch1"]
    lines = [
        f"Model `{res['model']}`, server max batch {res['settings']['max_batch_size']}, "
        f"queue delay {res['settings']['max_queue_delay_us']} us; in-process ONNX Runtime batch 1 "
        f"(decode + preprocess + run): {b['images_per_s']:.0f} img/s, p50 {b['p50_ms']:.2f} ms. "
        f"Server RSS {res['rss_mb_before']:.0f} MB before, {res.get('rss_mb_after_levels', float('nan')):.0f} MB after.",
        "",
        "| concurrency | img/s | vs in-process | p50 ms | p90 ms | p99 ms | status counts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res.get("levels", []):
        lines.append(
            f"| {r['concurrency']} | {r['images_per_s']:.0f} | {r['vs_in_process']:.2f}x | "
            f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['status']} |"
        )
    if "flood" in res:
        f = res["flood"]
        lines += [
            "",
            f"Flood: {f['offered_per_s']:.0f} requests/s offered "
            f"({f['offered_x_capacity']:.1f}x the best throughput above): "
            f"status {f['status']}, server RSS {f['rss_mb_after']:.0f} MB after.",
        ]
    (out / "load.md").write_text("\n".join(lines) + "\n")
    print(out / "load.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
