"""The prune stage: drop the self-teacher and every attention branch, and prove nothing changed.

The proof is on real test images: the saved deployable classifier, reloaded from disk, gives
logits equal (bit for bit by default) to the training wrapper's classifier logits; its
parameter count equals the bare backbone's; and the removed branches' cost is measured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import Manifest
from pipeline.config import PipelineConfig
from pipeline.costs import count_macs, torch_latency
from pipeline.errors import StageError
from pipeline.models import count_parameters
from pipeline.models.io import (
    build_backbone,
    build_training_model,
    load_weights,
    read_spec,
    save_model,
)

log = logging.getLogger("pipeline.prune")


def test_batch(ctx, n: int) -> torch.Tensor:
    """The first n test images, preprocessed exactly as at evaluation."""
    return ctx.data.test.stack(n)


@torch.inference_mode()
def logit_parity(
    a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor, chunk: int = 128
) -> dict:
    diffs, agree = [], 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk]
        la = a(x)
        la = la.logits if hasattr(la, "logits") else la
        lb = b(x)
        diffs.append((la - lb).abs().max().item())
        agree += int((la.argmax(1) == lb.argmax(1)).sum())
    return {
        "max_abs_diff": max(diffs),
        "top1_agreement": agree / len(images),
        "samples": len(images),
    }


def attention_figures(wrapper, images: torch.Tensor, preset: dict, out_dir: Path) -> list[Path]:
    """What the self-teacher taught, before it is removed: attention of an early and the last stage."""
    from pipeline.distill.figures import save_attention_figure

    n_stages = len(wrapper.backbone.stage_channels)
    return [
        save_attention_figure(
            wrapper,
            images,
            None,
            out_dir / f"attention_stage{stage + 1}.png",
            preset["mean"],
            preset["std"],
            stage=stage,
        )
        for stage in sorted({1, n_stages - 1})
    ]


def run(cfg: PipelineConfig, inputs: Mapping[str, Manifest], out_dir: Path, ctx) -> Any:
    from pipeline.runner import StageResult

    train_dir = inputs["train"].folder
    spec = read_spec(train_dir, "model")
    wrapper = load_weights(build_training_model(spec, cfg.train.distill), train_dir, "model")
    deploy_spec = {**spec, "aux_removed": wrapper.aux is not None}
    save_model(wrapper.deployable(), deploy_spec, out_dir, "classifier")
    deployed = load_weights(build_backbone(spec), out_dir, "classifier")

    images = test_batch(ctx, cfg.prune.parity_samples)
    parity = logit_parity(wrapper, deployed, images)
    if parity["max_abs_diff"] > cfg.prune.atol:
        raise StageError(
            f"deployed classifier logits differ from the training model's by {parity['max_abs_diff']:.3g} "
            f"(limit prune.atol={cfg.prune.atol}) on {parity['samples']} test images; "
            "the auxiliary branch must not feed the classifier"
        )
    bare = count_parameters(build_backbone(spec))
    if count_parameters(deployed) != bare:
        raise StageError(
            f"deployed model has {count_parameters(deployed)} parameters, the bare backbone {bare}"
        )
    one = images[:1]
    cost = {
        "params_training": count_parameters(wrapper),
        "params_deployed": count_parameters(deployed),
        "params_removed": count_parameters(wrapper.aux),
        "macs_training": count_macs(wrapper, one),
        "macs_deployed": count_macs(deployed, one),
        "latency_training_ms": torch_latency(wrapper, one),
        "latency_deployed_ms": torch_latency(deployed, one),
    }
    cost["macs_removed"] = cost["macs_training"] - cost["macs_deployed"]
    if wrapper.aux is not None:
        attention_figures(wrapper, images[: min(6, len(images))], spec["preset"], out_dir)
    log.info(
        "pruned %d -> %d parameters; logits max |diff| %.3g on %d test images",
        cost["params_training"],
        cost["params_deployed"],
        parity["max_abs_diff"],
        parity["samples"],
    )
    return StageResult(metrics={"parity": parity, "params_bare_backbone": bare, **cost})
