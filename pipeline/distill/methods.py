"""Training methods by name. Each builds its auxiliary branch (or none) and its loss.

`ce` is the baseline: classifier cross-entropy alone, no self-teacher. `frskd` and `ama` share
one code path (METHOD.md section 5); `frskd` is `ama` with beta_mix = 0. Further methods
register beside them with `@register_method` and share the same training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distill.attention import dynamic_ratio
from pipeline.distill.losses import attention_maps, attention_transfer, kd_loss, mixed_attention
from pipeline.models.self_teacher import SelfTeacher
from pipeline.models.wrapper import ModelOutput

METHODS: dict[str, type[Method]] = {}


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base: a method owns its auxiliary branch and its loss; `epoch` counts from 0."""

    name = "base"
    needs_features = False  # whether the loss reads the classifier's stage features

    def __init__(self, distill_cfg, *, num_classes: int, epochs: int) -> None:
        self.cfg = distill_cfg
        self.num_classes = num_classes
        self.epochs = epochs

    def build_aux(self, backbone: nn.Module) -> nn.Module | None:
        return None

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int) -> LossOutput:
        raise NotImplementedError


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@register_method("ce")
class CrossEntropy(Method):
    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int) -> LossOutput:
        ce = F.cross_entropy(out.logits.float(), targets)
        return LossOutput(ce, {"ce": ce.detach()})


class SelfKD(Method):
    """Self-teacher, CE on both heads, KD and attention transfer; mixed attention when `use_mix`.

    `parts` holds each weighted term of the total (detached, so they sum to it) and, for the
    mixed term, the batch-mean ratio lambda as `mix_ratio` (a diagnostic, not a loss term).
    """

    use_mix = True
    needs_features = True

    def build_aux(self, backbone: nn.Module) -> nn.Module:
        return SelfTeacher(list(backbone.stage_channels), self.num_classes)

    @property
    def mix_warmup_epochs(self) -> int:
        """Epochs without L_mix: the config's value, or 5 of 200 scaled (rounded half up)."""
        if self.cfg.mix_warmup_epochs is not None:
            return self.cfg.mix_warmup_epochs
        return int(math.floor(5 / 200 * self.epochs + 0.5))

    def mix_active(self, epoch: int) -> bool:
        return self.use_mix and self.cfg.beta_mix > 0 and epoch >= self.mix_warmup_epochs

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int) -> LossOutput:
        if out.aux_logits is None:
            raise ValueError(
                f"method {self.name!r} needs the self-teacher's outputs (model.aux is None)"
            )
        c = self.cfg
        s_atts, t_atts = attention_maps(out.features, out.aux_features)
        parts = {
            "ce": F.cross_entropy(out.logits.float(), targets),
            "ce_aux": F.cross_entropy(out.aux_logits.float(), targets),
            "kd": c.alpha * kd_loss(out.logits, out.aux_logits, c.temperature),
            "at": c.beta * attention_transfer(s_atts, t_atts),
        }
        total = sum(parts.values())
        if self.mix_active(epoch):
            lam = dynamic_ratio(out.aux_logits, targets, kind=c.ratio)
            mix = mixed_attention(
                s_atts,
                t_atts,
                lam,
                mask=c.mask,
                kappa=c.kappa,
                invert=c.ratio_invert,
            )
            parts["mix"] = c.beta_mix * mix
            total = total + parts["mix"]
            parts["mix_ratio"] = lam.mean()
        else:
            parts["mix"] = torch.zeros((), device=out.logits.device)
        return LossOutput(total, {k: v.detach() for k, v in parts.items()})


@register_method("frskd")
class FRSKD(SelfKD):
    use_mix = False


@register_method("ama")
class AdaptiveMixedAttention(SelfKD):
    use_mix = True


def create_method(name: str, distill_cfg, *, num_classes: int, epochs: int) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](distill_cfg, num_classes=num_classes, epochs=epochs)
