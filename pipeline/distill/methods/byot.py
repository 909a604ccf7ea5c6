"""`byot`: shallow classifiers taught by the deepest ("Be Your Own Teacher", Zhang et al., ICCV 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.distill.losses import kd_loss
from pipeline.distill.methods.base import LossOutput, Method, MethodOptions, register_method
from pipeline.models.shallow_heads import ShallowHeads
from pipeline.models.wrapper import ModelOutput


class BYOTOptions(MethodOptions):
    """`byot`: Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional
    Neural Networks via Self Distillation", ICCV 2019; the defaults of its public code."""

    temperature: float = Field(3.0, gt=0.0, description="softens the deepest classifier's target")
    alpha: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="weight of the shallow heads' KD term; every cross-entropy term has 1 - alpha",
    )
    beta: float = Field(
        1e-6,
        ge=0.0,
        description="weight of the feature hint (a sum of squares over the batch, as published)",
    )


@register_method("byot")
class BeYourOwnTeacher(Method):
    """BYOT (Zhang et al., ICCV 2019): shallow classifiers on the classifier's earlier stages
    (`ShallowHeads`), taught by the deepest classifier, the one that ships. As in the paper's
    public code: L = (1 - a) (CE(z_c) + sum_i CE(z_i)) + a sum_i T^2 KL(p_c(T) || p_i(T))
    + b sum_i sum_batch |f_i - f_c|^2 over the elements where either feature is positive,
    f the pooled features (the deepest's are the classifier's own, before its linear layer).
    The deepest classifier's prediction and features are detached: the heads learn from it,
    never the reverse; the heads' own cross-entropy trains the stages they read.
    """

    Options = BYOTOptions
    needs_features = True

    def build_aux(self, backbone: nn.Module) -> nn.Module:
        return ShallowHeads(list(backbone.stage_channels), self.num_classes)

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        if not out.aux_heads:
            raise ValueError("method 'byot' needs the shallow heads' outputs (model.aux is None)")
        c = self.options
        teacher = out.features[-1].detach().float().mean(dim=(2, 3))
        heads_ce = sum(F.cross_entropy(z.float(), targets) for z in out.aux_heads)
        kd = sum(kd_loss(z, out.logits, c.temperature) for z in out.aux_heads)
        hint = sum(
            ((f.float() - teacher).pow(2) * ((f > 0) | (teacher > 0))).sum()
            for f in out.aux_head_features
        )
        parts = {
            "ce": (1.0 - c.alpha) * F.cross_entropy(out.logits.float(), targets),
            "ce_heads": (1.0 - c.alpha) * heads_ce,
            "kd": c.alpha * kd,
            "hint": c.beta * hint,
        }
        return LossOutput(sum(parts.values()), {k: v.detach() for k, v in parts.items()})
