"""Export-and-measure for the compression table: a classifier exported to ONNX FP32 and INT8
(the run's `export.int8` recipe, as the export stage makes it) and measured as validation
measures (parameters, MACs, ONNX size,
top-1 on the test split, ONNX Runtime batch-1 latency and throughput); the table of two such
rows; and the batch-1 latency probe a latency budget prunes against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from export.onnx import export_onnx
from export.quantize import quantization_of, quantize_int8
from pipeline.evaluation.scoring import score, test_arrays
from pipeline.models import classifier_only, count_macs, count_parameters
from pipeline.timing import latency
from serving.predictor import OrtPredictor

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data import DataBundle


def ort_latency_probe(
    cfg: PipelineConfig, work: Path, size: int
) -> Callable[[torch.nn.Module], float]:
    """Batch-1 ONNX Runtime latency (p50, ms) of a classifier at `size` pixels, measured as
    validation does; the ONNX file is written in `work`."""
    lat = cfg.validate_.latency

    def measure(classifier: torch.nn.Module) -> float:
        model = classifier_only(classifier)
        path = work / "latency-probe.onnx"
        example = torch.zeros(2, 3, size, size)
        export_onnx(model, example, path, cfg.export.opset)
        run = OrtPredictor(path, threads=lat.threads).run
        one = np.zeros((1, 3, size, size), np.float32)
        return latency(lambda: run(one), warmup=lat.warmup, iters=lat.iters)["p50"]

    return measure


def measure_classifier(
    cfg: PipelineConfig, data: DataBundle, model: torch.nn.Module, work: Path
) -> dict[str, Any]:
    """One classifier, as ONNX FP32 and INT8 (the run's `export.int8` recipe, opset and
    calibration images) in `work`, measured like validation does; the INT8 row records the
    recipe applied (`int8.recipe`)."""
    work.mkdir(parents=True, exist_ok=True)
    xs, ys = test_arrays(data)
    example = torch.from_numpy(xs[:2])
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_onnx(model, example, fp32, cfg.export.opset)
    calibration = data.calibration_batch(cfg.export.calibration_samples)
    quantize_int8(fp32, int8, calibration, cfg.export.int8)
    row: dict[str, Any] = {
        "params": count_parameters(model),
        "macs": count_macs(model, example[:1]),
    }
    threads = cfg.validate_.latency.threads
    for name, path in (("fp32", fp32), ("int8", int8)):
        scored, _, _ = score(OrtPredictor(path, threads=threads).run, xs, ys, cfg)
        row[name] = {
            "onnx_bytes": path.stat().st_size,
            "top1": scored["top1"],
            "latency_ms": scored["latency_ms"],
            "throughput": scored["throughput"],
        }
    row["int8"]["recipe"] = quantization_of(int8)
    return row


def compression_table(unpruned: dict, slim: dict) -> dict[str, Any]:
    """Both classifiers and the ratios: speed-ups over the unpruned FP32 model."""

    def p50(row, prec):
        return row[prec]["latency_ms"]["p50"]

    ref = p50(unpruned, "fp32")
    speedups = {
        f"{who}_{prec}": ref / p50(row, prec)
        for who, row in (("unpruned", unpruned), ("slim", slim))
        for prec in ("fp32", "int8")
    }
    return {
        "unpruned": unpruned,
        "slim": slim,
        "speedup_batch1": speedups,
        "params_ratio": slim["params"] / unpruned["params"],
        "macs_ratio": slim["macs"] / unpruned["macs"],
        "top1_change_fp32": slim["fp32"]["top1"] - unpruned["fp32"]["top1"],
        "top1_change_int8": slim["int8"]["top1"] - unpruned["fp32"]["top1"],
    }
