"""Latency and throughput of any callable: shared by validation, costs and the serving benchmarks.

Warm-up first (allocators, thread pools and lazy kernels), then one timed call per sample, so
the percentiles describe single requests, not an average hiding the tail. numpy only: the
server and the benchmarks import this without torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles(
    ms: np.ndarray | list[float], qs: tuple[int, ...] = (50, 90, 99), *, suffix: str = ""
) -> dict[str, float]:
    """`{"p50": ..., "p90": ..., "p99": ...}` of the samples (`suffix` appended to each key,
    such as "_ms"), in the order of `qs`."""
    return {f"p{q}{suffix}": float(np.percentile(ms, q)) for q in qs}


def latency(fn: Callable[[], Any], *, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    ms = samples * 1000.0
    return {**percentiles(ms), "mean": float(ms.mean()), "iters": iters}


def throughput(fn: Callable[[], Any], batch: int, *, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    elapsed = time.perf_counter() - t0
    return {
        "batch": batch,
        "images_per_s": batch * iters / elapsed,
        "batch_ms": 1000.0 * elapsed / iters,
    }


def sweep_point(
    fn: Callable[[], Any], batch: int, *, min_runs: int, max_seconds: float, warmup: int
) -> dict[str, float]:
    """Latency percentiles and images/s of one (batch size, threads) point.

    One timed call per run, after `warmup` untimed ones; timing stops at `min_runs` runs or
    after `max_seconds`, whichever comes first, with at least 5 runs.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs and (
        len(samples) < 5 or time.perf_counter() - start < max_seconds
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    ms = np.asarray(samples) * 1000.0
    return {
        "batch": batch,
        "runs": len(samples),
        **percentiles(ms),
        "mean": float(ms.mean()),
        "images_per_s": float(batch * 1000.0 / ms.mean()),
    }
