"""Training through Hugging Face Accelerate: one code path for 1 CPU, N processes or N GPUs.

`fit(cfg, bundle, work)` writes `model.safetensors` + `model.json` (the training wrapper,
auxiliary branches included) and `metrics.jsonl` (one line per epoch) into the work folder, and
checkpoints under `checkpoints/` (their index names the latest), so a killed run resumes where
it stopped. Rank 0 also leaves its metrics in `checkpoints/result.json` for a launching parent.

The slim stage's recovery trains through here too: from a saved model (`start`), its weights
or (`fresh`) its architecture alone freshly initialised, and optionally with a frozen
teacher (`teacher`, `training.teacher`) whose KL term is added to the method's loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from pipeline.artifacts import read_jsonl, storage_errors, write_json_atomic, write_text_atomic
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.data import DataBundle
from pipeline.errors import StageError
from pipeline.models import count_parameters
from pipeline.models.io import load_weights, read_spec, save_model
from pipeline.models.spec import ModelSpec
from pipeline.training import accel, ranks
from pipeline.training.checkpoint import RESULT_FILE, Checkpointer, TrainerState
from pipeline.training.host_memory import reuse_freed_memory
from pipeline.training.loop import StopFlag, StopRequested, Trainer, evaluate, train_one_epoch
from pipeline.training.model import build_training_model, fresh_training_model, model_spec
from pipeline.training.stability import check_head, head_warning
from pipeline.training.teacher import TeacherSource, UnprunedTeacher
from pipeline.training.warmup import load_user_weights, warm_up_aux

log = logging.getLogger("pipeline.train")


def scaled_lr(t: TrainConfig) -> float:
    ratio = t.batch_size / t.lr_reference_batch
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[t.lr_scaling]
    return t.lr * factor


def lr_lambda(t: TrainConfig, steps_per_epoch: int):
    """Per-step multiplier: linear warm-up, then step decay at milestone fractions or cosine."""
    total = t.epochs * steps_per_epoch
    warm = t.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, step / max(1, total))
        if t.schedule == "cosine":
            rest = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, rest)))
        return t.gamma ** sum(progress >= m for m in t.milestones)

    return f


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=scaled_lr(t),
        momentum=t.momentum,
        nesterov=t.nesterov and t.momentum > 0,
        weight_decay=t.weight_decay,
    )


def optimizer_steps_per_epoch(batches_per_epoch: int, accum: int) -> int:
    return max(1, math.ceil(batches_per_epoch / accum))


def scheduler_ticks_per_epoch(per_rank_batches: int, accum: int, processes: int) -> int:
    """The schedule's unit. Accelerate's prepared scheduler advances once per process at each
    optimizer step (it expects a schedule counted over the unsharded loader), so an epoch is
    this rank's optimizer steps times the processes: the same learning rate at the end of each
    epoch on 1 and N processes, with batches from a sharded DataLoader or made on the device."""
    return optimizer_steps_per_epoch(per_rank_batches, accum) * processes


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_outputs_guarded(path: Path, write) -> None:
    with storage_errors(path.parent, kept="the last good checkpoint is kept"):
        write()


def _metrics_rows(path: Path, completed_epochs: int) -> list[dict]:
    """metrics.jsonl cut back to the epochs the checkpoint holds, so resume never duplicates one."""
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path) if r["epoch"] <= completed_epochs]


def start_spec(cfg: PipelineConfig, bundle: DataBundle, start: Path | None) -> ModelSpec:
    """What to build: the config's model, or the model saved in `start` (a pruned network
    to fine-tune), whose method must be the one training it now."""
    if start is None:
        return model_spec(cfg, bundle)
    spec = read_spec(start, "model")
    if spec.method != cfg.train.method or spec.num_classes != bundle.num_classes:
        raise StageError(
            f"the model in {start} is a {spec.method!r} model with {spec.num_classes} "
            f"classes; this training is {cfg.train.method!r} with {bundle.num_classes}"
        )
    return spec


def _build(
    cfg: PipelineConfig,
    bundle: DataBundle,
    work: Path,
    spec: ModelSpec,
    start: Path | None,
    teacher: TeacherSource | None = None,
    fresh: bool = False,
) -> Trainer:
    t = cfg.train
    acc = accel.make_accelerator(t, work)
    acc.wait_for_everyone()  # rank 0 has prepared the work folder before anyone reads it
    set_seed(t.seed)
    accel.start_tracking(acc, cfg)
    plan = accel.batch_plan(t, acc.num_processes)
    if fresh:  # the start model's architecture, its weights not loaded
        model, method = fresh_training_model(spec, t.distill, t.epochs)
    else:
        model, method = build_training_model(spec, t.distill, t.epochs)
    if start is not None and not fresh:
        load_weights(model, start, "model")
        model.train()
    weights = None
    if start is None and cfg.model.weights is not None:  # the user's checkpoint
        weights = load_user_weights(model.backbone, cfg.model.weights)
        model.train()
    initial_sha256 = weights_sha256(model) if start is not None else None
    narrowest = min(m.out_channels for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    channels_last = accel.use_channels_last(t, acc.device, narrowest)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    unpruned = UnprunedTeacher.load(teacher, acc.device, channels_last) if teacher else None
    on_device = accel.train_on_device(cfg.data.on_device, bundle, acc.device)
    compiled = accel.use_compile(t, acc.device, self_teacher=method.needs_features)
    loaders = accel.loaders(
        bundle,
        t,
        plan,
        cfg.data.num_workers,
        on_gpu=acc.device.type == "cuda",
        index=method.needs_index,
        pair=method.needs_pair,
        device=acc.device if on_device else None,
        rank=acc.process_index,
        drop_last=compiled,
    )
    method.attach(len(bundle.train), acc.device)
    optimizer = make_optimizer(model, t)
    if on_device:  # batches are made on the device already; Accelerate prepares the rest
        model, optimizer, *evals = acc.prepare(model, optimizer, *loaders[1:])
        loaders = [loaders[0], *evals]
    else:
        model, optimizer, *loaders = acc.prepare(model, optimizer, *loaders)
    # Laid out from the batches this rank sees, after sharding, on either loader path.
    ticks = scheduler_ticks_per_epoch(len(loaders[0]), t.grad_accum_steps, acc.num_processes)
    scheduler = acc.prepare(torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, ticks)))
    log.info("training batches: %s", "made on the device" if on_device else "DataLoader")
    bar = tqdm(
        total=t.epochs * len(loaders[0]),
        desc=f"train {t.method}",
        disable=not acc.is_main_process,
        mininterval=1.0,
        unit="step",
    )
    return Trainer(
        model=model,
        method=method,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=acc,
        cfg=t,
        checkpointer=Checkpointer(acc, work, t.keep_checkpoints, method),
        state=TrainerState(),
        stop=StopFlag(),
        bar=bar,
        loaders=tuple(loaders),
        channels_last=channels_last,
        compile_step=compiled,
        teacher=unpruned,
        teacher_sha256=weights_sha256(unpruned.net) if unpruned else None,
        initial_sha256=initial_sha256,
        fresh=fresh,
        weights=weights,
    )


def teacher_warmup_epochs(cfg: PipelineConfig, tr: Trainer, start: Path | None, fresh: bool) -> int:
    """`train.teacher_warmup_epochs`, or (None) 1 where a trained classifier meets an untrained
    self-teacher: the user's weights loaded, or a recovery whose start had no trained one."""
    t = cfg.train
    if t.epochs == 0 or tr.accelerator.unwrap_model(tr.model).aux is None:
        return 0
    if t.teacher_warmup_epochs is not None:
        return t.teacher_warmup_epochs
    if tr.weights is not None:
        return 1
    if start is not None and not fresh and (start / "pruning.json").is_file():
        return int(json.loads((start / "pruning.json").read_text()).get("fresh_tensors", 0) > 0)
    return 0


