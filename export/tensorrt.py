"""TensorRT engines from the exported ONNX model: the builder (needs a CUDA GPU). Running an
engine is `serving.predictor.TrtPredictor`'s job; `build_and_benchmark` ties both together for

    python -m pipeline tensorrt runs/digits-resnet18 --precision fp16 --batch 1 32

Written for TensorRT 11 (and 10): strongly typed networks, no FP16/INT8 builder flags, no
calibrator. An engine's precision is its ONNX graph's: `fp32` from the FP32 export, `fp16`
from the FP16 variant, `int8` from explicit symmetric INT8 Q/DQ (`export.int8` with
`activations: symmetric` and `bias: float`; onnxruntime's default uint8 activations with zero
points are refused, and checked for first). One optimisation profile over the batch axis (min,
opt, max), a timing cache reused across builds, and a JSON record beside each engine
(`model.fp16.engine` -> `model.fp16.json`; its fields, writer and reader are
`serving.engine_record`), so that serving the engine (`serving.predictor.TrtPredictor`) and
packaging it for Triton (`export.triton`, platform `tensorrt_plan`) need nothing but the two
files.

TensorRT and torch import lazily: on a machine without tensorrt or a GPU, `require_tensorrt` raises a
`GpuUnavailable` (exit 7) whose message says what is missing and how to install it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.artifacts import MANIFEST, Manifest, write_atomic
from pipeline.errors import ConfigError, StageError
from serving.bench import benchmark_engine
from serving.dtypes import tensorrt_name
from serving.engine_record import EngineRecord, Profile, TensorRecord, read_onnx_metadata
from serving.predictor import OrtPredictor, require_tensorrt

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


def _check_int8_qdq(onnx_path: Path) -> None:
    """The builder's Q/DQ check: explicit quantization with int8 zero points of 0 only."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qnodes:
        raise ConfigError(
            f"{onnx_path.name} has no Q/DQ nodes: TensorRT builds INT8 engines from explicitly "
            "quantized ONNX only (no calibrator in TensorRT 11); pass a symmetric INT8 QDQ model"
        )
    inits = {i.name: i for i in model.graph.initializer}
    for n in qnodes:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype != np.int8 or np.any(zp != 0):
                raise ConfigError(
                    f"{onnx_path.name}: node {n.name or n.op_type} has a {zp.dtype} zero point "
                    f"{zp.ravel()[:4]}; TensorRT accepts symmetric INT8 only (int8, zero point 0). "
                    "Export with export.int8.activations=symmetric and export.int8.bias=float"
                )


