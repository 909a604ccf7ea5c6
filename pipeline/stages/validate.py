"""The validate stage: accuracy and latency of every artefact on the test split, against gates.

Every artefact is scored on the same preprocessed test tensors; latency is batch 1
(warm-up, then p50/p90/p99) and throughput at a larger batch, each back end with the same
thread count; then, for the report, a sweep over batch sizes and thread counts
(`validate.sweep`). The predictions (`predictions.npz`) and the most confident mistakes with
their images (`mistakes.npz`) are kept for the report's confusion matrix and thumbnails.
Everything is recorded before a failed gate is raised; the runner then writes the report.

GPU back ends (`validate.gpu_backends`) are rows of their own, scored and gated like the
others: `torch_cuda`, `onnx_cuda`, `onnx_fp16_cuda`, `onnx_tensorrt` (and the export's
TensorRT engines). Each one that cannot run here (no GPU, a CPU build of onnxruntime, no
TensorRT) is recorded under `skipped` with the reason, as the export stage records the engine
formats it could not build. The measuring is `pipeline.evaluation`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.artifacts import Manifest, StageContext, StageResult, write_json_atomic
from pipeline.errors import GateFailed

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig


def run(
    cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext
) -> StageResult:
    # torch and the evaluation library load here, not with the stage table
    import torch

    from pipeline import evaluation
    from pipeline.models.io import build_backbone, load_weights, read_spec

    all_threads = cfg.validate_.latency.threads or torch.get_num_threads()
    torch.set_num_threads(all_threads)
    prune, export = inputs["prune"], inputs["export"]
    spec = read_spec(prune.folder, "classifier")
    model = load_weights(build_backbone(spec), prune.folder, "classifier")
    xs, ys = evaluation.test_arrays(ctx.data)
    weights = prune.path("classifier.safetensors")
    candidates = evaluation.artefact_candidates(export, model, weights)
    on_gpu, skipped = evaluation.gpu_candidates(cfg, export, model, weights)
    candidates |= on_gpu
    artefacts, preds = evaluation.measure_rows(cfg, candidates, xs, ys, all_threads)
    pred, conf = preds["pred_torch"], preds["conf_torch"]
    worst = evaluation.mistakes(
        xs, ys, pred, conf, spec.preset.preprocessing, cfg.validate_.mistakes
    )
    np.savez_compressed(out_dir / "mistakes.npz", **worst)
    np.savez_compressed(out_dir / "predictions.npz", **preds)
    gates = evaluation.check_gates(cfg, artefacts)
    metrics = {
        "threads": all_threads,
        "test_samples": len(xs),
        "classes": list(spec.classes),
        "timing": evaluation.timing_method(cfg, gpu=any(c.gpu for c in candidates.values())),
        "artefacts": artefacts,
        "gates": gates,
    }
    if skipped:
        metrics["skipped"] = skipped
    write_json_atomic(out_dir / "validation.json", metrics)
    if failure := evaluation.failed_gates(gates):
        raise GateFailed(
            f"{failure}. Everything measured is in {ctx.run_dir / 'report.html'}",
            result=StageResult(metrics=metrics),
        )
    return StageResult(metrics=metrics)
