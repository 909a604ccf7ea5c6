"""Scoring an artefact on a split: top-1 from the predictions, batch-1 latency, throughput,
the sweep over batch sizes and thread counts, the most confident mistakes, and the text that
says how the timings were taken.

A predictor here is any callable from a float32 NCHW batch to logits (numpy in, numpy out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pipeline.preprocessing import Preprocessing
from pipeline.timing import latency, sweep_point, throughput

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data import DataBundle

Predict = Callable[[np.ndarray], np.ndarray]


def test_arrays(data: DataBundle) -> tuple[np.ndarray, np.ndarray]:
    """The test split, preprocessed, as float32 NCHW images and integer labels."""
    test = data.test
    return test.stack().numpy().astype(np.float32), np.asarray(test.labels)


def predictions(
    predict: Predict, xs: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, its softmax probability) for every image; an image whose logits are
    not all finite gets class -1 (always wrong) and probability NaN."""
    preds, confs = [], []
    for s in range(0, len(xs), chunk):
        logits = np.asarray(predict(xs[s : s + chunk]), dtype=np.float64)
        finite = np.isfinite(logits).all(axis=1)
        safe = np.where(finite[:, None], logits, 0.0)
        z = np.exp(safe - safe.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        preds.append(np.where(finite, p.argmax(1), -1))
        confs.append(np.where(finite, p.max(1), np.nan))
    return np.concatenate(preds), np.concatenate(confs)


def score(
    predict: Predict, xs: np.ndarray, ys: np.ndarray, cfg: PipelineConfig
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Top-1, batch-1 latency and throughput; and the predictions behind the top-1."""
    lat = cfg.validate_.latency
    one = xs[:1]
    batch = np.resize(xs, (lat.throughput_batch, *xs.shape[1:])).astype(np.float32)
    pred, conf = predictions(predict, xs)
    scored = {
        "top1": float((pred == ys).mean()),
        "nonfinite_outputs": int((pred < 0).sum()),
        "latency_ms": latency(lambda: predict(one), warmup=lat.warmup, iters=lat.iters),
        "throughput": throughput(
            lambda: predict(batch), lat.throughput_batch, warmup=2, iters=lat.throughput_iters
        ),
    }
    return scored, pred, conf


def sweep(
    make: Callable[[int], Predict],
    xs: np.ndarray,
    cfg: PipelineConfig,
    all_threads: int,
    threads: list[int] | None = None,
) -> list[dict]:
    """Latency per (threads, batch size); `make(threads)` gives a predictor using that many.
    `threads` replaces `validate.sweep.threads` (0: all cores)."""
    sw = cfg.validate_.sweep
    points = []
    for t in sw.threads if threads is None else threads:
        threads = t or all_threads
        predict = make(threads)
        for b in sw.batch_sizes:
            batch = np.resize(xs, (b, *xs.shape[1:])).astype(np.float32)
            point = sweep_point(
                lambda batch=batch, predict=predict: predict(batch),
                b,
                min_runs=sw.min_runs,
                max_seconds=sw.max_seconds,
                warmup=sw.warmup,
            )
            points.append({"threads": threads, **point})
    return points


def mistakes(xs, ys, pred, conf, pre: Preprocessing, n: int) -> dict[str, np.ndarray]:
    """The n most confident wrong predictions, with the images as uint8 HWC for display."""
    wrong = np.flatnonzero(pred != ys)
    pick = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    images = np.clip((xs[pick] * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return {
        "index": pick,
        "true": ys[pick],
        "pred": pred[pick],
        "conf": conf[pick],
        "images": images.transpose(0, 2, 3, 1),
    }


def timing_method(cfg: PipelineConfig, gpu: bool = False) -> str:
    """How latency, throughput and the sweep were measured, in words, for the report."""
    lat, sw = cfg.validate_.latency, cfg.validate_.sweep
    text = (
        f"Wall-clock time of single calls (time.perf_counter) on preprocessed float32 NCHW "
        f"batches already in memory; batch-1 latency from {lat.iters} calls after "
        f"{lat.warmup} warm-up calls; throughput from {lat.throughput_iters} calls at batch "
        f"{lat.throughput_batch}."
    )
    if sw.enabled:
        text += (
            f" Sweep: each point {sw.min_runs} timed calls or {sw.max_seconds:g} s, whichever "
            f"comes first (at least 5), after {sw.warmup} warm-up calls; images/s = batch / "
            "mean call time."
        )
    if gpu:
        text += (
            " GPU rows: from the float32 batch in host memory to the logits in host memory, "
            "the copies to and from the GPU included (each call waits for the GPU); CPU "
            "threads do not apply, so their sweep has one pass."
        )
    return text
