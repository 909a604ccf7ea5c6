"""A Triton Inference Server model repository from an exported ONNX model or a built TensorRT
engine.

    python -m pipeline triton runs/digits-resnet18 --out model_repository --kind gpu --tensorrt fp16
    python -m pipeline triton runs/digits-resnet18 --artefact tensorrt_fp16 --out model_repository \\
        --name classifier_trt
    docker run --gpus all -p8000:8000 -p8001:8001 -v $PWD/model_repository:/models \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models

Writes `<out>/<name>/config.pbtxt`, `<out>/<name>/<version>/model.onnx` and
`<out>/<name>/labels.txt`; for an engine `<version>/model.plan` (platform `tensorrt_plan`) and
its JSON record as `<name>/engine.json`, the config's tensors, batch size and metadata taken
from that record (written by `export.tensorrt.build_engine`): `max_batch_size` is the
profile's max batch, instances are GPU instances, and the engine runs only in a Triton whose
TensorRT version and GPU are the record's (`parameters` repeats them). The configuration is built as tritonclient's `ModelConfig` protobuf,
written with protobuf's text format and parsed back (which rejects any field Triton does not
know), so a malformed config fails here, not at server start. Shapes, names and data types come
from the ONNX graph: a dynamic batch axis gives `max_batch_size` and dynamic batching (Triton
merges concurrent requests into one batch), a fixed one gives `max_batch_size: 0`. Triton serves
the bare model: clients send preprocessed float32 NCHW tensors; the preprocessing (size, mean,
std) is recorded under `parameters` for them to read from the model's config endpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ArtefactError, ConfigError, StageError
from pipeline.preprocessing import Preprocessing
from serving.dtypes import triton_of_name, triton_of_onnx
from serving.engine_record import (
    EngineRecord,
    engine_metadata,
    engine_record_path,
    is_engine,
    read_engine_record,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    shape: tuple[int, ...]  # -1 for a dynamic axis, batch axis included


def _model_config_pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:
        raise ConfigError(
            "writing a Triton repository needs tritonclient's protobufs: "
            "pip install -e '.[serve]' (tritonclient[grpc])"
        ) from exc
    return model_config_pb2, text_format


def onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, str]]:
    """Graph inputs (initialisers excluded), outputs and metadata of an ONNX file."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX
        raise ArtefactError(
            f"cannot read {path} as ONNX ({type(exc).__name__}); it is truncated or not a model"
        ) from None
    inits = {i.name for i in model.graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        data_type = triton_of_onnx(t.elem_type)
        if data_type is None:
            raise ConfigError(
                f"{path}: tensor {v.name!r} has ONNX type {t.elem_type}, which Triton lacks"
            )
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(v.name, data_type, dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [spec(v) for v in model.graph.output]
    meta = {p.key: p.value for p in model.metadata_props}
    return inputs, outputs, meta


def engine_io(
    engine: Path,
) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, str], EngineRecord]:
    """Inputs, outputs and model metadata of a TensorRT engine, from its JSON record; and the
    record. The metadata is the record's copy, or the ONNX file's it names beside the engine."""
    record = read_engine_record(engine)
    rec_name = engine_record_path(engine).name
    if record is None:
        raise ArtefactError(
            f"{engine} has no record {rec_name} beside it: Triton's config takes the engine's "
            "tensor names, shapes and batch profile from it; rebuild it with `python -m "
            "pipeline tensorrt RUN` or the export stage's tensorrt_* formats"
        )
    record.require("inputs", "outputs", "profile", what="tensor names and shapes", engine=engine)

    def spec(t) -> TensorSpec:
        data_type = triton_of_name(t.dtype)
        if data_type is None:
            raise ConfigError(
                f"{rec_name}: tensor {t.name!r} has type {t.dtype!r}, which Triton lacks"
            )
        return TensorSpec(t.name, data_type, t.shape)

    inputs = [spec(t) for t in record.inputs]
    outputs = [spec(t) for t in record.outputs]
    meta = engine_metadata(engine, record, decode=False)
    return inputs, outputs, {k: str(v) for k, v in meta.items()}, record


