"""Orders the stages, computes their keys, skips cache hits and commits each stage folder.

A stage's key hashes its own config, its inputs' keys, the data fingerprint and the package
version, so changing one stage's settings re-runs it and everything after it, never before.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import import_module
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.artifacts import Manifest, commit_dir, environment, hash_files, stage_key
from pipeline.config import STAGES, PipelineConfig, dump_config
from pipeline.errors import ConfigError, DataError, GateFailed, StageError

log = logging.getLogger("pipeline")

# stage -> the stages whose manifests it reads
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "train": (),
    "prune": ("train",),
    "export": ("prune",),
    "validate": ("prune", "export"),
}
STAGE_MODULES = {
    "train": "pipeline.train",
    "prune": "pipeline.prune",
    "export": "export.onnx",
    "validate": "pipeline.validate",
}


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    cfg: PipelineConfig
    run_dir: Path

    @cached_property
    def data(self):
        from pipeline.data import build_data

        return build_data(self.cfg.data)


StageFn = Callable[[PipelineConfig, Mapping[str, Manifest], Path, RunContext], StageResult]


def stage_folder(run_dir: Path, stage: str) -> Path:
    return run_dir / f"{STAGES.index(stage) + 1:02d}_{stage}"


def _selected(only: str | None, from_stage: str | None) -> list[str]:
    for name, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"{name} {value!r}: unknown stage; allowed: {', '.join(STAGES)}")
    if only and from_stage:
        raise ConfigError("--only and --from cannot be combined; use one of them")
    if only:
        return [only]
    if from_stage:
        return list(STAGES[STAGES.index(from_stage) :])
    return list(STAGES)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    only: str | None = None,
    from_stage: str | None = None,
    force: bool = False,
) -> dict[str, Manifest]:
    """Run the selected stages in order; return every stage's manifest (run or reused)."""
    selected = _selected(only, from_stage)
    forced = set(STAGES) if force else set(selected if from_stage else [])
    if _is_secondary_rank():
        return _train_as_secondary_rank(cfg, selected, forced)
    run_dir = cfg.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    ctx = RunContext(cfg=cfg, run_dir=run_dir)
    _check_model_fits_data(cfg, ctx.data)
    data_fp = ctx.data.fingerprint
    manifests: dict[str, Manifest] = {}
    for stage in STAGES:
        inputs = {s: manifests[s] for s in STAGE_INPUTS[stage] if s in manifests}
        key = stage_key(
            stage,
            cfg.stage_config(stage),
            {s: m.key for s, m in inputs.items()},
            data_fp,
            __version__,
        )
        folder = stage_folder(run_dir, stage)
        existing = Manifest.load(folder)
        if stage not in selected:
            if existing is None or not existing.complete:
                if STAGES.index(stage) < max(STAGES.index(s) for s in selected):
                    raise StageError(
                        f"stage {stage!r} has no completed output in {folder}; "
                        f"run it first (drop --only/--from)"
                    )
                continue
            if existing.key != key:
                log.warning(
                    "%s: using earlier output whose settings differ from this config", stage
                )
            manifests[stage] = existing
            continue
        if existing and existing.complete and existing.key == key and stage not in forced:
            log.info("%s: up to date (key %s), skipped", stage, key)
            manifests[stage] = existing
            continue
        if stage in forced:
            _discard_partial(folder)  # --force/--from mean "from scratch", not "resume"
        manifests[stage] = _run_stage(stage, key, cfg, inputs, folder, ctx, data_fp)
    return manifests


def _check_model_fits_data(cfg: PipelineConfig, data) -> None:
    want = cfg.model.num_classes
    if want is not None and want != data.num_classes:
        where = f" at {cfg.data.root}" if cfg.data.root else ""
        raise DataError(
            f"model.num_classes={want} but data {cfg.data.name!r}{where} has {data.num_classes} classes "
            f"({', '.join(data.classes[:5])}{', ...' if data.num_classes > 5 else ''}); "
            "fix model.num_classes or point data.root at the intended data set"
        )


def _is_secondary_rank() -> bool:
    from pipeline.training.accel import is_secondary_rank

    return is_secondary_rank()


def _train_as_secondary_rank(
    cfg: PipelineConfig, selected: list[str], forced: set[str]
) -> dict[str, Manifest]:
    """Under `accelerate launch -m pipeline run`, ranks other than 0 only join the training.

    Rank 0 does everything else (work folder, manifests, later stages); this rank reaches the
    same skip decision from the same files and, if training runs, joins it in rank 0's work
    folder, where the training stage waits for rank 0 before reading anything.
    """
    if "train" not in selected:
        return {}
    ctx = RunContext(cfg=cfg, run_dir=cfg.run_path)
    key = stage_key("train", cfg.stage_config("train"), {}, ctx.data.fingerprint, __version__)
    folder = stage_folder(cfg.run_path, "train")
    existing = Manifest.load(folder)
    if existing and existing.complete and existing.key == key and "train" not in forced:
        return {}
    import_module(STAGE_MODULES["train"]).run(
        cfg, {}, folder.with_name(folder.name + ".partial"), ctx
    )
    return {}


def _discard_partial(folder: Path) -> None:
    shutil.rmtree(folder.with_name(folder.name + ".partial"), ignore_errors=True)


def _work_folder(folder: Path, key: str) -> Path:
    """The stage's working folder; kept across crashes so a long stage can resume from it."""
    work = folder.with_name(folder.name + ".partial")
    previous = Manifest.load(work)
    if work.exists() and (previous is None or previous.key != key):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def _run_stage(
    stage: str,
    key: str,
    cfg: PipelineConfig,
    inputs: dict[str, Manifest],
    folder: Path,
    ctx: RunContext,
    data_fp: str,
) -> Manifest:
    work = _work_folder(folder, key)
    manifest = Manifest.load(work) or Manifest(stage=stage, key=key)
    manifest.config = cfg.stage_config(stage)
    manifest.inputs = {s: m.key for s, m in inputs.items()}
    manifest.data = ctx.data.summary() if stage == "train" else {"fingerprint": data_fp}
    manifest.environment = environment()
    manifest.seed = cfg.train.seed
    manifest.started = time.time()
    manifest.status = "running"
    manifest.write(work)
    log.info("%s: running (key %s)", stage, key)
    fn: StageFn = import_module(STAGE_MODULES[stage]).run
    t0 = time.perf_counter()
    gate_error: GateFailed | None = None
    try:
        result = fn(cfg, inputs, work, ctx)
    except GateFailed as exc:
        gate_error = exc
        result = (
            exc.result if isinstance(getattr(exc, "result", None), StageResult) else StageResult()
        )
    manifest = Manifest.load(work) or manifest  # the stage may have recorded progress
    manifest.metrics = result.metrics
    manifest.extra.update(result.extra)
    manifest.files = hash_files(work)
    manifest.ended = time.time()
    manifest.duration_s = round(time.perf_counter() - t0, 3)
    manifest.status = "gate_failed" if gate_error else "complete"
    manifest.write(work)
    commit_dir(work, folder)
    manifest.folder = folder
    log.info("%s: %s in %.1f s -> %s", stage, manifest.status, manifest.duration_s, folder)
    if gate_error:
        raise gate_error
    return manifest
