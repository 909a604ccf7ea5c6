"""`frskd` and `ama`: a self-teacher trained jointly with the classifier (METHOD.md section 5).

One code path: `frskd` is `ama` without the mixed-attention term (beta_mix = 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.distill.attention import dynamic_ratio
from pipeline.distill.losses import attention_maps, attention_transfer, kd_loss, mixed_attention
from pipeline.distill.methods.base import LossOutput, Method, MethodOptions, register_method
from pipeline.models.self_teacher import SelfTeacher
from pipeline.models.wrapper import ModelOutput


class SelfKDOptions(MethodOptions):
    """METHOD.md section 5 defaults (`frskd`, `ama`)."""

    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(2.0, ge=0.0, description="weight of the KL term (times T^2)")
    beta: float = Field(100.0, ge=0.0, description="weight of attention transfer")
    beta_mix: float = Field(100.0, ge=0.0, description="weight of the mixed-attention term")
    mask: Literal["soft", "hard"] = "soft"
    kappa: float = Field(20.0, gt=0.0, description="soft-mask sharpness")
    ratio: Literal["entropy", "confidence"] = "entropy"
    ratio_invert: bool = False
    mix_warmup_epochs: int | None = Field(
        None, ge=0, description="epochs without L_mix; None scales 5 of 200 with the schedule"
    )
    kd_warmup_epochs: int = Field(
        0,
        ge=0,
        description="frskd/ama: the KL term's weight rises linearly from 0 over these first "
        "epochs, alpha * e / kd_warmup_epochs in 0-based epoch e, then alpha (0 = off, "
        "METHOD.md); it eases the classifier head's sharpness at the start (docs/methods.md); "
        "the slim stage's recovery of a trained network uses alpha throughout",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="frskd/ama: epsilon of label smoothing on both heads' cross-entropy terms "
        "(0 = hard labels, METHOD.md); the self-teacher's targets combined with `ls`'s",
    )

    def for_recovery(self) -> SelfKDOptions:
        """The KL warm-up is for a head at its initial weights: a trained one is distilled at
        alpha from the first step."""
        return self.model_copy(update={"kd_warmup_epochs": 0})


class SelfKD(Method):
    """Self-teacher, CE on both heads, KD and attention transfer; mixed attention when `use_mix`.

    `parts` holds each weighted term of the total (detached, so they sum to it) and, for the
    mixed term, the batch-mean ratio lambda as `mix_ratio` (a diagnostic, not a loss term).
    """

    Options = SelfKDOptions
    use_mix = True
    needs_features = True

    def build_aux(self, backbone: nn.Module) -> nn.Module:
        return SelfTeacher(list(backbone.stage_channels), self.num_classes)

    @property
    def mix_warmup_epochs(self) -> int:
        """Epochs without L_mix: the config's value, or 5 of 200 scaled (rounded half up)."""
        if self.options.mix_warmup_epochs is not None:
            return self.options.mix_warmup_epochs
        return int(math.floor(5 / 200 * self.epochs + 0.5))

    def kd_weight(self, epoch: int) -> float:
        """The KL term's weight in 0-based `epoch`: alpha, ramped up linearly from 0 over the
        first `kd_warmup_epochs` epochs (alpha * epoch / kd_warmup_epochs), so the first epoch
        of a warm-up has no KL term."""
        w = self.options.kd_warmup_epochs
        if epoch >= w:
            return self.options.alpha
        return self.options.alpha * epoch / w

    def mix_active(self, epoch: int) -> bool:
        return self.use_mix and self.options.beta_mix > 0 and epoch >= self.mix_warmup_epochs

    compiled = False

    def compile(self, **kwargs) -> None:
        # One graph per value of `mix` (off during the warm-up, then on); under compile the KL
        # weight goes in as a 0-d tensor, not a constant, so its warm-up ramp recompiles nothing.
        self._terms = torch.compile(_terms, dynamic=False, **kwargs)
        self.compiled = True

    def _terms(self, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return _terms(*args, **kwargs)

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        if out.aux_logits is None:
            raise ValueError(
                f"method {self.name!r} needs the self-teacher's outputs (model.aux is None)"
            )
        c = self.options
        kd_weight = self.kd_weight(epoch)
        if self.compiled:
            kd_weight = torch.full((), kd_weight, device=out.logits.device)
        total, parts = self._terms(
            out.logits,
            out.aux_logits,
            out.features,
            out.aux_features,
            targets,
            kd_weight,
            self.mix_active(epoch),
            temperature=c.temperature,
            beta=c.beta,
            beta_mix=c.beta_mix,
            label_smoothing=c.label_smoothing,
            ratio=c.ratio,
            mask=c.mask,
            kappa=c.kappa,
            invert=c.ratio_invert,
        )
        return LossOutput(total, parts)


def _terms(
    logits: torch.Tensor,
    aux_logits: torch.Tensor,
    features: list[torch.Tensor],
    aux_features: list[torch.Tensor],
    targets: torch.Tensor,
    kd_weight: float | torch.Tensor,
    mix: bool,
    *,
    temperature: float,
    beta: float,
    beta_mix: float,
    label_smoothing: float,
    ratio: str,
    mask: str,
    kappa: float,
    invert: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss's tensor arithmetic, each weighted term in `parts` (detached): no host syncs and
    no data-dependent Python control flow, so `torch.compile` captures it in one graph."""
    s_atts, t_atts = attention_maps(features, aux_features)
    eps = label_smoothing
    parts = {
        "ce": F.cross_entropy(logits.float(), targets, label_smoothing=eps),
        "ce_aux": F.cross_entropy(aux_logits.float(), targets, label_smoothing=eps),
        "kd": kd_weight * kd_loss(logits, aux_logits, temperature),
        "at": beta * attention_transfer(s_atts, t_atts),
    }
    total = parts["ce"] + parts["ce_aux"] + parts["kd"] + parts["at"]
    if mix:
        lam = dynamic_ratio(aux_logits, targets, kind=ratio)
        m = mixed_attention(s_atts, t_atts, lam, mask=mask, kappa=kappa, invert=invert)
        parts["mix"] = beta_mix * m
        total = total + parts["mix"]
        parts["mix_ratio"] = lam.mean()
    else:
        parts["mix"] = torch.zeros((), device=logits.device)
    return total, {k: v.detach() for k, v in parts.items()}


@register_method("frskd")
class FRSKD(SelfKD):
    use_mix = False


@register_method("ama")
class AdaptiveMixedAttention(SelfKD):
    use_mix = True
