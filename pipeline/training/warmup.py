"""Start a classifier from weights it already learned: the user's checkpoint, and a self-teacher
warmed up on the frozen classifier before it teaches (`train.teacher_warmup_epochs`).

A self-teacher built beside a trained classifier starts random; distilling from it in the
first steps teaches the classifier noise. The warm-up trains the auxiliary branch alone, with
cross-entropy on its own predictions, over the classifier's features, which do not change:
the classifier's weights and batch-norm statistics are untouched.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.models.checkpoint import fit_checkpoint, read_checkpoint
from pipeline.models.external import ExternalClassifier
from pipeline.models.wrapper import AuxHeads, classifier_head, features_and_logits

log = logging.getLogger("pipeline.train")


def load_user_weights(backbone: nn.Module, path: Path) -> dict[str, Any]:
    """The checkpoint at `path` into the classifier (the user's own module inside an adapter);
    a head for another class count is left freshly built and reported. What was loaded."""
    target = backbone.net if isinstance(backbone, ExternalClassifier) else backbone
    head = classifier_head(backbone)
    head_name = next((n for n, m in target.named_modules() if m is head), None) if head else None
    ckpt = read_checkpoint(path)
    report = fit_checkpoint(target, ckpt, head=head_name)
    info = {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "nested_key": ckpt.nested_key,
        "stripped_prefixes": list(ckpt.stripped_prefixes),
        **report.to_dict(),
    }
    log.info(
        "model.weights: %d tensors from %s%s%s",
        report.loaded,
        ckpt.path,
        f" (under {ckpt.nested_key!r})" if ckpt.nested_key else "",
        f"; head {report.head_replaced!r} replaced: {report.head_classes[0]} -> "
        f"{report.head_classes[1]} classes"
        if report.head_replaced
        else "",
    )
    return info


def _aux_loss(aux_out, targets: torch.Tensor) -> torch.Tensor:
    if isinstance(aux_out, AuxHeads):
        return sum(F.cross_entropy(z.float(), targets) for z in aux_out.logits)
    logits, _ = aux_out
    return F.cross_entropy(logits.float(), targets)


def _aux_logits(aux_out) -> torch.Tensor:
    return aux_out.logits[-1] if isinstance(aux_out, AuxHeads) else aux_out[0]


def warm_up_aux(
    model: nn.Module,
    loader,
    epochs: int,
    lr: float,
    accelerator,
    channels_last: bool = False,
) -> list[dict[str, float]]:
    """Train `model.aux` alone for `epochs` over `loader` on the frozen classifier's features;
    gradients averaged over the ranks. One row per epoch: loss, the branch's train top-1."""
    aux = model.aux
    params = [p for p in aux.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    backbone_mode = model.backbone.training
    model.backbone.eval()  # frozen: batch-norm statistics too
    aux.train()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rows = []
    try:
        for epoch in range(1, epochs + 1):
            t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
            for batch in loader:
                images, targets = batch[0], batch[1]
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), accelerator.autocast():
                    _, feats = features_and_logits(model.backbone, images)
                with accelerator.autocast():
                    out = aux([f.detach() for f in feats])
                loss = _aux_loss(out, targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    for p in params:
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad.div_(world)
                opt.step()
                total += float(loss.detach()) * len(targets)
                correct += int((_aux_logits(out).argmax(1) == targets).sum())
                seen += len(targets)
            row = {
                "epoch": epoch,
                "loss": total / max(seen, 1),
                "aux_train_top1": correct / max(seen, 1),
                "epoch_s": time.perf_counter() - t0,
            }
            log.info(
                "self-teacher warm-up %d/%d: loss %.4f, its train top-1 %.3f",
                epoch,
                epochs,
                row["loss"],
                row["aux_train_top1"],
            )
            rows.append(row)
    finally:
        model.backbone.train(backbone_mode)
    return rows
