"""The rows of a validation: each back end that runs the classifier, as a `Candidate`.

CPU rows are the torch model and every artefact of the export (ONNX Runtime, or the export's
TensorRT engines); GPU rows (`validate.gpu_backends`) are `torch_cuda`, `onnx_cuda`,
`onnx_fp16_cuda` and `onnx_tensorrt`. Each GPU back end that cannot run here (no GPU, a CPU
build of onnxruntime, no TensorRT) is returned with the reason instead, as the export records
the engine formats it could not build.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from export.variants import VARIANTS
from pipeline.artifacts import Manifest
from pipeline.errors import GpuUnavailable
from serving.predictor import OrtPredictor, TrtPredictor, ort_gpu_predictor

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline.validate")

Predict = Callable[[np.ndarray], np.ndarray]


class Candidate(NamedTuple):
    """A row of the validation: its back end, its file, `make(threads)` -> predict, and
    whether it runs on a GPU (CPU thread counts do not apply: swept once)."""

    backend: str
    path: Path
    make: Callable[[int], Predict]
    gpu: bool = False


GPU_BACKENDS = {
    "torch_cuda": "torch eager fp32 CUDA",
    "onnx_cuda": "onnxruntime CUDA EP fp32",
    "onnx_fp16_cuda": "onnxruntime CUDA EP fp16",
    "onnx_tensorrt": "onnxruntime TensorRT EP fp32",
}


def backend_name(artefact: str) -> str:
    """The back end of an export artefact, in words, from the variant registry."""
    if artefact == "onnx":
        return "onnxruntime CPU fp32"
    return VARIANTS[artefact].backend if artefact in VARIANTS else artefact


def torch_predictor(model: torch.nn.Module) -> Predict:
    """numpy in, numpy out, in inference mode, with the threads torch is set to."""

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return predict


def torch_cuda_predictor(model: torch.nn.Module) -> Predict:
    """A copy of the model on the first CUDA device: numpy in host memory in, logits in host
    memory out (copies included; `.cpu()` waits for the GPU). GpuUnavailable without one."""
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


def artefact_candidates(
    export: Manifest, model: torch.nn.Module, weights: Path
) -> dict[str, Candidate]:
    """The torch model (its file: `weights`) and every artefact of the export manifest."""

    def torch_with(threads: int) -> Predict:
        torch.set_num_threads(threads)
        return torch_predictor(model)

    candidates = {"torch": Candidate("torch eager fp32", weights, torch_with)}
    for name, rel in export.extra["artefacts"].items():
        path = export.path(rel)
        if path.suffix == ".engine":  # TensorRT: `t` (CPU threads) does not apply
            engine = _cached(lambda path=path: TrtPredictor(path).run)
            candidates[name] = Candidate(backend_name(name), path, lambda t, e=engine: e(), True)
        else:
            candidates[name] = Candidate(
                backend_name(name), path, lambda t, path=path: OrtPredictor(path, threads=t).run
            )
    return candidates


def _cached(load: Callable[[], Predict]) -> Callable[[], Predict]:
    """`load()` once: an engine is deserialized once for the score and the sweep."""
    held: list[Predict] = []

    def get() -> Predict:
        if not held:
            held.append(load())
        return held[0]

    return get


def _gpu_loaders(
    cfg: PipelineConfig, export: Manifest, model, weights: Path
) -> dict[str, tuple[Path, Callable[[], Predict]]]:
    """Each GPU back end's file and how to load it, in the order of GPU_BACKENDS."""
    v = cfg.validate_
    arts = export.extra["artefacts"]
    fp32 = export.path(arts["onnx"])
    fp16 = export.path(arts["onnx_fp16"]) if "onnx_fp16" in arts else None
    # one TensorRT profile holding every batch validation sends (predictions go 256 at a time)
    biggest = max(256, v.latency.throughput_batch, *v.sweep.batch_sizes)
    loaders: dict[str, tuple[Path, Callable[[], Predict]]] = {
        "torch_cuda": (weights, lambda: torch_cuda_predictor(model)),
        "onnx_cuda": (fp32, lambda: ort_gpu_predictor(fp32, "CUDAExecutionProvider").run),
    }
    if fp16 is not None:
        loaders["onnx_fp16_cuda"] = (
            fp16,
            lambda: ort_gpu_predictor(fp16, "CUDAExecutionProvider").run,
        )
    loaders["onnx_tensorrt"] = (
        fp32,
        lambda: (
            ort_gpu_predictor(
                fp32,
                "TensorrtExecutionProvider",
                opt_batch=v.latency.throughput_batch,
                max_batch=biggest,
            ).run
        ),
    )
    return loaders


def gpu_candidates(
    cfg: PipelineConfig, export: Manifest, model, weights: Path
) -> tuple[dict[str, Candidate], dict[str, str]]:
    """The GPU back ends of `validate.gpu_backends` that can run here, loaded; and, for those
    that cannot, the reason (or, with `require`, GpuUnavailable naming the first)."""
    mode = cfg.validate_.gpu_backends
    if mode == "off":
        return {}, {}
    found: dict[str, Candidate] = {}
    skipped: dict[str, str] = {}
    for name, (path, load) in _gpu_loaders(cfg, export, model, weights).items():
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
