"""The training-time model: the classifier plus auxiliary branches under one submodule, `aux`.

Everything the method adds lives in `aux`, so pruning is `wrapper.backbone`: nothing else.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ModelOutput:
    logits: torch.Tensor
    features: list[torch.Tensor]
    aux_logits: torch.Tensor | None = None
    aux_features: list[torch.Tensor] = field(default_factory=list)


class SelfDistillModel(nn.Module):
    def __init__(self, backbone: nn.Module, aux: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.aux = aux

    def forward(self, x: torch.Tensor) -> ModelOutput:
        feats = self.backbone.forward_features(x)
        logits = self.backbone.forward_head(feats[-1])
        if self.aux is None:
            return ModelOutput(logits=logits, features=feats)
        aux_logits, refined = self.aux(feats)
        return ModelOutput(
            logits=logits, features=feats, aux_logits=aux_logits, aux_features=refined
        )

    def deployable(self) -> nn.Module:
        """The classifier alone, what ships: a copy of the backbone without the layers that only
        fed the self-teacher (feature taps). Its logits are the wrapper's, bit for bit."""
        model = copy.deepcopy(self.backbone)
        if hasattr(model, "drop_feature_taps"):
            model.drop_feature_taps()
        return model.eval()
