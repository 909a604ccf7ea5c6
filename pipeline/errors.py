"""One error tree for the whole pipeline; the CLI maps each class to an exit code."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem the user can act on. The message says what, where and the fix."""

    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    exit_code = 4


class StageError(PipelineError):
    exit_code = 5


class ExportParityError(StageError):
    exit_code = 6


class GateFailed(PipelineError):
    exit_code = 3
