"""`ce`: the baseline, the classifier's cross-entropy alone, no self-teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.distill.methods.base import LossOutput, Method, MethodOptions, register_method
from pipeline.models.wrapper import ModelOutput


class CEOptions(MethodOptions):
    """`ce` takes no options."""


@register_method("ce")
class CrossEntropy(Method):
    Options = CEOptions

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        ce = F.cross_entropy(out.logits.float(), targets)
        return LossOutput(ce, {"ce": ce.detach()})
