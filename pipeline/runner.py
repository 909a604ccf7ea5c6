"""Orders the stages from the stage table, computes their keys, skips cache hits, commits each
stage folder, and writes the report once validation has run.

A stage's key hashes its own config sections, its inputs' keys, the data fingerprint and the
package version, so changing one stage's settings re-runs it and everything after it, never
before. Only this module writes manifests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import __version__, stages
from pipeline.artifacts import (
    MANIFEST,
    PARTIAL_SUFFIX,
    Manifest,
    StageContext,
    StageResult,
    commit_dir,
    environment,
    hash_files,
    read_checkpoint_index,
    stage_key,
    storage_errors,
    verify_files,
)
from pipeline.config import PipelineConfig, dump_config
from pipeline.data import build_data, resolve_preset
from pipeline.data.content import content_hashes
from pipeline.errors import (
    ArtefactError,
    ConfigError,
    DataError,
    GateFailed,
    RunInUse,
    StageError,
)
from pipeline.models.external import preflight
from pipeline.report import write_report
from pipeline.training import ranks

try:
    import fcntl
except ImportError:  # not a POSIX system: no advisory locks to take
    fcntl = None

log = logging.getLogger("pipeline")


def make_context(cfg: PipelineConfig) -> StageContext:
    return StageContext(
        cfg=cfg, run_dir=cfg.run_path, load_data=lambda: build_data(cfg.data, cfg.model)
    )


# The last stage that trains (slim's recovery): after it, a launched run's other ranks leave.
TRAINS_LAST = "slim"

# Where a run is started from, not what it makes: no part of any stage key.
LAUNCH_ONLY_KEYS = ("node_rank", "master_addr", "master_port", "max_restarts")


def model_files_sha256(model) -> dict[str, str]:
    """sha256 of the user's checkpoint (`model.weights`) and of the file defining a network from
    the user's code: changing either retrains, whatever the paths."""
    out = {}
    if model.weights is not None:
        out["weights"] = content_hashes([model.weights])[0]
    if model.source == "python":
        module_ref = model.name.rpartition(":")[0]
        if module_ref.endswith(".py") and Path(module_ref).is_file():
            out["factory_file"] = content_hashes([Path(module_ref)])[0]
    return out


def key_of(stage: str, cfg: PipelineConfig, inputs: dict[str, Manifest], data_fp: str) -> str:
    """The one place a stage key is computed."""
    s = stages.get(stage)
    sections = cfg.sections(s.config)
    if "train" in sections:
        sections["train"] = {
            k: v for k, v in sections["train"].items() if k not in LAUNCH_ONLY_KEYS
        }
    if "model" in sections:  # the files a model is built from, by content
        sections["model_files"] = model_files_sha256(cfg.model)
    return stage_key(stage, sections, {n: m.key for n, m in inputs.items()}, data_fp, __version__)


def _selected(only: str | None, from_stage: str | None) -> list[str]:
    names = stages.NAMES
    for flag, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value!r}: unknown stage; allowed: {', '.join(names)}")
    if only and from_stage:
        raise ConfigError("--only and --from cannot be combined; use one of them")
    if only:
        return [only]
    if from_stage:
        return list(names[names.index(from_stage) :])
    return list(names)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    only: str | None = None,
    from_stage: str | None = None,
    force: bool = False,
) -> dict[str, Manifest]:
    """Run the selected stages in order; return every stage's manifest (run or reused)."""
    selected = _selected(only, from_stage)
    forced = set(stages.NAMES) if force else set(selected if from_stage else [])
    if ranks.rank() != 0:  # under a launcher: follow rank 0 into every training
        ranks.follow(cfg)
        return {}
    with ranks.leading():
        if "train" in selected:  # the user's network and checkpoint, before anything starts
            preflight(cfg.model, resolve_preset(cfg.data, cfg.model))
        run_dir = cfg.run_path
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            return _run_locked(cfg, run_dir, selected, forced)


LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process at a time per run folder. Two would write the same checkpoints and stage
    folders; the second is refused, naming the first. The operating system drops the lock when
    its holder exits, however it exits, so a killed run never leaves a stale one."""
    if fcntl is None:  # not a POSIX system: no advisory locks to take
        yield
        return
    path = run_dir / LOCK_FILE
    with storage_errors(run_dir, kept="nothing was changed"):
        f = path.open("a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that did not say who it is"
            raise RunInUse(
                f"run folder {run_dir} is in use by another process ({holder}); wait for it "
                "to finish, or run this one under another name (--set name=...)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        f.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_UN)  # now, even if forked data workers still hold the file
        f.close()


def _run_locked(
    cfg: PipelineConfig, run_dir: Path, selected: list[str], forced: set[str]
) -> dict[str, Manifest]:
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    ctx = make_context(cfg)
    _check_model_fits_data(cfg, ctx.data)
    data_fp = ctx.data.fingerprint
    ranks.check_data(data_fp)  # under a launcher, every rank holds the same data, or all stop
    manifests: dict[str, Manifest] = {}
    try:
        _run_stages(selected, forced, ctx, data_fp, manifests)
    except GateFailed:
        try:
            _write_report(run_dir, cfg)  # everything measured is reported before the failure
        except Exception as exc:  # noqa: BLE001 - the gate's verdict (exit 3) must survive
            log.error("the report could not be written: %s", exc)
        raise
    if "validate" in manifests and "validate" in selected:
        _write_report(run_dir, cfg)
    return manifests


def _run_stages(
    selected: list[str],
    forced: set[str],
    ctx: StageContext,
    data_fp: str,
    manifests: dict[str, Manifest],
) -> None:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    last_selected = max(stages.NAMES.index(s) for s in selected)
    for stage in stages.TABLE[: last_selected + 1]:  # later stages are neither read nor checked
        name = stage.name
        if stages.NAMES.index(name) > stages.NAMES.index(TRAINS_LAST):
            ranks.finished_training()  # nothing trains from here: a launch's other ranks leave
        inputs = {s: manifests[s] for s in stage.inputs if s in manifests}
        key = key_of(name, cfg, inputs, data_fp)
        folder = stages.folder(run_dir, name)
        existing = _existing(folder, name, rebuild=name in selected and name in forced)
        if name not in selected:
            if existing is None or not existing.complete:
                if stages.NAMES.index(name) < last_selected:
                    raise StageError(
                        f"stage {name!r} has no completed output in {folder}; "
                        f"run it first (drop --only/--from)"
                    )
                continue
            if existing.key != key:
                log.warning("%s: using earlier output whose settings differ from this config", name)
            verify_files(existing)  # an input is read only if it is what its stage made
            manifests[name] = existing
            continue
        if existing and existing.complete and existing.key == key and name not in forced:
            verify_files(existing)
            log.info("%s: up to date (key %s), verified, skipped", name, key)
            manifests[name] = existing
            continue
        if name in forced:
            _discard_partial(folder)  # --force/--from mean "from scratch", not "resume"
        with storage_errors(run_dir, kept="finished stages and checkpoints are kept"):
            manifests[name] = _run_stage(name, key, inputs, folder, ctx, data_fp)


def _existing(folder: Path, name: str, rebuild: bool) -> Manifest | None:
    """The stage's manifest, None if it never ran; a stage folder without a readable manifest
    is refused unless this run rebuilds the stage (its files cannot be trusted, and silently
    re-running a finished stage would leave later stages describing other files)."""
    existing = Manifest.load(folder)
    if existing is None and folder.exists() and not rebuild:
        raise ArtefactError(
            f"{folder} has no readable {MANIFEST}, so what it holds cannot be trusted and later "
            f"stages may have been built from it. Rebuild it and everything after it with "
            f"`python -m pipeline run CONFIG --from {name}`"
        )
    return existing


def _write_report(run_dir: Path, cfg: PipelineConfig) -> None:
    with storage_errors(
        run_dir, kept="every stage is kept; `python -m pipeline report` rebuilds it"
    ):
        write_report(run_dir, cfg)


def _check_model_fits_data(cfg: PipelineConfig, data) -> None:
    want = cfg.model.num_classes
    if want is not None and want != data.num_classes:
        where = f" at {cfg.data.root}" if cfg.data.root else ""
        raise DataError(
            f"model.num_classes={want} but data {cfg.data.name!r}{where} has {data.num_classes} classes "
            f"({', '.join(data.classes[:5])}{', ...' if data.num_classes > 5 else ''}); "
            "fix model.num_classes or point data.root at the intended data set"
        )


def _partial(folder: Path) -> Path:
    return folder.with_name(folder.name + PARTIAL_SUFFIX)


def _discard_partial(folder: Path) -> None:
    shutil.rmtree(_partial(folder), ignore_errors=True)


def _work_folder(folder: Path, manifest: Manifest) -> Path:
    """The stage's working folder; kept across crashes so a long stage can resume from it.
    An unfinished folder made under another key cannot be resumed: it is discarded, and when
    it held checkpoints the log says what it held and what changed."""
    work = _partial(folder)
    previous = Manifest.load(work)
    if work.exists() and (previous is None or previous.key != manifest.key):
        newest = None
        with contextlib.suppress(ArtefactError):  # a torn index: nothing worth naming
            newest = read_checkpoint_index(work).get("checkpoint") if previous else None
        if newest:
            log.warning(
                "%s: discarding an unfinished run in %s (last checkpoint: epoch %s, step %s): "
                "%s, so it cannot be resumed and the stage starts over",
                manifest.stage,
                work,
                newest.get("epoch"),
                newest.get("step"),
                _what_changed(previous, manifest),
            )
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def _what_changed(previous: Manifest, current: Manifest) -> str:
    """Why two manifests of one stage have different keys, in the user's terms."""
    changed = sorted(
        f"{name}.{k}" if k else name
        for name in set(previous.config) | set(current.config)
        for k in _changed_keys(previous.config.get(name), current.config.get(name))
    )
    if changed:
        more = ", ..." if len(changed) > 6 else ""
        return f"its config differs ({', '.join(changed[:6])}{more})"
    if previous.inputs != current.inputs:
        return "an earlier stage it reads was re-run"
    if previous.data.get("fingerprint") != current.data.get("fingerprint"):
        return (
            "the data changed (files added, removed or with other contents; a copy of the "
            "same files counts as the same data)"
        )
    return "it was made by another pipeline version"


