"""The one percentile helper the timers and serving benchmarks share."""

from __future__ import annotations

import numpy as np

from pipeline.timing import latency, percentiles


def test_percentiles_keys_and_values():
    ms = np.arange(1, 101, dtype=float)
    assert percentiles(ms) == {
        q: float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p90", "p99")
    }
    assert list(percentiles(ms, (50, 99), suffix="_ms")) == ["p50_ms", "p99_ms"]


def test_latency_reports_the_shared_percentiles():
    res = latency(lambda: None, warmup=1, iters=5)
    assert list(res) == ["p50", "p90", "p99", "mean", "iters"]
