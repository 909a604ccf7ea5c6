"""Manifests, stage keys, file hashes, atomic folder commits and the typed stage interface.

Every stage folder holds a `manifest.json`; a stage is complete only when its folder carries a
manifest with status "complete", so a crash can never leave a half-written artefact that looks
finished. Only the runner writes manifests. Code outside the runner finds a stage's folder by
the stage name its manifest records (`find_stage`), never by folder name or number.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_INDEX = "checkpoints/index.json"  # a resumable stage's commit point


@dataclass
class StageResult:
    """What a stage's run function returns: metrics for the manifest and extra records."""

    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What every stage may read besides its inputs: the config, the run folder and the data.

    The data is built on first use (`load_data`), once per run, and shared by all stages.
    """

    cfg: Any  # pipeline.config.PipelineConfig
    run_dir: Path
    load_data: Callable[[], Any]
    _data: Any = field(default=None, repr=False)

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = self.load_data()
        return self._data


@dataclass
class Manifest:
    stage: str
    key: str
    status: str = "running"
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    started: float = 0.0
    ended: float | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def path(self, rel: str) -> Path:
        if self.folder is None:
            raise ValueError("manifest has no folder")
        return self.folder / rel

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("folder")
        return json.dumps(d, indent=2, sort_keys=False, default=str)

    @classmethod
    def load(cls, folder: Path) -> Manifest | None:
        p = folder / MANIFEST
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
            m = cls(**d)
        except (json.JSONDecodeError, TypeError):
            return None  # a torn or foreign file is treated as "not done"
        m.folder = folder
        return m

    def write(self, folder: Path) -> None:
        write_text_atomic(folder / MANIFEST, self.to_json())


def find_stage(
    run_dir: Path, stage: str, statuses: tuple[str, ...] = ("complete",)
) -> Manifest | None:
    """The finished manifest of `stage` in a run folder, found by the name it records."""
    for p in sorted(Path(run_dir).glob(f"*/{MANIFEST}")):
        if p.parent.name.endswith(PARTIAL_SUFFIX) or p.parent.name.startswith("."):
            continue
        m = Manifest.load(p.parent)
        if m is not None and m.stage == stage and m.status in statuses:
            return m
    return None


def read_checkpoint_index(work: Path) -> dict[str, Any]:
    """A resumable stage's checkpoint index (`{"checkpoint": {...}, "checkpoints": [...]}`),
    empty when it has none. The runner copies it into the manifest as the record of what the
    stage resumed from."""
    from pipeline.errors import StageError

    p = Path(work) / CHECKPOINT_INDEX
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(
            f"{p} is corrupt ({exc}); delete {work} or pass --force to start the stage over"
        ) from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(folder: Path, exclude_dirs: tuple[str, ...] = ("checkpoints",)) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] not in exclude_dirs and p.name != MANIFEST:
            out[rel.as_posix()] = sha256_file(p)
    return out


def stage_key(
    stage: str, stage_config: dict, input_keys: dict[str, str], data_fp: str, version: str
) -> str:
    payload = json.dumps(
        {
            "stage": stage,
            "config": stage_config,
            "inputs": input_keys,
            "data": data_fp,
            "version": version,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def commit_dir(work: Path, final: Path) -> None:
    """Replace `final` by `work` with renames only, so readers see the old or the new folder."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    for dist in (
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "accelerate",
        "tensorrt",
    ):
        v = _version(dist)
        if v:
            env[dist] = v
    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return env
