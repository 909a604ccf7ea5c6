"""The training loop: one epoch (resumable mid-way), evaluation, NaN policy and stop requests."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import TrainConfig
from pipeline.errors import StageError
from pipeline.training.checkpoint import Checkpointer, TrainerState

log = logging.getLogger("pipeline.train")


class StopRequested(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived; raised at a step boundary after a checkpoint was saved."""


class StopFlag:
    """First SIGINT/SIGTERM sets a flag checked between steps; a second one interrupts at once."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class Trainer:
    """Everything one epoch touches; built once by the stage."""

    model: nn.Module
    method: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Any
    cfg: TrainConfig
    checkpointer: Checkpointer
    state: TrainerState
    stop: StopFlag
    bar: Any
    loaders: tuple = ()
    channels_last: bool = False
    resumed_from: str | None = None
    # `train.compile` resolved; the compiled training forward (None: eager), set by the stage
    # once the model is ready. `model` stays the eager module.
    compile_step: bool = False
    train_forward: Any = None
    compile_s: float | None = None  # wall time of the first compiled step (compile included)
    # the compiled step replays as CUDA graphs (`train.compile_mode`): each step is marked as a
    # new iteration, so the previous step's graph outputs may be overwritten
    cuda_graphs: bool = False
    # Running sums (loss and its parts times images, correct, seen) kept on the device so a
    # step never waits for the GPU; named by `keys`, fixed by the method's first loss.
    keys: tuple[str, ...] = ()
    sums: torch.Tensor | None = None
    shown_at: float = 0.0
    # `slim.teacher: unpruned`: a frozen classifier whose KL term the step adds to the method's
    # loss (`training.teacher.UnprunedTeacher`); not part of `model`, never checkpointed
    teacher: Any = None
    teacher_sha256: str | None = None
    # a training from a saved model: the sha256 of its initial weights, and whether they were
    # freshly initialised (`fresh`) rather than loaded
    initial_sha256: str | None = None
    fresh: bool = False
    # `model.weights`: what the user's checkpoint loaded; the self-teacher's warm-up epochs
    weights: dict | None = None
    teacher_warmup: list = field(default_factory=list)

    def reset_sums(self, partial: dict[str, float] | None = None) -> None:
        p = {k: v for k, v in (partial or {}).items() if k != "elapsed"}
        self.keys = tuple(p)
        self.sums = torch.tensor(
            list(p.values()), dtype=torch.float64, device=self.accelerator.device
        )

    def add(self, loss, correct: torch.Tensor, n: int) -> None:
        parts = {"loss": loss.total, **loss.parts}
        if not self.keys:
            self.reset_sums({**{k: 0.0 for k in parts}, "correct": 0.0, "seen": 0.0})
        values = [parts[k].detach().double() * n for k in self.keys[:-2]]
        seen = torch.tensor(n, dtype=torch.float64, device=self.sums.device)
        self.sums += torch.stack([*values, correct.double(), seen])


def _prepare_inputs(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _flags(tr: Trainer, loss: torch.Tensor) -> tuple[bool, bool]:
    """(loss finite on every rank, stop requested on any rank), in one collective."""
    v = torch.stack(
        [
            torch.isfinite(loss.detach()).all().float(),
            torch.tensor(float(tr.stop.set), device=loss.device),
        ]
    )
    if tr.accelerator.num_processes > 1:
        v = tr.accelerator.reduce(v, "sum")
        return bool(v[0] == tr.accelerator.num_processes), bool(v[1] > 0)
    return bool(v[0]), bool(v[1])


def _non_finite(tr: Trainer, epoch: int) -> None:
    where = f"epoch {epoch + 1}, batch {tr.state.batch + 1} (optimizer step {tr.state.step + 1})"
    if tr.cfg.on_nan == "stop":
        raise StageError(
            f"non-finite loss at {where}; lower train.lr, set train.grad_clip, turn off mixed precision, "
            "or set train.on_nan=skip. The last checkpoint is kept"
        )
    tr.state.nan_skips += 1
    tr.optimizer.zero_grad(set_to_none=True)
    if tr.state.nan_skips > tr.cfg.max_nan_skips:
        raise StageError(
            f"non-finite loss at {where}: {tr.state.nan_skips} steps skipped, more than "
            f"train.max_nan_skips={tr.cfg.max_nan_skips}; lower train.lr or set train.grad_clip"
        )


def _update(tr: Trainer, loss) -> None:
    acc = tr.accelerator
    acc.backward(loss.total)
    if tr.cfg.grad_clip is not None and acc.sync_gradients:
        acc.clip_grad_norm_(tr.model.parameters(), tr.cfg.grad_clip)
    tr.optimizer.step()
    tr.scheduler.step()
    tr.optimizer.zero_grad(set_to_none=True)


def _forward(tr: Trainer):
    """The forward a method may call for extra inputs (e.g. CS-KD's no-grad partner forward).

    It runs the model without DDP's wrapper: DDP broadcasts buffers at the start of a forward
    only when the previous forward had gradients, so a no-grad forward through it skips the next
    broadcast and the ranks' batch-norm statistics drift apart (the replicas end unequal).
    """
    model = tr.model.module if isinstance(tr.model, DistributedDataParallel) else tr.model
    return lambda x: model(_prepare_inputs(x, tr.channels_last))


def _step(
    tr: Trainer, images: torch.Tensor, targets: torch.Tensor, extras: dict, epoch: int
) -> bool:
    """One micro-batch; returns False when a stop was requested before it ran."""
    acc = tr.accelerator
    forward = tr.model if tr.train_forward is None else tr.train_forward
    first_compiled = tr.train_forward is not None and tr.compile_s is None
    t0 = time.perf_counter()
    if tr.cuda_graphs:
        # Nothing of the previous step's graph outputs is read after this: its loss parts went
        # into `sums` and its gradients were consumed by the optimizer and cleared.
        torch.compiler.cudagraph_mark_step_begin()
    with acc.accumulate(tr.model):
        with acc.autocast():
            x = _prepare_inputs(images, tr.channels_last)
            out = forward(x)
            inputs = tr.method.extra_inputs(_forward(tr), extras)
            loss = tr.method.loss(out, targets, epoch, **inputs)
            if tr.teacher is not None:  # the same batch through the frozen teacher, no grad
                loss = tr.teacher.add_to(loss, out.logits, x)
        finite, stop = _flags(tr, loss.total)
        if stop:
            return False
        if not finite:
            _non_finite(tr, epoch)
        else:
            _update(tr, loss)
            # Every rank takes this branch together (`_flags` agreed), so the method may gather.
            # Accelerate's even batches give every rank the same batch size, as gather needs.
            tr.method.record(out, extras, acc.gather)
            tr.add(loss, (out.logits.detach().argmax(1) == targets).sum(), targets.size(0))
    if first_compiled:
        tr.compile_s = time.perf_counter() - t0
        log.info("first compiled training step (compile included): %.1f s", tr.compile_s)
    return True


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(images, targets) or (images, targets, extras) from the loader; extras may be absent."""
    images, targets, *rest = batch
    return images, targets, (rest[0] if rest else {})


def reduced_sums(tr: Trainer) -> dict[str, float]:
    if tr.sums is None or not tr.keys:
        return {}
    total = (
        tr.accelerator.reduce(tr.sums.clone(), "sum")
        if tr.accelerator.num_processes > 1
        else tr.sums
    )
    return dict(zip(tr.keys, total.tolist(), strict=True))


def checkpoint(tr: Trainer, elapsed: float) -> None:
    """Collective: the running sums of all ranks go into rank 0's share of the checkpoint."""
    tr.state.partial = {**reduced_sums(tr), "elapsed": elapsed}
    tr.checkpointer.save(tr.state)
    if not tr.accelerator.is_main_process and tr.sums is not None:
        tr.sums.zero_()  # rank 0 carries the merged sums; others start again from zero
    elif tr.sums is not None:
        tr.reset_sums(tr.state.partial)


def _show(tr: Trainer, elapsed: float) -> None:
    """Progress-bar figures, read from the device about once a second rather than every step."""
    if tr.bar.disable or tr.sums is None or time.perf_counter() - tr.shown_at < 1.0:
        return
    tr.shown_at = time.perf_counter()
    values = dict(zip(tr.keys, tr.sums.tolist(), strict=True))
    loss_sum, correct, seen = values["loss"], values["correct"], values["seen"]
    procs = tr.accelerator.num_processes
    tr.bar.set_postfix(
        loss=f"{loss_sum / max(seen, 1):.3f}",
        acc=f"{correct / max(seen, 1):.3f}",
        img_s=f"{seen * procs / max(elapsed, 1e-9):.0f}",
        refresh=False,
    )


def _set_epoch(loader, epoch: int) -> None:
    """Shuffle order and per-sample augmentation seeds both follow the epoch, not the history."""
    loader.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "epoch"):
        dataset.epoch = epoch


