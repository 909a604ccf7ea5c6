"""The training stage, through Hugging Face Accelerate: one code path for 1 CPU, N processes or N GPUs.

Writes `model.safetensors` + `model.json` (the training wrapper, auxiliary branches included)
and `metrics.jsonl` (one line per epoch) into the stage folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.artifacts import Manifest
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.data import DataBundle, make_loader
from pipeline.distill import Method, create_method
from pipeline.errors import StageError
from pipeline.models import SelfDistillModel, count_parameters, create_model
from pipeline.models.io import save_model

log = logging.getLogger("pipeline.train")


def resolve_stem(cfg: PipelineConfig, bundle: DataBundle) -> str:
    return bundle.preset.stem if cfg.model.stem == "auto" else cfg.model.stem


def model_spec(cfg: PipelineConfig, bundle: DataBundle) -> dict[str, Any]:
    return {
        "arch": cfg.model.name,
        "stem": resolve_stem(cfg, bundle),
        "width": cfg.model.width,
        "num_classes": bundle.num_classes,
        "method": cfg.train.method,
        "classes": bundle.classes,
        "preset": bundle.preset.to_dict(),
    }


def build_model(cfg: PipelineConfig, bundle: DataBundle) -> tuple[SelfDistillModel, Method]:
    method = create_method(
        cfg.train.method, cfg.train.distill, num_classes=bundle.num_classes, epochs=cfg.train.epochs
    )
    backbone = create_model(
        cfg.model.name, num_classes=bundle.num_classes, stem=resolve_stem(cfg, bundle), width=cfg.model.width
    )
    return SelfDistillModel(backbone, method.build_aux(backbone)), method


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


def train_one_epoch(model, method, loader, optimizer, scheduler, accelerator, epoch: int, bar) -> dict:
    model.train()
    sums: dict[str, float] = {}
    correct = seen = 0
    t0 = time.perf_counter()
    for images, targets in loader:
        with accelerator.autocast():
            out = model(images)
            loss = method.loss(out, targets, epoch)
        if not torch.isfinite(loss.total):
            raise StageError(
                f"non-finite loss at epoch {epoch + 1}: {float(loss.total)}; lower train.lr or "
                "turn off mixed precision"
            )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss.total)
        optimizer.step()
        scheduler.step()
        n = targets.size(0)
        seen += n
        correct += int((out.logits.argmax(1) == targets).sum())
        for k, v in {"loss": loss.total.detach(), **loss.parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.total.detach()):.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    elapsed = time.perf_counter() - t0
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats.update(train_top1=correct / max(seen, 1), images_per_s=seen / max(elapsed, 1e-9), epoch_s=elapsed)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator) -> dict[str, float]:
    """Top-1 of the classifier (and of the self-teacher, when there is one)."""
    model.eval()
    correct = aux_correct = seen = 0
    for images, targets in loader:
        out = model(images)
        logits, targets_all = accelerator.gather_for_metrics((out.logits, targets))
        correct += int((logits.argmax(1) == targets_all).sum())
        seen += targets_all.numel()
        if out.aux_logits is not None:
            aux = accelerator.gather_for_metrics(out.aux_logits)
            aux_correct += int((aux.argmax(1) == targets_all).sum())
    res = {"top1": correct / max(seen, 1)}
    if aux_correct:
        res["aux_top1"] = aux_correct / max(seen, 1)
    return res


def _accelerator(t: TrainConfig):
    from accelerate import Accelerator

    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    if t.device == "cuda" and not torch.cuda.is_available():
        raise StageError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return Accelerator(cpu=cpu, mixed_precision=t.mixed_precision)


def run(cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx) -> Any:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from pipeline.runner import StageResult

    t = cfg.train
    accelerator = _accelerator(t)
    set_seed(t.seed)
    bundle: DataBundle = ctx.data
    model, method = build_model(cfg, bundle)
    per_proc = max(1, t.batch_size // accelerator.num_processes)
    train_loader = make_loader(bundle.train, per_proc, shuffle=True, workers=cfg.data.num_workers, seed=t.seed)
    val_loader = make_loader(bundle.val, per_proc, shuffle=False, workers=cfg.data.num_workers)
    test_loader = make_loader(bundle.test, per_proc, shuffle=False, workers=cfg.data.num_workers)
    optimizer = make_optimizer(model, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, len(train_loader)))
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader, scheduler
    )
    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        metrics_path.write_text("")
    history: list[dict] = []
    bar = tqdm(
        total=t.epochs * len(train_loader),
        desc=f"train {t.method}",
        disable=not accelerator.is_main_process,
        mininterval=1.0,
        unit="step",
    )
    t_start = time.perf_counter()
    for epoch in range(t.epochs):
        stats = train_one_epoch(model, method, train_loader, optimizer, scheduler, accelerator, epoch, bar)
        val = evaluate(model, val_loader, accelerator) if len(bundle.val) else {}
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **stats, **{f"val_{k}": v for k, v in val.items()}}
        history.append(row)
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            log.info(
                "epoch %d/%d loss %.4f train %.3f val %s %.0f img/s",
                epoch + 1, t.epochs, row["loss"], row["train_top1"],
                f"{val.get('top1', float('nan')):.3f}", row["images_per_s"],
            )
    bar.close()
    test = evaluate(model, test_loader, accelerator)
    unwrapped: SelfDistillModel = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        save_model(unwrapped, model_spec(cfg, bundle), out_dir, "model")
    accelerator.wait_for_everyone()
    last = history[-1]
    metrics = {
        "method": t.method,
        "epochs": t.epochs,
        "test_top1": test["top1"],
        "val_top1": last.get("val_top1"),
        "train_top1": last["train_top1"],
        "final_loss": last["loss"],
        "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
        "epoch_s": sum(h["epoch_s"] for h in history) / len(history),
        "train_s": time.perf_counter() - t_start,
        "params_total": count_parameters(unwrapped),
        "params_classifier": count_parameters(unwrapped.backbone),
        "params_aux": count_parameters(unwrapped.aux),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "lr": scaled_lr(t),
    }
    if "aux_top1" in test:
        metrics["test_aux_top1"] = test["aux_top1"]
    return StageResult(metrics=metrics)
