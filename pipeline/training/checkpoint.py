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
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import CHECKPOINT_INDEX as INDEX_FILE
from pipeline.artifacts import read_checkpoint_index as read_index
from pipeline.artifacts import write_json_atomic
from pipeline.errors import StageError

log = logging.getLogger("pipeline.train")

STATE_FILE = "trainer_state.json"
RESULT_FILE = "checkpoints/result.json"  # rank 0's metrics, for a launching parent


@dataclass
class TrainerState:
    """Where training stands: `epoch` counts completed epochs; `batch` batches into the next."""

    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps overall
    nan_skips: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # the running epoch's sums


class Checkpointer:
    def __init__(self, accelerator, work: Path, keep: int) -> None:
        self.acc = accelerator
        self.work = work
        self.root = work / "checkpoints"
        self.keep = keep

    def latest(self) -> dict[str, Any] | None:
        return read_index(self.work).get("checkpoint")

    def save(self, state: TrainerState) -> Path:
        """Collective: every rank calls it at the same step."""
        name = f"e{state.epoch:04d}-b{state.batch:06d}-s{state.step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        try:
            if self.acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
                tmp.mkdir(parents=True)
            self.acc.wait_for_everyone()
            self.acc.save_state(str(tmp))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                write_json_atomic(tmp / STATE_FILE, asdict(state))
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
                self._record(name, state)
        except OSError as exc:
            raise StageError(
                f"cannot write checkpoint {final}: {exc.strerror or exc}. Free space or fix permissions "
                f"on {self.root}; the last good checkpoint ({(self.latest() or {}).get('name')}) is kept "
                "and re-running the same command resumes from it"
            ) from exc
        self.acc.wait_for_everyone()
        return final

    def _record(self, name: str, state: TrainerState) -> None:
        names = [*read_index(self.work).get("checkpoints", []), name]
        index = {
            "checkpoint": {
                "name": name,
                "epoch": state.epoch,
                "batch": state.batch,
                "step": state.step,
            },
            "checkpoints": names[-self.keep :],
        }
        write_json_atomic(self.work / INDEX_FILE, index)  # the commit point
        for old in names[: -self.keep]:
            shutil.rmtree(self.root / old, ignore_errors=True)

    def load(self) -> TrainerState | None:
        rec = self.latest()
        if rec is None:
            return None
        folder = self.root / rec["name"]
        if not (folder / STATE_FILE).is_file():
            raise StageError(
                f"{self.work / INDEX_FILE} names checkpoint {folder}, which is missing or incomplete; "
                "delete that .partial folder or pass --force to train from scratch"
            )
        self.acc.load_state(str(folder))
        state = TrainerState(**json.loads((folder / STATE_FILE).read_text()))
        log.info(
            "resuming from checkpoint %s (epoch %d, batch %d)", folder, state.epoch, state.batch
        )
        return state
