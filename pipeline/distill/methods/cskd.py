"""`cskd`: class-wise self-knowledge distillation (Yun et al., CVPR 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.distill.losses import kd_loss
from pipeline.distill.methods.base import (
    Forward,
    LossOutput,
    Method,
    MethodOptions,
    register_method,
)
from pipeline.models.wrapper import ModelOutput


class CSKDOptions(MethodOptions):
    """`cskd`: Yun et al., "Regularizing Class-wise Predictions via Self-knowledge
    Distillation", CVPR 2020; the paper's defaults T = 4, lambda_cls = 1."""

    temperature: float = Field(4.0, gt=0.0, description="T of the class-wise KL term")
    lambda_cls: float = Field(
        1.0, ge=0.0, description="weight of T^2 KL(p(x'; T) detached || p(x; T)), x' same class"
    )


@register_method("cskd")
class ClassWiseSelfKD(Method):
    """CS-KD (Yun et al., CVPR 2020): each sample x is paired with another training sample x'
    of its class; L = CE(z(x), y) + lambda_cls * T^2 * KL(p(x'; T) || p(x; T)), where the
    partner's prediction is computed by the same network without gradient (the paper's
    `torch.no_grad()` forward, in train mode, so batch norm sees it as the official code does).

    The loader supplies the partners (`needs_pair`): a per-sample draw, so it works with any
    sampler and with every process's shard. CE is on the anchors only, as in the paper.
    """

    Options = CSKDOptions
    needs_pair = True

    def extra_inputs(self, forward: Forward, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        if "pair" not in extras:
            raise ValueError(
                "method 'cskd' needs each sample's same-class partner (extras['pair']); the "
                "training loader adds it when the method's needs_pair is set"
            )
        with torch.no_grad():
            return {"pair_logits": forward(extras["pair"]).logits}

    def loss(
        self,
        out: ModelOutput,
        targets: torch.Tensor,
        epoch: int,
        pair_logits: torch.Tensor | None = None,
        **inputs,
    ) -> LossOutput:
        if pair_logits is None:
            raise ValueError("method 'cskd' needs pair_logits: the partners' logits")
        c = self.options
        ce = F.cross_entropy(out.logits.float(), targets)
        cls = c.lambda_cls * kd_loss(out.logits, pair_logits, c.temperature)  # partner detached
        return LossOutput(ce + cls, {"ce": ce.detach(), "cls": cls.detach()})
