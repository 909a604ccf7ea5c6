"""Checkpoints through `accelerator.save_state`, committed atomically and named in an index.

A checkpoint is written into `checkpoints/.tmp-<name>/` and renamed to `checkpoints/<name>/`
only when every rank has finished writing, then `checkpoints/index.json` is replaced
(atomically) to name it: that is the commit point. Resume reads that name; folder names on disk
are never parsed, so a torn write is invisible. The runner keeps the work folder (and so the
index) only while the stage's key is unchanged, and copies the last entry into the manifest.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from pipeline.artifacts import CHECKPOINT_INDEX as INDEX_FILE
from pipeline.artifacts import (
    commit_dir,
    hash_files,
    sha256_file,
    storage_errors,
    write_json_atomic,
)
from pipeline.artifacts import read_checkpoint_index as read_index
from pipeline.errors import ArtefactError

log = logging.getLogger("pipeline.train")

STATE_FILE = "trainer_state.json"
METHOD_STATE_FILE = "method_state.safetensors"  # a method's per-sample state, when it has one
RESULT_FILE = "checkpoints/result.json"  # rank 0's metrics, for a launching parent
ERROR_FILE = "checkpoints/error.json"  # rank 0's error (class and message), likewise


@dataclass
class TrainerState:
    """Where training stands: `epoch` counts completed epochs; `batch` batches into the next."""

    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps overall
    nan_skips: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # the running epoch's sums


class Checkpointer:
    """`method`: an object with `state_dict()` / `load_state_dict()` over tensors (the training
    method); a non-empty state is saved by rank 0 as safetensors (every rank holds the same
    state) and loaded by every rank. Safetensors, not pickle: loading runs no code."""

    def __init__(self, accelerator, work: Path, keep: int, method=None) -> None:
        self.acc = accelerator
        self.work = work
        self.root = work / "checkpoints"
        self.keep = keep
        self.method = method

    def _method_state(self) -> dict:
        return {} if self.method is None else self.method.state_dict()

    def latest(self) -> dict[str, Any] | None:
        return read_index(self.work).get("checkpoint")

    def save(self, state: TrainerState) -> Path:
        """Collective: every rank calls it at the same step."""
        name = f"e{state.epoch:04d}-b{state.batch:06d}-s{state.step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        last = (self.latest() or {}).get("name")
        kept = f"the last good checkpoint ({last}) is kept" if last else "no checkpoint was kept"
        with storage_errors(self.root, kept=kept, what=f"checkpoint {final}"):
            if self.acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
                tmp.mkdir(parents=True)
            self.acc.wait_for_everyone()
            self.acc.save_state(str(tmp))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                method_state = self._method_state()
                if method_state:
                    save_file(
                        {k: v.contiguous() for k, v in method_state.items()},
                        str(tmp / METHOD_STATE_FILE),
                    )
                write_json_atomic(tmp / STATE_FILE, asdict(state))
                commit_dir(tmp, final)
                self._record(name, state)
        self.acc.wait_for_everyone()
        return final

    def _record(self, name: str, state: TrainerState) -> None:
        """Name the new checkpoint in the index, with each file's sha256 (checked on resume)."""
        old_index = read_index(self.work)
        names = [*old_index.get("checkpoints", []), name]
        record = {
            "name": name,
            "epoch": state.epoch,
            "batch": state.batch,
            "step": state.step,
            "files": hash_files(self.root / name, exclude_dirs=()),
        }
        records = {**old_index.get("records", {}), name: record}
        index = {
            "checkpoint": record,
            "checkpoints": names[-self.keep :],
            "records": {n: records[n] for n in names[-self.keep :] if n in records},
        }
        write_json_atomic(self.work / INDEX_FILE, index)  # the commit point
        for old in names[: -self.keep]:
            shutil.rmtree(self.root / old, ignore_errors=True)

    def load(self) -> TrainerState | None:
        """Resume from the newest checkpoint whose files match their recorded sha256; a damaged
        one is named and skipped for the one before it (the index then names that one); none
        intact: ArtefactError. A checkpoint whose files are intact but fail to load (a device
        or version mismatch) is not skipped: that error is raised as it is."""
        index = read_index(self.work)
        rec = index.get("checkpoint")
        if rec is None:
            return None
        records = index.get("records", {})
        older = [records[n] for n in reversed(index.get("checkpoints", [])) if n in records]
        problems = []
        for candidate in [rec, *(r for r in older if r["name"] != rec["name"])]:
            problem = self._damage(candidate)
            if problem is None:
                state = self._load(candidate)  # intact files that fail to load: not damage
                if candidate["name"] != rec["name"]:
                    self._fall_back_to(index, candidate)
                return state
            log.warning("checkpoint %s cannot be used: %s", candidate["name"], problem)
            problems.append(f"{candidate['name']}: {problem}")
        raise ArtefactError(
            f"no checkpoint in {self.root} can be resumed ({'; '.join(problems)}). Restart the "
            "stage from scratch with `--force` (or `--from train`)"
        )

    def _damage(self, rec: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot be loaded (missing or changed file), or None if it is intact."""
        folder = self.root / rec["name"]
        if not (folder / STATE_FILE).is_file():
            return f"{folder} is missing or incomplete"
        if self._method_state() and not (folder / METHOD_STATE_FILE).is_file():
            return f"{folder / METHOD_STATE_FILE} (the method's state) is missing"
        for rel, expected in rec.get("files", {}).items():
            path = folder / rel
            if not path.is_file():
                return f"{path} is missing"
            found = sha256_file(path)
            if found != expected:
                return f"{path} is corrupt (sha256 {found}, recorded {expected})"
        return None

    def _load(self, rec: dict[str, Any]) -> TrainerState:
        folder = self.root / rec["name"]
        try:
            self.acc.load_state(str(folder))
            state = TrainerState(**json.loads((folder / STATE_FILE).read_text()))
            if self.method is not None and (folder / METHOD_STATE_FILE).is_file():
                self.method.load_state_dict(load_file(str(folder / METHOD_STATE_FILE)))
        except pickle.UnpicklingError as exc:
            # Never retried with weights_only=False: what fails the safe loader is not loaded.
            raise ArtefactError(
                f"{folder} holds a file the safe loader refuses ({type(exc).__name__}); restart "
                "the stage with `--force`"
            ) from None
        except Exception as exc:
            if not rec.get("files"):  # no hashes recorded: a load failure may be damage
                raise ArtefactError(
                    f"{folder} cannot be loaded ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); restart "
                    "the stage with `--force`"
                ) from exc
            raise
        log.info(
            "resuming from checkpoint %s (epoch %d, batch %d)", folder, state.epoch, state.batch
        )
        return state

    def _fall_back_to(self, index: dict[str, Any], rec: dict[str, Any]) -> None:
        """The index names the intact checkpoint from now on; the damaged newer ones are no
        longer indexed (their folders stay on disk for inspection)."""
        keep = index.get("checkpoints", [])
        keep = keep[: keep.index(rec["name"]) + 1] if rec["name"] in keep else [rec["name"]]
        fixed = {
            "checkpoint": rec,
            "checkpoints": keep,
            "records": {n: r for n, r in index.get("records", {}).items() if n in keep},
        }
        if self.acc.is_main_process:
            write_json_atomic(self.work / INDEX_FILE, fixed)
        log.warning("resumed from the earlier checkpoint %s instead", rec["name"])
