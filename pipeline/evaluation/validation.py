"""Every row of a validation measured on the same test tensors, and the gates it is held to.

Each row is scored (top-1, batch-1 latency, throughput) with the stage's thread count, then,
with `validate.sweep`, timed over batch sizes and thread counts. The gates: every row's top-1
against `min_top1`, no non-finite outputs, and each row's top-1 drop against the torch row
(`max_top1_drop`, or `max_top1_drop_int8` for INT8 artefacts). NaN and infinity fail them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.evaluation.backends import Candidate
from pipeline.evaluation.scoring import score, sweep
from pipeline.gates import at_least, at_most, show

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline.validate")


def measure_rows(
    cfg: PipelineConfig,
    candidates: dict[str, Candidate],
    xs: np.ndarray,
    ys: np.ndarray,
    all_threads: int,
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Each candidate's row (back end, device, file, size, scores, sweep) and the predictions
    behind them: `labels`, then `pred_<row>` and `conf_<row>` for every row."""
    rows: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {"labels": ys}
    for name, (backend, path, make, gpu) in candidates.items():
        log.info("validating %s (%s) on %d test images", name, backend, len(xs))
        if gpu:  # the host side of GPU rows runs with the stage's thread count
            torch.set_num_threads(all_threads)
        scored, pred, conf = score(make(all_threads), xs, ys, cfg)
        rows[name] = {"backend": backend, "device": "cuda" if gpu else "cpu", "file": str(path)}
        rows[name] |= scored
        rows[name]["bytes"] = Path(path).stat().st_size
        preds[f"pred_{name}"], preds[f"conf_{name}"] = pred, conf
        if cfg.validate_.sweep.enabled:
            # GPU rows: CPU threads do not apply, one pass recorded at the stage's thread count
            once = [all_threads] if gpu else None
            rows[name]["sweep"] = sweep(make, xs, cfg, all_threads, threads=once)
    torch.set_num_threads(all_threads)
    return rows, preds


def check_gates(cfg: PipelineConfig, artefacts: dict[str, dict]) -> list[dict]:
    """One record per gate: its name, the measured value, the limit and whether it passed."""
    g = cfg.validate_.gates
    gates = []
    for name, a in artefacts.items():
        gates.append(
            {
                "gate": f"{name}.top1 >= min_top1",
                "value": a["top1"],
                "limit": g.min_top1,
                "passed": at_least(a["top1"], g.min_top1),
            }
        )
    for name, a in artefacts.items():
        bad = a.get("nonfinite_outputs", 0)
        gates.append(
            {
                "gate": f"{name}.nonfinite_outputs == 0",
                "value": bad,
                "limit": 0,
                "passed": bad == 0,
            }
        )
    ref = artefacts["torch"]["top1"]
    for name, a in artefacts.items():
        if name == "torch":
            continue
        drop = ref - a["top1"]
        key, limit = (
            ("max_top1_drop_int8", g.max_top1_drop_int8)
            if "int8" in name
            else ("max_top1_drop", g.max_top1_drop)
        )
        gates.append(
            {
                "gate": f"{name}.top1_drop <= {key}",
                "value": drop,
                "limit": limit,
                "passed": at_most(drop, limit),
            }
        )
    return gates


def failed_gates(gates: list[dict]) -> str | None:
    """The failed gates with their measured values and limits, in one line; None when all pass."""
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return None
    return "gate failed: " + "; ".join(
        f"{g['gate']}: measured {show(g['value'])}, limit {g['limit']}" for g in failed
    )