def train_one_epoch(tr: Trainer, loader, epoch: int) -> dict[str, float]:
    """Train from batch `tr.state.batch` of `epoch` to its end; return the epoch's statistics."""
    acc, every = tr.accelerator, tr.cfg.checkpoint_every_steps
    tr.model.train()
    elapsed0 = float(tr.state.partial.get("elapsed", 0.0)) if tr.state.batch else 0.0
    t0 = time.perf_counter()
    _set_epoch(loader, epoch)
    if tr.state.batch and hasattr(loader, "skip_first"):  # batches made on the device
        loader = loader.skip_first(tr.state.batch)
    elif tr.state.batch:
        loader = acc.skip_first_batches(loader, tr.state.batch)
        _set_epoch(loader, epoch)  # a fresh loader counts epochs from 0
    for batch in loader:
        images, targets, extras = _unpack(batch)
        if not _step(tr, images, targets, extras, epoch):
            checkpoint(tr, elapsed0 + time.perf_counter() - t0)
            raise StopRequested
        tr.state.batch += 1
        if acc.sync_gradients:
            tr.state.step += 1
            if every and tr.state.step % every == 0:
                checkpoint(tr, elapsed0 + time.perf_counter() - t0)
        tr.bar.update(1)
        _show(tr, elapsed0 + time.perf_counter() - t0)
    elapsed = elapsed0 + time.perf_counter() - t0
    s = reduced_sums(tr)
    seen = max(s.pop("seen", 0.0), 1.0)
    correct = s.pop("correct", 0.0)
    return {
        **{k: v / seen for k, v in s.items()},
        "train_top1": correct / seen,
        "images_per_s": seen / max(elapsed, 1e-9),
        "epoch_s": elapsed,
        "nan_skips": tr.state.nan_skips,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, accelerator, channels_last: bool = False
) -> dict[str, float]:
    """Top-1 of the classifier (and of the self-teacher, when there is one), over all ranks."""
    model.eval()
    correct = aux_correct = seen = 0
    has_aux = False
    for images, targets in loader:
        with accelerator.autocast():
            out = model(_prepare_inputs(images, channels_last))
        logits, targets_all = accelerator.gather_for_metrics((out.logits, targets))
        correct += int((logits.argmax(1) == targets_all).sum())
        seen += targets_all.numel()
        if out.aux_logits is not None:
            has_aux = True
            aux = accelerator.gather_for_metrics(out.aux_logits)
            aux_correct += int((aux.argmax(1) == targets_all).sum())
    res = {"top1": correct / max(seen, 1)}
    if has_aux:
        res["aux_top1"] = aux_correct / max(seen, 1)
    return res