def _teacher_warmup(tr: Trainer, cfg: PipelineConfig, start: Path | None, fresh: bool) -> None:
    """Before the first step (never on a resume): the self-teacher trained alone on the frozen
    classifier's features, so the classifier is not taught by a random teacher."""
    n = teacher_warmup_epochs(cfg, tr, start, fresh)
    if n == 0 or tr.checkpointer.latest():
        return
    tr.teacher_warmup = warm_up_aux(
        tr.accelerator.unwrap_model(tr.model),
        tr.loaders[0],
        n,
        scaled_lr(cfg.train),
        tr.accelerator,
        tr.channels_last,
    )


def _compile_step(tr: Trainer) -> None:
    """Under compile only the training step runs compiled: `train_forward` and the method's
    loss. The model itself stays the eager module, so checkpoints and the saved model have the
    same keys either way (no `_orig_mod.` prefix), evaluation's ragged batches never recompile,
    and the head-stability check (a double backward) runs eagerly before this."""
    if not tr.compile_step:
        return
    backend = accel.compile_backend()
    mode, tr.cuda_graphs = accel.compile_mode(tr.cfg, tr.accelerator.device, backend)
    if mode != tr.cfg.compile_mode:
        log.info(
            "train.compile_mode=%s does not apply on %s with back end %s; compiling with mode %s",
            tr.cfg.compile_mode,
            tr.accelerator.device.type,
            backend,
            mode,
        )
    # `mode=None` is torch.compile's default, and the only mode a non-inductor back end takes
    kwargs = {"backend": backend, "mode": None if mode == "default" else mode}
    tr.train_forward = torch.compile(tr.model, dynamic=False, **kwargs)
    tr.method.compile(**kwargs)
    log.info(
        "training step compiled with torch.compile (backend %s, mode %s%s)",
        backend,
        mode,
        ", CUDA graphs" if tr.cuda_graphs else "",
    )


