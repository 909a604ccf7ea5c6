"""Manifests, stage keys, file hashes, atomic folder commits and the typed stage interface.

Every stage folder holds a `manifest.json`; a stage is complete only when its folder carries a
manifest with status "complete", so a crash can never leave a half-written artefact that looks
finished. Only the runner writes manifests. Code outside the runner finds a stage's folder by
the stage name its manifest records (`find_stage`), never by folder name or number.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import ArtefactError, PipelineError, StorageError

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
        except (ValueError, TypeError, OSError):  # JSON, encoding, fields, permissions
            return None  # a torn, foreign or unreadable file is treated as "not done"
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


# errno values that mean "this place cannot take the write", not "this input is bad".
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EFBIG,
    errno.EIO,
}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO}  # may come from a read as well
# torch.save and safetensors report a failed write as RuntimeError / SafetensorError text.
_WRITE_FAILURES = (
    "file write failed",
    "PytorchStreamWriter failed",
    "No space left on device",
    "StorageFull",
    "Read-only file system",
    "Disk quota exceeded",
)


def is_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _STORAGE_ERRNOS
    return any(text in str(exc) for text in _WRITE_FAILURES)


@contextmanager
def storage_errors(
    where: Path, kept: str = "finished stages are kept", what: str | None = None
) -> Iterator[None]:
    """Turn a failed write (disk full, read-only, a file where a folder should be) under `where`
    into a StorageError naming the path and the fix; anything else passes through unchanged."""
    try:
        yield
    except PipelineError:
        raise  # already says what happened (an inner write named its own file)
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        target = what or getattr(exc, "filename", None) or where
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
        verb = "access" if isinstance(exc, OSError) and exc.errno in _ACCESS_ERRNOS else "write"
        raise StorageError(
            f"cannot {verb} {target}: {reason}. Free space or fix permissions under {where} (or "
            f"point run_dir elsewhere), then run the same command again; {kept}"
        ) from exc


def read_checkpoint_index(work: Path) -> dict[str, Any]:
    """A resumable stage's checkpoint index (`{"checkpoint": {...}, "checkpoints": [...]}`),
    empty when it has none. The runner copies it into the manifest as the record of what the
    stage resumed from."""
    p = Path(work) / CHECKPOINT_INDEX
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise ArtefactError(
            f"{p} is corrupt ({exc}); delete {work} or pass --force to start the stage over"
        ) from None


class _HashCache:
    """sha256 of files, each hashed once per process: keyed by device, inode, size and
    modification time, so a file renamed into place (a stage commit) is not hashed again and a
    file rewritten since is."""

    def __init__(self) -> None:
        self._by_stat: dict[tuple[int, int, int, int], str] = {}

    def sha256(self, path: Path, chunk: int = 1 << 20) -> str:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._by_stat:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
            self._by_stat[key] = h.hexdigest()
        return self._by_stat[key]


_HASHES = _HashCache()


def sha256_file(path: Path) -> str:
    return _HASHES.sha256(Path(path))


def verify_files(m: Manifest, only: list[str] | None = None) -> None:
    """Check the files a manifest lists (or `only` these) against their recorded sha256.

    Raises ArtefactError naming the file, the expected and the found hash, and `--from STAGE`
    to rebuild it: nothing is read from a file that differs from what its stage made.
    """
    if m.folder is None:
        raise ValueError("manifest has no folder")
    rels = list(m.files) if only is None else only
    way_out = (
        f"Rebuild it with `python -m pipeline run CONFIG --from {m.stage}` "
        "(re-runs that stage and every stage after it)"
    )
    for rel in rels:
        path = m.folder / rel
        expected = m.files.get(rel)
        if expected is None:
            raise ArtefactError(
                f"{path} is not listed in {m.folder / MANIFEST}, so it cannot be trusted. {way_out}"
            )
        if not path.is_file():
            raise ArtefactError(f"{path} is missing (listed in {m.folder / MANIFEST}). {way_out}")
        found = sha256_file(path)
        if found != expected:
            raise ArtefactError(
                f"{path} does not match its manifest: expected sha256 {expected}, found {found}; "
                f"the file changed after the {m.stage} stage wrote it. {way_out}"
            )


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a line cut short by a crash or a full disk is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file whole or not at all: into a hidden temporary file beside it, then renamed
    over it, so a reader (or a crash) never sees it half-written. Text is written as
    `Path.write_text` writes it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text)


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


def cpu_model() -> str:
    """The processor's marketing name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import torch  # the server imports this module and must not load torch

    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
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
