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
formats it could not build.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline.artifacts import Manifest, StageContext, StageResult, write_json_atomic
from pipeline.errors import GateFailed, GpuUnavailable
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


def sweep(
    make: Callable[[int], Callable],
    xs: np.ndarray,
    cfg: PipelineConfig,
    all_threads: int,
    threads: list[int] | None = None,
):
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


def torch_cuda_predictor(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A copy of the model on the first CUDA device: numpy in host memory in, logits in host
    memory out (copies included; `.cpu()` waits for the GPU). GpuUnavailable without one."""
    import copy

    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise GpuUnavailable(
                f"this torch ({torch.__version__}) is a CPU-only build; a CUDA build of torch "
                "and an NVIDIA GPU run the classifier on CUDA"
            )
        raise GpuUnavailable("no CUDA GPU is visible to torch (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    on_gpu = copy.deepcopy(model).to(dev).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return on_gpu(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return predict


class Candidate(NamedTuple):
    """A row of the validation: its back end, its file, `make(threads)` -> predict, and
    whether it runs on a GPU (CPU thread counts do not apply: swept once)."""

    backend: str
    path: Path
    make: Callable[[int], Callable[[np.ndarray], np.ndarray]]
    gpu: bool = False


GPU_BACKENDS = {
    "torch_cuda": "torch eager fp32 CUDA",
    "onnx_cuda": "onnxruntime CUDA EP fp32",
    "onnx_fp16_cuda": "onnxruntime CUDA EP fp16",
    "onnx_tensorrt": "onnxruntime TensorRT EP fp32",
}


def gpu_candidates(
    cfg: PipelineConfig, export: Manifest, model, weights: Path
) -> tuple[dict[str, Candidate], dict[str, str]]:
    """The GPU back ends of `validate.gpu_backends` that can run here, loaded; and, for those
    that cannot, the reason (or, with `require`, GpuUnavailable naming the first)."""
    from serving.predictor import ort_gpu_predictor

    mode = cfg.validate_.gpu_backends
    if mode == "off":
        return {}, {}
    v = cfg.validate_
    arts = export.extra["artefacts"]
    fp32 = export.path(arts["onnx"])
    fp16 = export.path(arts["onnx_fp16"]) if "onnx_fp16" in arts else None
    # one TensorRT profile holding every batch validation sends (predictions go 256 at a time)
    biggest = max(256, v.latency.throughput_batch, *v.sweep.batch_sizes)
    loaders: dict[str, tuple[Path, Callable[[], Callable]]] = {
        "torch_cuda": (weights, lambda: torch_cuda_predictor(model)),
        "onnx_cuda": (fp32, lambda: ort_gpu_predictor(fp32, "CUDAExecutionProvider").run),
    }
    if fp16 is not None:
        loaders["onnx_fp16_cuda"] = (
            fp16, lambda: ort_gpu_predictor(fp16, "CUDAExecutionProvider").run
        )  # fmt: skip
    loaders["onnx_tensorrt"] = (
        fp32,
        lambda: ort_gpu_predictor(
            fp32, "TensorrtExecutionProvider", opt_batch=v.latency.throughput_batch,
            max_batch=biggest,
        ).run,
    )  # fmt: skip
    found: dict[str, Candidate] = {}
    skipped: dict[str, str] = {}
    for name, (path, load) in loaders.items():
        try:
            predict = load()
        except GpuUnavailable as exc:
            if mode == "require":
                raise GpuUnavailable(
                    f"validate.gpu_backends is 'require' and {name} ({GPU_BACKENDS[name]}) "
                    f"cannot run: {exc}"
                ) from exc
            skipped[name] = str(exc)
            log.debug("%s skipped: %s", name, exc)
            continue
        found[name] = Candidate(GPU_BACKENDS[name], path, lambda t, p=predict: p, gpu=True)
    if skipped:  # expected on a CPU machine (gpu_backends: auto): one line, reasons recorded
        log.info(
            "GPU back ends not measured here: %s (why: validation.json and the report; "
            "validate.gpu_backends=off leaves them out)",
            ", ".join(skipped),
        )
    return found, skipped


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

    weights = prune.path("classifier.safetensors")
    candidates = {"torch": Candidate("torch eager fp32", weights, torch_with)}
    for name, rel in export.extra["artefacts"].items():
        path = export.path(rel)
        if path.suffix == ".engine":  # TensorRT: `t` (CPU threads) does not apply
            engine = _cached(lambda path=path: _engine(path))
            candidates[name] = Candidate(backend_name(name), path, lambda t, e=engine: e(), True)
        else:
            candidates[name] = Candidate(
                backend_name(name), path, lambda t, path=path: OrtPredictor(path, threads=t).run
            )  # fmt: skip
    on_gpu, skipped = gpu_candidates(cfg, export, model, weights)
    candidates |= on_gpu
    artefacts: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {"labels": ys}
    for name, (backend, path, make, gpu) in candidates.items():
        log.info("validating %s (%s) on %d test images", name, backend, len(xs))
        if gpu:  # the host side of GPU rows runs with the stage's thread count
            torch.set_num_threads(all_threads)
        scored, pred, conf = score(make(all_threads), xs, ys, cfg)
        artefacts[name] = {
            "backend": backend,
            "device": "cuda" if gpu else "cpu",
            "file": str(path),
        }
        artefacts[name] |= scored
        artefacts[name]["bytes"] = Path(path).stat().st_size
        preds[f"pred_{name}"], preds[f"conf_{name}"] = pred, conf
        if name == "torch":
            worst = mistakes(xs, ys, pred, conf, spec.preset.model_dump(), cfg.validate_.mistakes)
            np.savez_compressed(out_dir / "mistakes.npz", **worst)
        if cfg.validate_.sweep.enabled:
            # GPU rows: CPU threads do not apply, one pass recorded at the stage's thread count
            once = [all_threads] if gpu else None
            artefacts[name]["sweep"] = sweep(make, xs, cfg, all_threads, threads=once)
    torch.set_num_threads(all_threads)
    np.savez_compressed(out_dir / "predictions.npz", **preds)
    gates = check_gates(cfg, artefacts)
    metrics = {
        "threads": all_threads,
        "test_samples": len(xs),
        "classes": list(spec.classes),
        "timing": timing_method(cfg, gpu=any(c.gpu for c in candidates.values())),
        "artefacts": artefacts,
        "gates": gates,
    }
    if skipped:
        metrics["skipped"] = skipped
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


def _cached(load: Callable[[], Callable]) -> Callable[[], Callable]:
    """`load()` once: an engine is deserialized once for the score and the sweep."""
    held: list[Callable] = []

    def get() -> Callable:
        if not held:
            held.append(load())
        return held[0]

    return get


def timing_method(cfg: PipelineConfig, gpu: bool = False) -> str:
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
