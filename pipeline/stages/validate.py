"""The validate stage: accuracy and latency of every artefact on the test split, against gates.

Every artefact is scored on the same preprocessed test tensors; latency is batch 1
(warm-up, then p50/p90/p99) and throughput at a larger batch, each back end with the same
thread count. Everything is recorded before a failed gate is raised; the runner then writes
the report from the manifests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.artifacts import Manifest, StageContext, StageResult, write_json_atomic
from pipeline.config import PipelineConfig
from pipeline.errors import GateFailed
from pipeline.gates import at_least, at_most, show
from pipeline.timing import latency, throughput

if TYPE_CHECKING:
    import torch

log = logging.getLogger("pipeline.validate")


def backend_name(artefact: str) -> str:
    from export.variants import VARIANTS

    if artefact == "onnx":
        return "onnxruntime CPU fp32"
    return VARIANTS[artefact].backend if artefact in VARIANTS else artefact


def test_arrays(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    test = ctx.data.test
    return test.stack().numpy().astype(np.float32), np.asarray(test.labels)


def top1(
    predict: Callable[[np.ndarray], np.ndarray], xs: np.ndarray, ys: np.ndarray, chunk: int = 256
) -> float:
    correct = 0
    for s in range(0, len(xs), chunk):
        correct += int((predict(xs[s : s + chunk]).argmax(1) == ys[s : s + chunk]).sum())
    return correct / len(xs)


def score(
    predict: Callable[[np.ndarray], np.ndarray], xs: np.ndarray, ys: np.ndarray, cfg: PipelineConfig
) -> dict:
    lat = cfg.validate_.latency
    one = xs[:1]
    batch = np.resize(xs, (lat.throughput_batch, *xs.shape[1:])).astype(np.float32)
    return {
        "top1": top1(predict, xs, ys),
        "latency_ms": latency(lambda: predict(one), warmup=lat.warmup, iters=lat.iters),
        "throughput": throughput(
            lambda: predict(batch), lat.throughput_batch, warmup=2, iters=lat.throughput_iters
        ),
    }


def torch_predictor(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return predict


def check_gates(cfg: PipelineConfig, artefacts: dict[str, dict]) -> list[dict]:
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


def run(
    cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext
) -> StageResult:
    import torch

    from pipeline.models.io import build_backbone, load_weights, read_spec
    from serving.predictor import OrtPredictor

    threads = cfg.validate_.latency.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    prune, export = inputs["prune"], inputs["export"]
    spec = read_spec(prune.folder, "classifier")
    model = load_weights(build_backbone(spec), prune.folder, "classifier")
    xs, ys = test_arrays(ctx)
    artefacts: dict[str, dict] = {}
    log.info("validating torch (fp32) on %d test images", len(xs))
    artefacts["torch"] = {
        "backend": "torch eager fp32",
        "file": str(prune.path("classifier.safetensors")),
        **score(torch_predictor(model), xs, ys, cfg),
    }
    for name, rel in export.extra["artefacts"].items():
        path = export.path(rel)
        log.info("validating %s (onnxruntime CPU)", name)
        ort = OrtPredictor(path, threads=threads)
        artefacts[name] = {
            "backend": backend_name(name),
            "file": str(path),
            **score(ort.run, xs, ys, cfg),
        }
    for a in artefacts.values():
        a["bytes"] = Path(a["file"]).stat().st_size
    gates = check_gates(cfg, artefacts)
    metrics = {"threads": threads, "test_samples": len(xs), "artefacts": artefacts, "gates": gates}
    write_json_atomic(out_dir / "validation.json", metrics)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        raise GateFailed(
            "gate failed: "
            + "; ".join(
                f"{g['gate']}: measured {show(g['value'])}, limit {g['limit']}" for g in failed
            )
            + f". Everything measured is in {ctx.run_dir / 'report.md'}",
            result=StageResult(metrics=metrics),
        )
    return StageResult(metrics=metrics)