def _resume(tr: Trainer, metrics_path: Path) -> list[dict]:
    state = tr.checkpointer.load()
    if state is not None:
        tr.state, tr.resumed_from = state, (tr.checkpointer.latest() or {}).get("name")
        partial = state.partial if state.batch else {}
        tr.reset_sums(partial if tr.accelerator.is_main_process else dict.fromkeys(partial, 0.0))
        tr.bar.update(state.epoch * tr.bar.total // tr.cfg.epochs + state.batch)
    history = _metrics_rows(metrics_path, tr.state.epoch)
    if tr.accelerator.is_main_process:
        text = "".join(json.dumps(r) + "\n" for r in history)
        _write_outputs_guarded(metrics_path, lambda: write_text_atomic(metrics_path, text))
    return history


def _end_of_epoch(tr: Trainer, stats: dict, val_loader, has_val: bool, metrics_path: Path) -> dict:
    acc, t = tr.accelerator, tr.cfg
    epoch = tr.state.epoch + 1
    due = epoch == t.epochs or (t.val_every_epochs is not None and epoch % t.val_every_epochs == 0)
    val = evaluate(tr.model, val_loader, acc, tr.channels_last) if has_val and due else {}
    row = {
        "epoch": epoch,
        "lr": tr.scheduler.get_last_lr()[0],
        **stats,
        **{f"val_{k}": v for k, v in val.items()},
    }
    if acc.is_main_process:
        _write_outputs_guarded(metrics_path, lambda: _append_line(metrics_path, json.dumps(row)))
        log.info(
            "epoch %d/%d loss %.4f train %.3f val %s %.0f img/s",
            epoch,
            t.epochs,
            row["loss"],
            row["train_top1"],
            f"{val['top1']:.3f}" if "top1" in val else "-",
            row["images_per_s"],
        )
        warning = stall_warning(row, tr.method.num_classes)
        if warning:
            log.warning("%s", warning)
    acc.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=epoch)
    tr.state.epoch, tr.state.batch, tr.state.partial = epoch, 0, {}
    tr.reset_sums()
    if t.checkpoint_every_epochs and epoch % t.checkpoint_every_epochs == 0:
        tr.checkpointer.save(tr.state)
    return row


# A classifier still at chance after this many epochs has collapsed or never started.
STALL_EPOCHS = 3
# The self-teacher this far (top-1 points) ahead of the classifier it teaches: nothing passed on.
AUX_GAP = 0.10


def stalled(row: dict, num_classes: int) -> bool:
    """Past the first epochs, the epoch's train top-1 is still about chance: under 1.5 / K, and
    never more than 5 points above 1 / K (two classes: 55%, not 75%)."""
    band = min(1.5 / num_classes, 1.0 / num_classes + 0.05)
    return row["epoch"] >= STALL_EPOCHS and row["train_top1"] < band


def stall_warning(row: dict, num_classes: int) -> str | None:
    """The warning for an epoch whose classifier is still at chance (None: it is not)."""
    if not stalled(row, num_classes):
        return None
    return (
        f"train top-1 {row['train_top1']:.3f} after {row['epoch']} epochs is chance "
        f"(1/{num_classes}): the classifier has collapsed or not started; consider stopping, "
        "and lowering train.lr or setting train.warmup_epochs or train.grad_clip"
    )