def _changed_keys(a: object, b: object) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            f"{k}.{sub}" if sub else str(k)
            for k in sorted(set(a) | set(b), key=str)
            for sub in (_changed_keys(a.get(k), b.get(k)) if a.get(k) != b.get(k) else [])
        ]
    return [""] if a != b else []


def _run_stage(
    stage: str,
    key: str,
    inputs: dict[str, Manifest],
    folder: Path,
    ctx: StageContext,
    data_fp: str,
) -> Manifest:
    cfg = ctx.cfg
    manifest = Manifest(stage=stage, key=key)
    manifest.config = cfg.sections(stages.get(stage).config)
    manifest.inputs = {s: m.key for s, m in inputs.items()}
    manifest.data = ctx.data.summary() if stage == "train" else {"fingerprint": data_fp}
    work = _work_folder(folder, manifest)
    manifest.environment = environment()
    manifest.seed = cfg.train.seed
    manifest.started = time.time()
    manifest.status = "running"
    manifest.write(work)  # marks the work folder as this key's: a crash keeps it for resuming
    log.info("%s: running (key %s)", stage, key)
    t0 = time.perf_counter()
    gate_error: GateFailed | None = None
    try:
        result = stages.get(stage).run(cfg, inputs, work, ctx)
    except GateFailed as exc:
        gate_error = exc
        result = exc.result if isinstance(exc.result, StageResult) else StageResult()
    manifest.metrics = result.metrics
    manifest.extra.update(result.extra)
    manifest.extra.update(read_checkpoint_index(work))
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
