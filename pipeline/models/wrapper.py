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
    """`aux_logits` / `aux_features`: a self-teacher's logits and refined stage maps (frskd,
    ama). `aux_heads` / `aux_head_features`: shallow classifiers' logits and pooled features
    (byot), shallowest first. Methods without an auxiliary branch leave all four empty."""

    logits: torch.Tensor
    features: list[torch.Tensor]
    aux_logits: torch.Tensor | None = None
    aux_features: list[torch.Tensor] = field(default_factory=list)
    aux_heads: list[torch.Tensor] = field(default_factory=list)
    aux_head_features: list[torch.Tensor] = field(default_factory=list)


@dataclass
class AuxHeads:
    """What an auxiliary branch of several classifiers returns (see `ModelOutput`)."""

    logits: list[torch.Tensor]
    features: list[torch.Tensor]


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
        aux = self.aux(feats)
        if isinstance(aux, AuxHeads):
            return ModelOutput(
                logits=logits, features=feats, aux_heads=aux.logits, aux_head_features=aux.features
            )
        aux_logits, refined = aux
        return ModelOutput(
            logits=logits, features=feats, aux_logits=aux_logits, aux_features=refined
        )

    def deployable(self) -> nn.Module:
        """The classifier alone, what ships. Its logits are the wrapper's, bit for bit."""
        return classifier_only(self.backbone)


def classifier_only(backbone: nn.Module) -> nn.Module:
    """A copy of `backbone` in eval mode without the layers that only fed a self-teacher
    (feature taps): what is exported and measured."""
    model = copy.deepcopy(backbone)
    if hasattr(model, "drop_feature_taps"):
        model.drop_feature_taps()
    return model.eval()