def training_warnings(
    history: list[dict], test: dict, num_classes: int, start: dict | None = None
) -> list[str]:
    """What a run's numbers say went wrong, with what to change (empty when nothing did);
    `start`: the head-stability record taken before the first step, when there is one."""
    out = [start["warning"]] if start and start.get("warning") else []
    stall = [h["epoch"] for h in history if stalled(h, num_classes)]
    if stall:
        out.append(
            f"the classifier's train top-1 was at chance (1/{num_classes}) at epoch "
            f"{stall[0]}{f' to {stall[-1]}' if len(stall) > 1 else ''}: training collapsed or "
            "had not started; lower train.lr, or set train.warmup_epochs or train.grad_clip"
        )
    if "aux_top1" in test and test["aux_top1"] - test["top1"] > AUX_GAP:
        out.append(
            f"the classifier's test top-1 ({100 * test['top1']:.1f}%) ended far below its own "
            f"self-teacher's ({100 * test['aux_top1']:.1f}%): the distillation has not passed on "
            "what the self-teacher learned; a short schedule leaves it there (raise "
            "train.epochs), and so can a rate past the classifier head's stability limit, "
            "where the distillation terms kill its last stage (see head_stability in the train "
            "metrics; lower train.lr)"
        )
    return out


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


def _train(tr: Trainer, cfg: PipelineConfig, has_val: bool, metrics_path: Path) -> list[dict]:
    train_loader, val_loader = tr.loaders[:2]
    history = _resume(tr, metrics_path)
    with tr.stop:
        try:
            while tr.state.epoch < cfg.train.epochs:
                stats = train_one_epoch(tr, train_loader, tr.state.epoch)
                history.append(_end_of_epoch(tr, stats, val_loader, has_val, metrics_path))
        except StopRequested:
            log.warning("stopped by a signal; checkpoint saved in %s", tr.checkpointer.root)
            raise
    tr.bar.close()
    return history


def _summary(
    tr: Trainer, cfg: PipelineConfig, history: list[dict], test: dict, t_start: float
) -> dict:
    t, unwrapped = cfg.train, tr.accelerator.unwrap_model(tr.model)
    last = history[-1] if history else {}  # train.epochs: 0 trains nothing
    n = max(len(history), 1)
    metrics = {
        "method": t.method,
        "epochs": t.epochs,
        "test_top1": test["top1"],
        "val_top1": last.get("val_top1"),
        "train_top1": last.get("train_top1"),
        "final_loss": last.get("loss"),
        "images_per_s": sum(h["images_per_s"] for h in history) / n if history else None,
        "epoch_s": sum(h["epoch_s"] for h in history) / n if history else None,
        "train_s": time.perf_counter() - t_start,
        "params_total": count_parameters(unwrapped),
        "params_classifier": count_parameters(unwrapped.backbone),
        "params_aux": count_parameters(unwrapped.aux),
        "processes": tr.accelerator.num_processes,
        "device": str(tr.accelerator.device),
        "lr": scaled_lr(t),
        "nan_skips": tr.state.nan_skips,
        "resumed_from": tr.resumed_from,
        "compiled": tr.train_forward is not None,
    }
    if tr.initial_sha256 is not None:  # a training from a saved model: how it started
        metrics["start"] = {"fresh": tr.fresh, "initial_weights_sha256": tr.initial_sha256}
    if tr.weights is not None:
        metrics["weights"] = tr.weights
    if tr.teacher_warmup:
        metrics["teacher_warmup"] = tr.teacher_warmup
    if tr.teacher is not None:  # frozen: the same weights (and batch-norm statistics) after
        metrics["teacher"] = {
            **tr.teacher.source.to_dict(),
            "weights_sha256_start": tr.teacher_sha256,
            "weights_sha256_end": weights_sha256(tr.teacher.net),
        }
    if tr.train_forward is not None:
        metrics["cuda_graphs"] = tr.cuda_graphs
    if tr.compile_s is not None:
        # the first compiled step of this process: graph capture and code generation, paid once
        metrics["compile_s"] = tr.compile_s
    if "aux_top1" in test:
        metrics["test_aux_top1"] = test["aux_top1"]
    if last.get("val_aux_top1") is not None:
        metrics["val_aux_top1"] = last["val_aux_top1"]
    start = _read_head_stability(tr)
    if start is not None:
        metrics["head_stability"] = start
    metrics["warnings"] = training_warnings(history, test, tr.method.num_classes, start)
    for w in metrics["warnings"]:
        log.warning("%s", w)
    return metrics


HEAD_FILE = "head_stability.json"


