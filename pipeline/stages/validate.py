"""The validate stage: accuracy and latency of every artefact on the test split, against gates.

Every artefact is scored on the same preprocessed test tensors; latency is batch 1
(warm-up, then p50/p90/p99) and throughput at a larger batch, each back end with the same
thread count; then, for the report, a sweep over batch sizes and thread counts
(`validate.sweep`). The predictions (`predictions.npz`) and the most confident mistakes with
their images (`mistakes.npz`) are kept for the report's confusion matrix and thumbnails.
Everything is recorded before a failed gate is raised; the runner then writes the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.artifacts import Manifest, StageContext, StageResult, write_json_atomic
from pipeline.errors import GateFailed
from pipeline.gates import at_least, at_most, show
from pipeline.timing import latency, sweep_point, throughput

if TYPE_CHECKING:
    import torch

    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline.validate")


def backend_name(artefact: str) -> str:
    from export.variants import VARIANTS

    if artefact == "onnx":
        return "onnxruntime CPU fp32"
    return VARIANTS[artefact].backend if artefact in VARIANTS else artefact


def test_arrays(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    test = ctx.data.test
    return test.stack().numpy().astype(np.float32), np.asarray(test.labels)


def predictions(
    predict: Callable[[np.ndarray], np.ndarray], xs: np.ndarray, chunk: int = 256
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
    predict: Callable[[np.ndarray], np.ndarray], xs: np.ndarray, ys: np.ndarray, cfg: PipelineConfig
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


def sweep(make: Callable[[int], Callable], xs: np.ndarray, cfg: PipelineConfig, all_threads: int):
    """Latency per (threads, batch size); `make(threads)` gives a predictor using that many."""
    sw = cfg.validate_.sweep
    points = []
    for t in sw.threads:
        threads = t or all_threads
        predict = make(threads)
        for b in sw.batch_sizes:
            batch = np.resize(xs, (b, *xs.shape[1:])).astype(np.float32)
            point = sweep_point(
                lambda batch=batch, predict=predict: predict(batch), b,
                min_runs=sw.min_runs, max_seconds=sw.max_seconds, warmup=sw.warmup,
            )  # fmt: skip
            points.append({"threads": threads, **point})
    return points


def mistakes(xs, ys, pred, conf, preset: dict, n: int) -> dict[str, np.ndarray]:
    """The n most confident wrong predictions, with the images as uint8 HWC for display."""
    wrong = np.flatnonzero(pred != ys)
    pick = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    mean = np.asarray(preset["mean"], np.float32)[:, None, None]
    std = np.asarray(preset["std"], np.float32)[:, None, None]
    images = np.clip((xs[pick] * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return {
        "index": pick,
        "true": ys[pick],
        "pred": pred[pick],
        "conf": conf[pick],
        "images": images.transpose(0, 2, 3, 1),
    }


def torch_predictor(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """numpy in, numpy out, in inference mode, with the threads torch is set to."""
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


def run(
    cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext
) -> StageResult:
    import torch

    from pipeline.models.io import build_backbone, load_weights, read_spec
    from serving.predictor import OrtPredictor

    all_threads = cfg.validate_.latency.threads or torch.get_num_threads()
    torch.set_num_threads(all_threads)
    prune, export = inputs["prune"], inputs["export"]
    spec = read_spec(prune.folder, "classifier")
    model = load_weights(build_backbone(spec), prune.folder, "classifier")
    xs, ys = test_arrays(ctx)

    def torch_with(threads: int):
        torch.set_num_threads(threads)
        return torch_predictor(model)

    candidates = {"torch": ("torch eager fp32", prune.path("classifier.safetensors"), torch_with)}
    for name, rel in export.extra["artefacts"].items():
        path = export.path(rel)
        if path.suffix == ".engine":  # TensorRT: `t` (CPU threads) does not apply
            candidates[name] = (backend_name(name), path, lambda t, path=path: _engine(path))
        else:
            candidates[name] = (
                backend_name(name), path, lambda t, path=path: OrtPredictor(path, threads=t).run
            )  # fmt: skip
    artefacts: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {"labels": ys}
    for name, (backend, path, make) in candidates.items():
        log.info("validating %s (%s) on %d test images", name, backend, len(xs))
        scored, pred, conf = score(make(all_threads), xs, ys, cfg)
        artefacts[name] = {"backend": backend, "file": str(path), **scored}
        artefacts[name]["bytes"] = Path(path).stat().st_size
        preds[f"pred_{name}"], preds[f"conf_{name}"] = pred, conf
        if name == "torch":
            worst = mistakes(xs, ys, pred, conf, spec["preset"], cfg.validate_.mistakes)
            np.savez_compressed(out_dir / "mistakes.npz", **worst)
        if cfg.validate_.sweep.enabled:
            artefacts[name]["sweep"] = sweep(make, xs, cfg, all_threads)
    torch.set_num_threads(all_threads)
    np.savez_compressed(out_dir / "predictions.npz", **preds)
    gates = check_gates(cfg, artefacts)
    metrics = {
        "threads": all_threads,
        "test_samples": len(xs),
        "classes": spec["classes"],
        "timing": timing_method(cfg),
        "artefacts": artefacts,
        "gates": gates,
    }
    write_json_atomic(out_dir / "validation.json", metrics)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        raise GateFailed(
            "gate failed: "
            + "; ".join(
                f"{g['gate']}: measured {show(g['value'])}, limit {g['limit']}" for g in failed
            )
            + f". Everything measured is in {ctx.run_dir / 'report.html'}",
            result=StageResult(metrics=metrics),
        )
    return StageResult(metrics=metrics)


def _engine(path: Path):
    from serving.predictor import TrtPredictor

    return TrtPredictor(path).run


def timing_method(cfg: PipelineConfig) -> str:
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
    return text
