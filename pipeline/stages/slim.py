"""The slim stage: structured channel pruning of the classifier, recovered by self-distillation.

1. The trained model is pruned with the recovery method's auxiliary branch attached
   (`pipeline.training.slimming.prune_trained`, through Torch-Pruning's dependency graph);
   the pruned network is kept in `pruned/`.
2. Recovery trains it through the training code (`slimming.recover`), so it checkpoints
   and resumes like training: the pruned weights fine-tuned, or (`slim.init: scratch`) the
   pruned architecture from fresh weights; with `slim.teacher: unpruned` the frozen unpruned
   classifier also teaches it (`teacher_kd`). What it did is `recipe` in the metrics.
3. The compression table (`pipeline.evaluation.compression`): the unpruned and the slim
   classifier, each exported to ONNX FP32 and INT8 (the run's `export.int8` recipe, opset and
   calibration images, so the stage key holds those keys) and measured side by side here:
   parameters, MACs, ONNX size, top-1 on the test split, ONNX Runtime batch-1 latency and
   throughput.

With `slim.ratio: 0` and no budget the trained model passes through unchanged (same bytes).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pipeline.artifacts import Manifest, StageContext, StageResult

log = logging.getLogger("pipeline.slim")


def run(cfg, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext) -> StageResult:
    # torch and the training library load here, not with the stage table
    from pipeline.evaluation import compression_table, measure_classifier, ort_latency_probe
    from pipeline.training import slimming

    train_dir = inputs["train"].folder
    if not cfg.slim.enabled:
        slimming.link_model(train_dir, out_dir)
        log.info("slim is off (slim.ratio 0, no budget): the trained model passes through")
        return StageResult(metrics={"slimmed": False})
    probe = functools.partial(ort_latency_probe, cfg)
    record = slimming.prune_trained(cfg, ctx.data, train_dir, out_dir / "pruned", probe)
    recovery = slimming.recover(cfg, ctx.data, out_dir / "pruned", out_dir, train_dir)
    table = None
    if cfg.slim.compare:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # measured; not artefacts
            table = compression_table(
                measure_classifier(
                    cfg, ctx.data, slimming.deployable(train_dir), Path(tmp) / "unpruned"
                ),
                measure_classifier(cfg, ctx.data, slimming.deployable(out_dir), Path(tmp) / "slim"),
            )
        log.info(
            "slim: %.2fx fewer MACs, FP32 %.2fx and INT8 %.2fx faster at batch 1, top-1 %+.4f "
            "(FP32)",
            1 / table["macs_ratio"],
            table["speedup_batch1"]["slim_fp32"],
            table["speedup_batch1"]["slim_int8"],
            table["top1_change_fp32"],
        )
    metrics = {
        "slimmed": True,
        "recovery_method": slimming.recovery_method(cfg),
        "recipe": slimming.recipe(cfg),
        "pruning": record,
        "recovery": recovery,
        "compression": table,
    }
    return StageResult(metrics=metrics)