def _head_stability(tr: Trainer, cfg: PipelineConfig, bundle: DataBundle, work: Path) -> None:
    """Before the first step of a run from its initial weights (not a resume, not a fine-tune):
    is the peak learning rate past SGD's stability limit for the classifier's head? Rank 0
    measures, logs a warning when it is, and keeps the record beside the checkpoints so a
    resumed run still reports it."""
    path = work / HEAD_FILE
    if not tr.accelerator.is_main_process or path.is_file() or tr.checkpointer.latest():
        return
    t = cfg.train
    model = tr.accelerator.unwrap_model(tr.model)
    try:
        est = check_head(
            model,
            tr.method,
            bundle.train,
            t,
            scaled_lr(t),
            tr.accelerator.device,
            tr.channels_last,
        )
    except Exception as e:  # a diagnostic: a model or method it cannot read must not stop training
        log.warning("head-stability check skipped: %s: %s", type(e).__name__, e)
        return
    kl_from_start = hasattr(tr.method, "kd_weight") and tr.method.kd_weight(0) > 0
    record = {**est.to_dict(), "warning": head_warning(est, t.lr, kl_from_start=kl_from_start)}
    log.info(
        "classifier head at the initial weights: sharpness %.1f, lr x sharpness %.2f, "
        "stability limit %.2f",
        est.sharpness,
        est.lr * est.sharpness,
        est.limit,
    )
    if record["warning"]:
        log.warning("%s", record["warning"])
    _write_outputs_guarded(path, lambda: write_json_atomic(path, record))


def _read_head_stability(tr: Trainer) -> dict | None:
    path = tr.checkpointer.work / HEAD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _rank_hashes(tr: Trainer) -> list[str]:
    """Every rank's weight hash: DDP keeps replicas equal, and this proves it for the run."""
    mine = weights_sha256(tr.accelerator.unwrap_model(tr.model))
    hashes = gather_object([mine]) if tr.accelerator.num_processes > 1 else [mine]
    if len(set(hashes)) != 1:
        raise StageError(
            f"training ranks ended with different weights ({hashes}); the replicas diverged"
        )
    return hashes


def _finish(tr: Trainer, spec: ModelSpec, work: Path, metrics: dict) -> None:
    """Rank 0 writes the model, and its metrics where a launching parent reads them."""
    if not tr.accelerator.is_main_process:
        return
    unwrapped = tr.accelerator.unwrap_model(tr.model)
    _write_outputs_guarded(
        work / "model.safetensors",
        lambda: save_model(unwrapped, spec, work, "model"),
    )
    result = work / RESULT_FILE

    def write_result() -> None:
        result.parent.mkdir(parents=True, exist_ok=True)  # absent when no checkpoint was saved
        write_json_atomic(result, metrics)

    _write_outputs_guarded(result, write_result)


def fit(
    cfg: PipelineConfig,
    bundle: DataBundle,
    work: Path,
    start: Path | None = None,
    *,
    teacher: TeacherSource | None = None,
    fresh: bool = False,
) -> dict:
    """Train (or resume) in `work`; every rank calls this. Returns the run's metrics.

    `start`: a folder with a saved training model (`model.safetensors` + `model.json`) to
    fine-tune instead of training the config's model from scratch (the slim stage's recovery);
    with `fresh`, only its architecture: the same network freshly initialised from
    `train.seed`. `teacher`: a frozen classifier distilled into the model beside the method's
    own loss (its `teacher_kd` term); rebuilt from its folder by every process and on resume,
    never checkpointed or saved.
    """
    if fresh and start is None:
        raise StageError("a fresh start needs the start model whose architecture it takes")
    # under a launcher, rank 0 brings the others along
    with ranks.training(cfg, work, start, teacher=teacher, fresh=fresh):
        return _fit(cfg, bundle, work, start, teacher, fresh)


def _fit(
    cfg: PipelineConfig,
    bundle: DataBundle,
    work: Path,
    start: Path | None,
    teacher: TeacherSource | None = None,
    fresh: bool = False,
) -> dict:
    t_start = time.perf_counter()
    spec = start_spec(cfg, bundle, start)
    tr = _build(cfg, bundle, work, spec, start, teacher, fresh)
    if (start is None or fresh) and cfg.train.epochs:  # a network at its initial weights
        _head_stability(tr, cfg, bundle, work)
    _teacher_warmup(tr, cfg, start, fresh)
    _compile_step(tr)
    on_cpu = tr.accelerator.device.type == "cpu"
    with reuse_freed_memory(cfg.train.reuse_host_memory and on_cpu):
        history = _train(tr, cfg, len(bundle.val) > 0, work / "metrics.jsonl")
        test = evaluate(tr.model, tr.loaders[2], tr.accelerator, tr.channels_last)
    metrics = _summary(tr, cfg, history, test, t_start)
    metrics["weights_sha256_per_rank"] = _rank_hashes(tr)
    _finish(tr, spec, work, metrics)
    tr.accelerator.wait_for_everyone()
    # Not `end_training()`: it destroys the process group, and a later training in this
    # process (slim's recovery under a launcher) needs it; the run closes it at its end.
    for tracker in tr.accelerator.trackers:
        tracker.finish()
    return metrics
