"""Evaluation: how well and how fast a classifier or an exported artefact runs.

- `scoring`: top-1 on a split (non-finite logits count as wrong), batch-1 latency,
  throughput, the sweep over batch sizes and thread counts, the most confident mistakes, and
  the timing method in words.
- `backends`: the rows of a validation (`Candidate`): the torch model, each export artefact
  (ONNX Runtime, TensorRT engines) and the GPU back ends that can run here, with the reasons
  for those that cannot.
- `validation`: every row measured on the same test tensors, and the gates.
- `compression`: export-and-measure of a classifier (ONNX FP32 and INT8) for the slim
  stage's compression table, and the latency probe of a latency budget.

The validate and slim stages read their inputs, call these and write their folders.
"""

from __future__ import annotations

from pipeline.evaluation.backends import (
    GPU_BACKENDS,
    Candidate,
    artefact_candidates,
    backend_name,
    gpu_candidates,
    torch_cuda_predictor,
    torch_predictor,
)
from pipeline.evaluation.compression import (
    compression_table,
    measure_classifier,
    ort_latency_probe,
)
from pipeline.evaluation.scoring import (
    mistakes,
    predictions,
    score,
    sweep,
    test_arrays,
    timing_method,
)
from pipeline.evaluation.validation import check_gates, failed_gates, measure_rows

__all__ = [
    "GPU_BACKENDS",
    "Candidate",
    "artefact_candidates",
    "backend_name",
    "check_gates",
    "compression_table",
    "failed_gates",
    "gpu_candidates",
    "measure_classifier",
    "measure_rows",
    "mistakes",
    "ort_latency_probe",
    "predictions",
    "score",
    "sweep",
    "test_arrays",
    "timing_method",
    "torch_cuda_predictor",
    "torch_predictor",
]