def graph_precision(onnx_path: Path) -> str:
    """What a strongly typed build of this ONNX file runs in: int8 (Q/DQ nodes), fp16 (FP16
    initialisers) or fp32."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _network(trt, builder):
    """A strongly typed network: always so in TensorRT 11 (the flag is gone or implied); asked
    for explicitly in TensorRT 10, where weak typing was the default."""
    major = int(trt.__version__.split(".")[0])
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return builder.create_network(1 << int(flag) if flag is not None and major < 11 else 0)


def _timing_cache(trt, config, path: Path | None):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    profile: Profile | None = None,
    timing_cache: Path | None = None,
    workspace_gib: float = 2.0,
) -> dict[str, Any]:
    """Parse the ONNX file, build a serialized engine, write it (atomically) to engine_path with
    a JSON record beside it, and return that record.

    Networks are strongly typed (the only kind TensorRT 11 builds; no FP16/INT8 builder flags):
    the precision is the ONNX graph's own, so `precision` is checked against it: fp32 from the
    FP32 export, fp16 from the FP16 variant, int8 from a symmetric Q/DQ model. The timing
    cache, if given, is read before and written after the build, so later builds reuse it.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    found = graph_precision(onnx_path)  # checked before a GPU is needed
    if found != precision:
        raise ConfigError(
            f"{onnx_path.name} is an {found} graph; a strongly typed {precision} engine needs the "
            f"{ {'fp32': 'FP32 export (onnx)', 'fp16': 'FP16 variant (onnx_fp16)', 'int8': 'symmetric INT8 Q/DQ model'}[precision] }"
        )
    if precision == "int8":
        _check_int8_qdq(onnx_path)
    profile = profile or Profile()
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StageError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    _timing_cache(trt, config, timing_cache)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(
                f"input {t.name!r} has dynamic axes beyond the batch ({shape}); export with a "
                "fixed image size"
            )
        rest = shape[1:]
        opt.set_shape(t.name, [profile.min, *rest], [profile.opt, *rest], [profile.max, *rest])
    config.add_optimization_profile(opt)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise StageError(f"TensorRT failed to build an engine for {onnx_path} (see its log)")
    seconds = time.perf_counter() - t0
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    data = bytes(blob)
    write_atomic(engine_path, data)
    record = EngineRecord(
        **bound_to(trt),
        precision=precision,
        profile=profile,
        onnx=onnx_path.name,
        build_s=round(seconds, 2),
        inputs=tensor_records(trt, [network.get_input(i) for i in range(network.num_inputs)]),
        outputs=tensor_records(trt, [network.get_output(i) for i in range(network.num_outputs)]),
        metadata=read_onnx_metadata(onnx_path),
        engine_sha256=hashlib.sha256(data).hexdigest(),
    )
    record.write(engine_path)
    log.info(
        "TensorRT %s engine for %s built in %.1f s -> %s",
        precision,
        onnx_path.name,
        seconds,
        engine_path,
    )
    return record.to_dict()


def bound_to(trt) -> dict[str, str]:
    """What an engine is bound to: TensorRT version and GPU (an engine runs only there)."""
    import torch  # CUDA: only where an engine is built

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
    }


def tensor_records(trt, tensors) -> tuple[TensorRecord, ...]:
    """Name, dtype (numpy's name; TensorRT's own for a type numpy lacks, such as fp8, which
    Triton lacks too) and shape (-1 for a dynamic axis) of network inputs or outputs."""
    return tuple(
        TensorRecord(t.name, tensorrt_name(trt, t.dtype), tuple(int(d) for d in t.shape))
        for t in tensors
    )


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """`<run>/tensorrt/<model>.<precision>.engine` for a model of a run's export stage (stage
    folders stay as the pipeline made them); beside the ONNX file otherwise."""
    name = onnx_path.with_suffix(f".{precision}.engine").name
    m = Manifest.load(onnx_path.parent) if (onnx_path.parent / MANIFEST).is_file() else None
    if m is not None and m.stage == "export":
        return onnx_path.parent.parent / "tensorrt" / name
    return onnx_path.with_name(name)


def build_and_benchmark(
    onnx_path: Path,
    engine_path: Path | None,
    *,
    precision: str,
    batches: list[int],
    iters: int,
) -> dict[str, Any]:
    """Build an engine, time it per batch size and check it against ONNX Runtime; the result
    is also written beside the engine as JSON."""
    require_tensorrt()  # fail before anything is written
    engine = engine_path or default_engine_path(onnx_path, precision)
    engine.parent.mkdir(parents=True, exist_ok=True)
    build_engine(
        onnx_path,
        engine,
        precision=precision,
        profile=Profile(1, min(32, max(batches)), max(batches)),
        timing_cache=engine.parent / "timing.cache",
    )
    ort = OrtPredictor(onnx_path)
    shape = tuple(ort.session.get_inputs()[0].shape[1:])  # fixed C, H, W (checked by the build)
    n = min(16, max(batches))  # within the engine's batch profile
    x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    res = benchmark_engine(
        engine, shape, batches, iters=iters, reference=x, reference_logits=ort.run(x)
    )
    engine.with_name(engine.stem + ".benchmark.json").write_text(json.dumps(res, indent=2))
    return res