def with_preprocessing(src: Path, dst: Path) -> Path:
    """`src` with its preprocessing inside the graph: uint8 RGB pixels (N, H, W, 3) at the
    model's input size in; cast, NCHW, /255, (x - mean) / std as nodes; `logits` and
    `probabilities` (softmax) out. Clients send pixels and need no normalisation code; resizing
    to the input size stays with them (the metadata says the size)."""
    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    missing = Preprocessing.missing(meta)
    if missing:
        raise ConfigError(
            f"{src} has no {', '.join(missing)} in its metadata; preprocessing can be built in "
            "only for models the export stage wrote"
        )
    pre = Preprocessing.from_metadata(meta, source=str(src))
    size = pre.input_size
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    g = model.graph
    image = g.input[0]
    batch = image.type.tensor_type.shape.dim[0]
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, size, size, 3])
    pixels.type.tensor_type.shape.dim[0].CopyFrom(batch)
    g.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(255.0, np.float32), "pre_255"),
            numpy_helper.from_array(mean, "pre_mean"),
            numpy_helper.from_array(std, "pre_std"),
        ]
    )
    nodes = [
        helper.make_node("Cast", ["pixels"], ["pre_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pre_f"], ["pre_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["pre_nchw", "pre_255"], ["pre_unit"]),
        helper.make_node("Sub", ["pre_unit", "pre_mean"], ["pre_centred"]),
        helper.make_node("Div", ["pre_centred", "pre_std"], [image.name]),
    ]
    logits = g.output[0]
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)
    probs.type.tensor_type.CopyFrom(logits.type.tensor_type)
    new_nodes = (
        nodes
        + list(g.node)
        + [helper.make_node("Softmax", [logits.name], ["probabilities"], axis=-1)]
    )
    del g.node[:]
    g.node.extend(new_nodes)
    g.input.remove(image)
    g.input.insert(0, pixels)
    g.output.append(probs)
    for p in model.metadata_props:
        if p.key == "layout":
            p.value = "NHWC, RGB, uint8 pixels at input_size; normalisation inside the graph"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


def _warmup(cfg, pb2, batched: bool) -> None:
    """One zero-filled request per input at batch 1, run when Triton loads the model, so the
    first real request does not pay for allocation and kernel selection."""
    w = cfg.model_warmup.add(name="zeros", batch_size=1 if batched else 0)
    for t in cfg.input:
        w.inputs[t.name].data_type = t.data_type
        w.inputs[t.name].dims.extend(t.dims)
        w.inputs[t.name].zero_data = True


def _check_common(kind: str, max_batch_size: int | None, instances: int) -> None:
    if kind not in ("cpu", "gpu"):
        raise ConfigError(f"instance kind {kind!r}: use 'cpu' or 'gpu'")
    if (max_batch_size is not None and max_batch_size < 1) or instances < 1:
        raise ConfigError("max_batch_size and instances must be at least 1")


def _assemble(
    pb2,
    name: str,
    platform: str,
    io: tuple[list[TensorSpec], list[TensorSpec], dict[str, str]],
    *,
    max_batch_size: int,
    instances: int,
    kind: str,
    max_queue_delay_us: int,
    labels: bool,
    warmup: bool,
    source: Path,
):
    """The parts of a ModelConfig every platform shares: tensors (the batch axis left out when
    batched), labels, instance group, dynamic batching, warm-up and the metadata as
    parameters."""
    inputs, outputs, meta = io
    batched = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    if not batched:
        log.warning(
            "%s has a fixed batch axis: max_batch_size 0 and no dynamic batching; re-export "
            "with a dynamic batch axis to let Triton batch requests",
            source,
        )
    cfg = pb2.ModelConfig(name=name, platform=platform)
    cfg.max_batch_size = max_batch_size if batched else 0
    for t in inputs:
        cfg.input.add(
            name=t.name,
            data_type=pb2.DataType.Value(t.data_type),
            dims=list(t.shape[1:] if batched else t.shape),
        )
    for t in outputs:
        out = cfg.output.add(
            name=t.name,
            data_type=pb2.DataType.Value(t.data_type),
            dims=list(t.shape[1:] if batched else t.shape),
        )
        if labels and "classes" in meta and t.name != "probabilities":
            out.label_filename = "labels.txt"
    cfg.instance_group.add(
        count=instances,
        kind=pb2.ModelInstanceGroup.Kind.Value("KIND_GPU" if kind == "gpu" else "KIND_CPU"),
    )
    if batched:
        preferred = [b for b in (8, 16, 32, 64) if b <= max_batch_size] or [max_batch_size]
        cfg.dynamic_batching.preferred_batch_size.extend(preferred)
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if warmup:
        _warmup(cfg, pb2, batched)
    for key in (*Preprocessing.KEYS, "classes"):
        if key in meta:
            cfg.parameters[key].string_value = meta[key]
    return cfg


def build_config(
    path: Path,
    name: str,
    *,
    max_batch_size: int | None = 64,
    instances: int = 1,
    kind: str = "cpu",
    tensorrt: str | None = None,
    max_queue_delay_us: int = 500,
    labels: bool = True,
    warmup: bool = True,
):
    """The ModelConfig protobuf for an ONNX file; see the module docstring."""
    pb2, _ = _model_config_pb2()
    _check_common(kind, max_batch_size, instances)
    if tensorrt not in (None, "fp32", "fp16"):
        raise ConfigError(f"tensorrt precision {tensorrt!r}: use fp16 or fp32 (or leave it out)")
    if tensorrt and kind != "gpu":
        raise ConfigError("the TensorRT accelerator runs on GPU instances: add --kind gpu")
    cfg = _assemble(
        pb2,
        name,
        "onnxruntime_onnx",
        onnx_io(path),
        max_batch_size=max_batch_size or 64,
        instances=instances,
        kind=kind,
        max_queue_delay_us=max_queue_delay_us,
        labels=labels,
        warmup=warmup,
        source=path,
    )
    if tensorrt:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = tensorrt.upper()
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
        # Triton's ONNX Runtime backend keeps the engines it builds, so a restart loads them.
        acc.parameters["trt_engine_cache_enable"] = "true"
        acc.parameters["trt_engine_cache_path"] = f"/tmp/triton-trt-cache/{name}"
    return cfg


def build_plan_config(
    engine: Path,
    name: str,
    *,
    max_batch_size: int | None = None,
    instances: int = 1,
    kind: str = "gpu",
    tensorrt: str | None = None,
    max_queue_delay_us: int = 500,
    labels: bool = True,
    warmup: bool = True,
):
    """The ModelConfig protobuf for a TensorRT engine (platform `tensorrt_plan`), from its JSON
    record: tensors, `max_batch_size` (default and ceiling: the profile's max batch), GPU
    instances, dynamic batching, warm-up, the model's metadata and what the engine is bound to
    (TensorRT version, GPU) under `parameters`."""
    pb2, _ = _model_config_pb2()
    _check_common(kind, max_batch_size, instances)
    if kind != "gpu":
        raise ConfigError("a TensorRT engine runs on GPU instances only: use --kind gpu")
    if tensorrt is not None:
        raise ConfigError(
            "--tensorrt asks Triton's ONNX Runtime backend for TensorRT; this model is already a "
            "TensorRT engine: leave it out"
        )
    inputs, outputs, meta, record = engine_io(engine)
    profile = record.profile
    if profile.min > 1:
        raise ConfigError(
            f"{engine.name}'s profile starts at batch {profile.min}; Triton sends batches from "
            "1 up: rebuild the engine with a min batch of 1 (export.engine.min_batch)"
        )
    top = profile.max
    if max_batch_size is not None and max_batch_size > top:
        raise ConfigError(
            f"--max-batch {max_batch_size} is over {engine.name}'s profile max batch {top}: "
            "Triton would send batches the engine cannot run; lower it, or rebuild the engine "
            "with a larger max batch"
        )
    cfg = _assemble(
        pb2,
        name,
        "tensorrt_plan",
        (inputs, outputs, meta),
        max_batch_size=max_batch_size or top,
        instances=instances,
        kind=kind,
        max_queue_delay_us=max_queue_delay_us,
        labels=labels,
        warmup=warmup,
        source=engine,
    )
    for key in ("tensorrt", "gpu", "compute_capability", "precision"):
        if getattr(record, key):
            cfg.parameters[f"engine_{key}"].string_value = str(getattr(record, key))
    return cfg


def write_repository(
    model_path: str | Path,
    out: str | Path,
    *,
    name: str = "classifier",
    version: int = 1,
    overwrite: bool = False,
    preprocessing: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Write (or replace, with overwrite) one model of a repository from an ONNX file or a
    TensorRT engine (`.engine`, `.plan`, with its JSON record beside it); returns the model
    folder."""
    pb2, text_format = _model_config_pb2()
    src = Path(model_path)
    engine = is_engine(src)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"model name {name!r}: use a plain folder name such as 'classifier'")
    if version < 1:
        raise ConfigError("Triton model versions are positive integers")
    if engine and preprocessing:
        raise ConfigError(
            "--with-preprocessing edits the ONNX graph, and an engine is already built: package "
            "the ONNX model with it, or build an engine from the preprocessed model.onnx"
        )
    model_dir = Path(out) / name
    if model_dir.exists() and not overwrite:
        raise ConfigError(f"{model_dir} already exists; pass --overwrite to replace it")
    staging = model_dir.with_name(f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / str(version)).mkdir(parents=True)
        if engine:
            cfg = build_plan_config(src, name, **config_kwargs)  # checked before any copy
            shutil.copyfile(src, staging / str(version) / "model.plan")
            shutil.copyfile(engine_record_path(src), staging / "engine.json")
        else:
            served = staging / str(version) / "model.onnx"
            if preprocessing:
                with_preprocessing(src, served)
            else:
                shutil.copyfile(src, served)
            cfg = build_config(served, name, **config_kwargs)
        text = text_format.MessageToString(cfg)
        # Parse back: unknown fields or wrong types would raise here, as Triton would at load time.
        parsed = text_format.Parse(text, pb2.ModelConfig())
        if parsed != cfg:
            raise StageError("config.pbtxt does not round-trip through ModelConfig")
        (staging / "config.pbtxt").write_text(text)
        if any(o.label_filename for o in cfg.output):  # set only when the metadata has classes
            classes = json.loads(cfg.parameters["classes"].string_value)
            (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise
    if model_dir.exists():
        shutil.rmtree(model_dir)
    staging.rename(model_dir)  # the model appears complete or not at all
    log.info("Triton model %r written to %s", name, model_dir)
    return model_dir


def read_config(model_dir: str | Path):
    """Parse a model folder's config.pbtxt with Triton's schema (a validator without a server)."""
    pb2, text_format = _model_config_pb2()
    return text_format.Parse((Path(model_dir) / "config.pbtxt").read_text(), pb2.ModelConfig())
