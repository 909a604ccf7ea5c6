"""`ls`: label smoothing (Szegedy et al., CVPR 2016, section 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.distill.methods.base import LossOutput, Method, MethodOptions, register_method
from pipeline.models.wrapper import ModelOutput


class LabelSmoothingOptions(MethodOptions):
    """`ls`: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR
    2016, section 7 (label-smoothing regularisation)."""

    smoothing: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="epsilon: CE against (1 - epsilon) one-hot + epsilon / K; the paper's 0.1",
    )


@register_method("ls")
class LabelSmoothing(Method):
    """Label smoothing (Szegedy et al., CVPR 2016, section 7): CE against the target
    (1 - epsilon) one-hot + epsilon / K, for every class including the true one."""

    Options = LabelSmoothingOptions

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        eps = self.options.smoothing
        ce = F.cross_entropy(out.logits.float(), targets, label_smoothing=eps)
        return LossOutput(ce, {"ce": ce.detach()})
