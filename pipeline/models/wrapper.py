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
        logits, feats = features_and_logits(self.backbone, x)
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


def features_and_logits(
    backbone: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A classifier's logits and stage features from one forward pass: its own
    `forward_with_features` (a user's network, features captured on the way), else its
    `forward_features` then `forward_head` (the built-in classifiers)."""
    both = getattr(backbone, "forward_with_features", None)
    if both is not None:
        return both(x)
    feats = backbone.forward_features(x)
    return backbone.forward_head(feats[-1]), feats


def classifier_head(backbone: nn.Module) -> nn.Module | None:
    """The classifier's final linear layer: `fc` of the built-in ones, the layer found in a
    user's network."""
    find = getattr(backbone, "classifier_head", None)
    return find() if find is not None else getattr(backbone, "fc", None)


def classifier_only(backbone: nn.Module) -> nn.Module:
    """A copy of `backbone` in eval mode without the layers that only fed a self-teacher
    (feature taps): what is exported and measured."""
    model = copy.deepcopy(backbone)
    if hasattr(model, "drop_feature_taps"):
        model.drop_feature_taps()
    return model.eval()
