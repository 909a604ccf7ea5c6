"""THE stage table: each stage's name, run function, inputs and the config sections it depends on.

Adding a stage is one entry here plus one module in this package. The order of the table is
the order of the run, and a stage's folder is `<NN>_<name>` with NN its place in the table;
nothing else names stage folders or their numbers (`artifacts.find_stage` finds a finished stage
by the name in its manifest).

Each stage module has `run(cfg, inputs, out_dir, ctx) -> StageResult` and imports its heavy
libraries inside `run`, so reading this table costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import Manifest, StageContext, StageResult
from pipeline.stages import export, prune, slim, train, validate

StageFn = Callable[[object, Mapping[str, Manifest], Path, StageContext], StageResult]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    inputs: tuple[str, ...]  # the stages whose manifests it reads
    config: tuple[str, ...]  # the config sections its key depends on (`export.int8`: a part)


TABLE: tuple[Stage, ...] = (
    Stage("train", train.run, inputs=(), config=("data", "model", "train")),
    # the compression table exports both classifiers as the export stage would
    Stage(
        "slim",
        slim.run,
        inputs=("train",),
        config=("slim", "export.opset", "export.calibration_samples", "export.int8"),
    ),
    Stage("prune", prune.run, inputs=("slim",), config=("prune",)),
    Stage("export", export.run, inputs=("train", "slim", "prune"), config=("export",)),
    Stage("validate", validate.run, inputs=("prune", "export"), config=("validate",)),
)
STAGES: dict[str, Stage] = {s.name: s for s in TABLE}
NAMES: tuple[str, ...] = tuple(STAGES)


def folder(run_dir: Path, name: str) -> Path:
    """The stage's folder in a run: `<NN>_<name>`, NN its 1-based place in the table."""
    return Path(run_dir) / f"{NAMES.index(name) + 1:02d}_{name}"


def get(name: str) -> Stage:
    return STAGES[name]
