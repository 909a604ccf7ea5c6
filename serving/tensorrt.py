"""TensorRT engines from the exported ONNX model: build, run and benchmark (needs a CUDA GPU).

    python -m pipeline tensorrt runs/digits-resnet18 --precision fp16 --batch 1 32

Uses the TensorRT 10 Python API (named I/O tensors, `execute_async_v3`) with torch CUDA tensors
as device buffers. The engine gets one optimisation profile over the dynamic batch axis
(min 1, opt and max the largest benchmark batch). Precisions: `fp32`, `fp16` (the builder
may choose FP16 kernels), and `int8` for an ONNX file with explicit symmetric INT8 Q/DQ nodes
(TensorRT 10 no longer calibrates implicitly; onnxruntime's default QDQ export uses uint8
activations with zero points, which TensorRT rejects, so `int8` checks for that first).

Everything imports lazily: on a machine without tensorrt or a GPU, `require_tensorrt` raises a
`GpuUnavailable` whose message says what is missing and how to install it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


class GpuUnavailable(PipelineError):
    """TensorRT or a CUDA device is missing; the message names which and the fix."""

    exit_code = 7


def require_tensorrt():
    """The tensorrt module and a visible CUDA device, or GpuUnavailable saying what is missing."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise GpuUnavailable("TensorRT benchmarking uses torch for CUDA buffers") from exc
    if not torch.cuda.is_available():
        raise GpuUnavailable(
            "TensorRT needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
            "run this on a machine with an NVIDIA GPU and driver"
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise GpuUnavailable(
            "the tensorrt package is not installed: pip install -e '.[gpu]' (TensorRT 10)"
        ) from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise GpuUnavailable(f"TensorRT {trt.__version__} is too old: this code needs 10 or newer")
    return trt


def _check_int8_qdq(onnx_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qnodes:
        raise PipelineError(
            f"{onnx_path.name} has no Q/DQ nodes: TensorRT 10 builds INT8 engines from explicitly "
            "quantized ONNX only; pass a symmetric INT8 QDQ model"
        )
    inits = {i.name: i for i in model.graph.initializer}
    for n in qnodes:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype != np.int8 or np.any(zp != 0):
                raise PipelineError(
                    f"{onnx_path.name}: node {n.name or n.op_type} has a {zp.dtype} zero point "
                    f"{zp.ravel()[:4]}; TensorRT accepts symmetric INT8 only (int8, zero point 0). "
                    "Quantize with activation_type=QInt8 and ActivationSymmetric=True"
                )


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    max_batch: int = 32,
    workspace_gib: float = 2.0,
) -> Path:
    """Parse the ONNX file, build a serialized engine and write it (atomically) to engine_path."""
    trt = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in PRECISIONS:
        raise PipelineError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        _check_int8_qdq(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PipelineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may run in FP16
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise PipelineError(
                f"input {t.name!r} has dynamic axes beyond the batch ({shape}); export with a "
                "fixed image size"
            )
        lo, hi = [1, *shape[1:]], [max_batch, *shape[1:]]
        profile.set_shape(t.name, lo, hi, hi)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise PipelineError(f"TensorRT failed to build an engine for {onnx_path} (see its log)")
    tmp = engine_path.with_name(engine_path.name + ".partial")
    tmp.write_bytes(bytes(blob))
    tmp.replace(engine_path)
    log.info(
        "TensorRT %s engine for %s built in %.1f s -> %s",
        precision,
        onnx_path.name,
        time.perf_counter() - t0,
        engine_path,
    )
    return engine_path


class EngineRunner:
    """A deserialized engine with one execution context, run on torch CUDA tensors."""

    def __init__(self, engine_path: str | Path) -> None:
        import torch

        trt = require_tensorrt()
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise PipelineError(
                f"{engine_path} is not an engine this TensorRT/GPU can load; rebuild it here "
                "(engines are specific to the TensorRT version and the GPU model)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise PipelineError(f"expected one image input, the engine has {self.inputs}")
        self.stream = torch.cuda.Stream()

    def _dtype(self, name: str):
        t, trt = self.torch, self.trt
        table = {
            trt.float32: t.float32,
            trt.float16: t.float16,
            trt.bfloat16: t.bfloat16,
            trt.int8: t.int8,
            trt.int32: t.int32,
            trt.int64: t.int64,
            trt.bool: t.bool,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, batch):
        """Run a CUDA tensor batch (N, C, H, W); returns the first output as a CUDA tensor."""
        name = self.inputs[0]
        x = batch.to(self._dtype(name)).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for o in self.outputs:
            y = self.torch.empty(
                tuple(self.context.get_tensor_shape(o)), dtype=self._dtype(o), device=x.device
            )
            self.context.set_tensor_address(o, y.data_ptr())
            outs.append(y)
        self.stream.wait_stream(self.torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise PipelineError("TensorRT execution failed (see its log)")
        self.torch.cuda.current_stream().wait_stream(self.stream)
        return outs[0]


def benchmark(
    engine_path: str | Path,
    shape: tuple[int, int, int],
    batches: list[int],
    *,
    warmup: int = 20,
    iters: int = 200,
    reference: np.ndarray | None = None,
    reference_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """GPU latency (CUDA-synchronised per call) and throughput per batch size; parity if given.

    `reference` is a float32 NCHW batch and `reference_logits` the ONNX Runtime logits for it.
    """
    runner = EngineRunner(engine_path)
    torch = runner.torch
    dev = torch.device("cuda")
    out: dict[str, Any] = {"engine": str(engine_path), "gpu": torch.cuda.get_device_name(dev)}
    for b in batches:
        x = torch.randn(b, *shape, device=dev)
        for _ in range(warmup):
            runner(x)
        torch.cuda.synchronize()
        times = np.empty(iters)
        for i in range(iters):
            t0 = time.perf_counter()
            runner(x)
            torch.cuda.synchronize()
            times[i] = time.perf_counter() - t0
        ms = times * 1e3
        out[f"batch_{b}"] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "images_per_s": float(b / times.mean()),
        }
    if reference is not None and reference_logits is not None:
        got = runner(torch.from_numpy(reference).to(dev)).float().cpu().numpy()
        out["parity"] = {
            "max_abs_diff": float(np.abs(got - reference_logits).max()),
            "top1_agreement": float((got.argmax(1) == reference_logits.argmax(1)).mean()),
            "samples": int(len(reference)),
        }
    return out
