"""Benchmarks of the serving back ends: TensorRT engine latency and throughput per batch size
on a CUDA GPU. Timing of any callable lives in `pipeline.timing` (numpy only)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.timing import percentiles
from serving.predictor import TrtPredictor


def benchmark_engine(
    engine_path: str | Path,
    shape: tuple[int, int, int],
    batches: list[int],
    *,
    warmup: int = 20,
    iters: int = 200,
    reference: np.ndarray | None = None,
    reference_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """GPU latency (CUDA-synchronised per call) and throughput per batch size; parity if given.

    `reference` is a float32 NCHW batch and `reference_logits` the ONNX Runtime logits for it.
    """
    runner = TrtPredictor(engine_path)
    torch = runner.torch
    dev = torch.device("cuda")
    out: dict[str, Any] = {"engine": str(engine_path), "gpu": torch.cuda.get_device_name(dev)}
    for b in batches:
        x = torch.randn(b, *shape, device=dev)
        for _ in range(warmup):
            runner(x)
        torch.cuda.synchronize()
        times = np.empty(iters)
        for i in range(iters):
            t0 = time.perf_counter()
            runner(x)
            torch.cuda.synchronize()
            times[i] = time.perf_counter() - t0
        ms = times * 1e3
        out[f"batch_{b}"] = {
            **percentiles(ms, (50, 99), suffix="_ms"),
            "images_per_s": float(b / times.mean()),
        }
    if reference is not None and reference_logits is not None:
        got = runner(torch.from_numpy(reference).to(dev)).float().cpu().numpy()
        out["parity"] = {
            "max_abs_diff": float(np.abs(got - reference_logits).max()),
            "top1_agreement": float((got.argmax(1) == reference_logits.argmax(1)).mean()),
            "samples": int(len(reference)),
        }
    return out
