"""The train stage: the classifier and its self-teacher, through `pipeline.training`.

Writes `model.safetensors` + `model.json` (the training wrapper, auxiliary branches included)
and `metrics.jsonl`; checkpoints live under `checkpoints/` and a killed run resumes from them.
With `train.processes > 1` and no launcher around us, the body runs under torch's launcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.artifacts import Manifest, StageContext, StageResult


def run(cfg, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext) -> StageResult:
    from pipeline.training import accel
    from pipeline.training.fit import fit
    from pipeline.training.launch import run_launched

    if cfg.train.processes > 1 and accel.world_size() == 1:
        return StageResult(metrics=run_launched(cfg, out_dir))
    return StageResult(metrics=fit(cfg, ctx.data, out_dir))
