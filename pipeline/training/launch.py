"""Multi-process training started from a single `python -m pipeline run`, through torch's launcher.

The parent hands the resolved config and the stage's work folder to
`python -m torch.distributed.run --nproc_per_node N -m pipeline.training.worker`; the launcher
owns the processes (rendezvous, gloo on CPU / NCCL on GPU, signals), rank 0 writes the artefacts
into the work folder, and the parent reads rank 0's metrics back from `checkpoints/result.json`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline import errors
from pipeline.artifacts import write_text_atomic
from pipeline.config import PipelineConfig, dump_config
from pipeline.errors import StageError
from pipeline.training.checkpoint import ERROR_FILE, RESULT_FILE
from pipeline.training.teacher import TeacherSource

log = logging.getLogger("pipeline.train")

LAUNCH_CONFIG = "checkpoints/launch.yaml"


def launch_command(
    processes: int,
    work: Path,
    config: Path,
    start: Path | None = None,
    teacher: TeacherSource | None = None,
    fresh: bool = False,
) -> list[str]:
    teacher_args = (
        [
            "--teacher-model",
            str(teacher.folder),
            "--teacher-temperature",
            repr(teacher.temperature),
            "--teacher-weight",
            repr(teacher.weight),
        ]
        if teacher is not None
        else []
    )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "pipeline.training.worker",
        "--config",
        str(config),
        "--work",
        str(work),
        # not `--start`: torch's launcher would take it for its own `--start-method`
        *(["--start-model", str(start)] if start is not None else []),
        *(["--fresh-start"] if fresh else []),
        *teacher_args,
    ]


def child_env() -> dict[str, str]:
    """The children import this package the way the parent did, wherever it was started."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _raise_worker_error(work: Path) -> None:
    """Rank 0's own error, with its class (and so its exit code), if it left one."""
    path = work / ERROR_FILE
    if not path.is_file():
        return
    err = json.loads(path.read_text())
    path.unlink()
    cls = getattr(errors, err.get("class", ""), None)
    if isinstance(cls, type) and issubclass(cls, errors.PipelineError):
        raise cls(err.get("message", ""))


def run_launched(
    cfg: PipelineConfig,
    work: Path,
    start: Path | None = None,
    *,
    teacher: TeacherSource | None = None,
    fresh: bool = False,
) -> dict:
    """Train with `cfg.train.processes` processes (from the model in `start`, if given: its
    weights, or with `fresh` its architecture; with `teacher`, distilled from it, as `fit`);
    return the metrics rank 0 recorded."""
    config = work / LAUNCH_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config, dump_config(cfg))
    cmd = launch_command(cfg.train.processes, work, config, start, teacher, fresh)
    log.info("launching %d training processes: %s", cfg.train.processes, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=child_env())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # The workers got the same Ctrl-C; let them finish their checkpoint before we leave.
        proc.wait()
        raise
    if code != 0:
        _raise_worker_error(work)
        raise StageError(
            f"multi-process training ({cfg.train.processes} processes) exited with code {code}; see the "
            f"log above for the failing rank. Re-running the same command resumes from the last "
            f"checkpoint in {work / 'checkpoints'}"
        )
    result = work / RESULT_FILE
    if not result.is_file():
        raise StageError(f"the training processes finished but left no metrics in {result}")
    return json.loads(result.read_text())
