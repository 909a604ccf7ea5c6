"""One error tree for the whole pipeline; the CLI maps each class to an exit code.

    PipelineError (1: an unexpected internal fault; never raised bare)
    +-- ConfigError (2)          bad configuration, arguments or paths given by the user
    +-- GateFailed (3)           a validation gate failed; everything measured is kept
    +-- DataError (4)            missing data, wrong layout, unreadable images
    +-- StageError (5)           a stage could not run or finish
    |   +-- ExportParityError (6)  an exported model disagrees with torch
    |   +-- StorageError (9)       cannot write: disk full, read-only or not a folder
    +-- GpuUnavailable (7)       a GPU command without a CUDA device or TensorRT
    +-- ArtefactError (8)        an artefact differs from its manifest, is missing, corrupt or
                                 truncated (weights, ONNX files, checkpoints, manifests)

    130: interrupted (Ctrl-C; SIGTERM too while training); finished stages and checkpoints are kept

Every message says what was wrong, where, and what to do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem the user can act on. The message says what, where and the fix."""

    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class GateFailed(PipelineError):
    """A gate failed; `result` (a StageResult) carries what was measured so it is recorded."""

    exit_code = 3

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


class DataError(PipelineError):
    exit_code = 4


class StageError(PipelineError):
    exit_code = 5


class ExportParityError(StageError):
    exit_code = 6


class GpuUnavailable(PipelineError):
    """TensorRT or a CUDA device is missing; the message names which and the fix."""

    exit_code = 7


class ArtefactError(PipelineError):
    """A file the pipeline made cannot be trusted: hash mismatch, missing, corrupt, truncated.
    The message names the file, what was expected and found, and how to rebuild it."""

    exit_code = 8


class RunInUse(PipelineError):
    """Another process is running the same run folder; running both would corrupt it."""

    exit_code = 10


class StorageError(StageError):
    """Writing failed: the disk is full, the folder is read-only or is not a folder. Whatever
    was finished before is kept; the message names the path."""

    exit_code = 9


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        PipelineError,
        ConfigError,
        GateFailed,
        DataError,
        StageError,
        ExportParityError,
        GpuUnavailable,
        ArtefactError,
        StorageError,
    )
}
INTERRUPTED_EXIT_CODE = 130
