"""The JSON record beside a TensorRT engine (`model.fp16.engine` -> `model.fp16.json`): what the
engine is bound to, how it was built, its tensors and the model's metadata. One writer
(`EngineRecord.write`, called by `export.tensorrt.build_engine`) and one reader
(`read_engine_record`, used by the server and `export.triton`), which validates what it reads:

    tensorrt, gpu, compute_capability   what the engine is bound to (it runs only there)
    precision, profile {min, opt, max}  how it was built; onnx (the graph's file name), build_s
    inputs, outputs                     [{name, dtype, shape}], -1 for the dynamic batch axis
    metadata                            the ONNX model's metadata: classes, preprocessing
    engine_sha256                       the engine file's hash, checked before it is served

The first three are in every record; the others were added over time, so a record from an older
version lacks some of them: the reader leaves those None, and whoever needs one asks for it
(`EngineRecord.require`), which refuses the record naming what is missing and how to rebuild.

Lives in `serving` so that both the server and `export` (which may import serving) read it
through the same code; it imports neither torch nor TensorRT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.artifacts import sha256_file, write_atomic
from pipeline.errors import ArtefactError, ConfigError
from pipeline.preprocessing import decode_metadata

ENGINE_SUFFIXES = (".engine", ".plan")  # serialized TensorRT engines
REBUILD = (
    "rebuild the engine (`python -m pipeline tensorrt RUN`, or the export stage's tensorrt_* "
    "formats); it writes its record beside it"
)
REQUIRED = ("tensorrt", "gpu", "compute_capability")  # in every version's record


def is_engine(path: str | Path) -> bool:
    return Path(path).suffix in ENGINE_SUFFIXES


def engine_record_path(engine: str | Path) -> Path:
    """The JSON record the builder writes beside an engine: `model.fp16.engine` ->
    `model.fp16.json`."""
    return Path(engine).with_suffix(".json")


@dataclass(frozen=True)
class Profile:
    """The optimisation profile over the batch axis: min, opt (tuned for) and max batch."""

    min: int = 1
    opt: int = 32
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"engine profile batch sizes must satisfy 1 <= min <= opt <= max; got "
                f"{self.min}, {self.opt}, {self.max}"
            )

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class TensorRecord:
    """An engine input or output: its name, type (numpy's name: float32, ...; TensorRT's own
    for a type numpy lacks, such as fp8) and shape, -1 for a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class EngineRecord:
    """An engine's record; see the module docstring. Fields an older version did not write are
    None."""

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str | None = None
    profile: Profile | None = None
    onnx: str | None = None
    build_s: float | None = None
    inputs: tuple[TensorRecord, ...] | None = None
    outputs: tuple[TensorRecord, ...] | None = None
    metadata: Mapping[str, Any] | None = None
    engine_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON holds it, fields in the order above; None fields left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, Profile):
                v = v.to_dict()
            elif f.name in ("inputs", "outputs"):
                v = [t.to_dict() for t in v]
            elif f.name == "metadata":
                v = dict(v)
            out[f.name] = v
        return out

    def write(self, engine: str | Path) -> Path:
        """Write the record beside `engine` (atomically); returns its path."""
        path = engine_record_path(engine)
        write_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: Any, engine: str | Path) -> EngineRecord:
        """The record of `engine` from its decoded JSON, validated: ArtefactError naming the
        file, what is wrong and how to rebuild."""
        path = engine_record_path(engine)
        where = f"{path}, the record of {Path(engine).name},"
        if not isinstance(data, dict):
            raise ArtefactError(
                f"{where} is not a JSON object; it is truncated or was overwritten. Rebuild the "
                "engine (it writes its record beside it)"
            )
        problems: list[str] = []
        missing = [k for k in REQUIRED if data.get(k) is None]
        if missing:
            problems.append(f"lacks {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, check in _CHECKS.items():
            if data.get(key) is None:
                continue
            try:
                values[key] = check(data[key])
            except (TypeError, ValueError, KeyError, ConfigError):
                problems.append(f"has an invalid {key} ({json.dumps(data[key])[:80]})")
        if problems:
            raise ArtefactError(
                f"{where} {' and '.join(problems)}: it was written by an older version or "
                f"edited; {REBUILD}"
            )
        return cls(**values)

    def require(self, *names: str, what: str, engine: str | Path) -> None:
        """Refuse a record (from an older version) that lacks any of `names`, saying that it
        holds no `what`."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            raise ArtefactError(
                f"{engine_record_path(engine).name} holds no {what} ({', '.join(missing)} "
                f"missing: the engine was built by an older version); {REBUILD}"
            )

    @property
    def built_for(self) -> tuple[str, str, str]:
        """(TensorRT version, GPU, compute capability) the engine runs on."""
        return self.tensorrt, self.gpu, self.compute_capability


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError(v)
    return v


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(v)
    return v


def _integer(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


def _profile(v: Any) -> Profile:
    return Profile(_integer(v["min"]), _integer(v["opt"]), _integer(v["max"]))


def _tensors(v: Any) -> tuple[TensorRecord, ...]:
    if not isinstance(v, list):
        raise TypeError(v)
    return tuple(
        TensorRecord(_text(t["name"]), _text(t["dtype"]), tuple(_integer(d) for d in t["shape"]))
        for t in v
    )


def _metadata(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError(v)
    return dict(v)


def _sha256(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError(v)
    return v


_CHECKS = {
    "tensorrt": _text,
    "gpu": _text,
    "compute_capability": _text,
    "precision": _text,
    "profile": _profile,
    "onnx": _text,
    "build_s": _number,
    "inputs": _tensors,
    "outputs": _tensors,
    "metadata": _metadata,
    "engine_sha256": _sha256,
}


def read_engine_record(engine: str | Path) -> EngineRecord | None:
    """An engine's record, validated (ArtefactError if it is unreadable or invalid), or None
    where there is none."""
    path = engine_record_path(engine)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    return EngineRecord.from_dict(data, engine)


def verify_engine_hash(engine: str | Path, record: EngineRecord | None) -> None:
    """Check an engine against the sha256 its record holds (records older than that field,
    and engines without a record, are left to their export manifest)."""
    expected = record.engine_sha256 if record is not None else None
    if expected is None:
        return
    found = sha256_file(Path(engine))
    if found != expected:
        raise ArtefactError(
            f"{engine} does not match its record {engine_record_path(engine).name}: expected "
            f"sha256 {expected}, found {found}; the file changed after it was built. Rebuild it "
            "(`python -m pipeline tensorrt RUN`, or the export stage's tensorrt_* formats)"
        )


def check_engine_record(engine: Path, tensorrt_version: str, gpu: dict[str, str]) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both (its record says
    what it was built for). An engine without a record is left to TensorRT's own check."""
    rec = read_engine_record(engine)
    if rec is None:
        return
    built = rec.built_for
    here = (tensorrt_version, gpu.get("gpu"), gpu.get("compute_capability"))
    if built != here:
        raise ArtefactError(
            f"{engine} was built with TensorRT {built[0]} for {built[1]} (compute capability "
            f"{built[2]}); this machine has TensorRT {here[0]} and {here[1]} ({here[2]}). "
            "Engines run only where they were built: rebuild it here"
        )


def read_onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """An ONNX model's metadata (class names, preprocessing), as the strings it holds."""
    import onnx  # off the server's path: needed only for records without their metadata

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX
        raise ArtefactError(
            f"cannot read {onnx_path} as ONNX ({type(exc).__name__}); it is truncated or not a "
            "model"
        ) from None
    return {p.key: p.value for p in model.metadata_props}


def engine_metadata(
    engine: Path, record: EngineRecord | None, *, decode: bool = True
) -> dict[str, Any]:
    """The model's metadata (class names, preprocessing) for an engine: the copy in its record,
    else the metadata of the ONNX file the record names, when it lies beside the engine.
    Decoded from JSON (`decode_metadata`), or as the record holds it with `decode=False`."""
    raw: Mapping[str, Any] = {}
    if record is not None and record.metadata is not None:
        raw = record.metadata
    elif record is not None and record.onnx and (engine.parent / record.onnx).is_file():
        raw = read_onnx_metadata(engine.parent / record.onnx)
    return decode_metadata(raw) if decode else dict(raw)
