"""Training methods by name. Each builds its auxiliary branch (or none) and its loss.

`ce` is the baseline: classifier cross-entropy alone, no self-teacher. `frskd` and `ama` share
one code path (METHOD.md section 5); `frskd` is `ama` with beta_mix = 0. The comparators `ls`
(label smoothing), `cskd` (class-wise self-knowledge distillation), `pskd` (progressive
self-knowledge distillation) and `byot` (shallow classifiers taught by the deepest, "Be Your
Own Teacher") register beside them with `@register_method` and share the same
training loop; docs/methods.md gives each one's source and what was implemented.

What a method may ask of the training loop, by class attribute:

- `needs_features`: the classifier's stage features (for a self-teacher).
- `needs_index`: each sample's position in the training set, as `extras["index"]`.
- `needs_pair`: another training image of the same class per sample, drawn uniformly and
  augmented on its own, as `extras["pair"]`.

Per step the loop calls `extra_inputs(forward, extras)` (inside autocast; what it returns goes
to `loss` as keywords), `loss(out, targets, epoch, **inputs)`, and after an optimizer update
with a finite loss `record(out, extras, gather)`. A method with per-sample state keeps it in
`state_dict()` (tensors only), which the checkpoints hold, so a resumed run continues from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


Forward = Callable[[torch.Tensor], ModelOutput]
Gather = Callable[[Any], Any]


class Method:
    """Base: a method owns its auxiliary branch and its loss; `epoch` counts from 0."""

    name = "base"
    needs_features = False  # whether the loss reads the classifier's stage features
    needs_index = False  # whether the loader adds extras["index"] (position in the training set)
    needs_pair = False  # whether the loader adds extras["pair"] (a same-class partner image)

    def __init__(self, distill_cfg, *, num_classes: int, epochs: int) -> None:
        self.cfg = distill_cfg
        self.num_classes = num_classes
        self.epochs = epochs

    def build_aux(self, backbone: nn.Module) -> nn.Module | None:
        return None

    def attach(self, num_samples: int, device: torch.device) -> None:
        """Called once before training with the training set's size and the training device."""

    def extra_inputs(self, forward: Forward, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What `loss` reads besides the batch's own outputs (keyword arguments)."""
        return {}

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        raise NotImplementedError

    def record(self, out: ModelOutput, extras: dict[str, torch.Tensor], gather: Gather) -> None:
        """After an optimizer update: keep per-sample state. `gather` is a collective over every
        training process (identity on one), so every process keeps the same state."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@register_method("ce")
class CrossEntropy(Method):
    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
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

    def kd_weight(self, epoch: int) -> float:
        """The KL term's weight in 0-based `epoch`: alpha, ramped up linearly from 0 over the
        first `kd_warmup_epochs` epochs (alpha * epoch / kd_warmup_epochs), so the first epoch
        of a warm-up has no KL term."""
        w = self.cfg.kd_warmup_epochs
        if epoch >= w:
            return self.cfg.alpha
        return self.cfg.alpha * epoch / w

    def mix_active(self, epoch: int) -> bool:
        return self.use_mix and self.cfg.beta_mix > 0 and epoch >= self.mix_warmup_epochs

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        if out.aux_logits is None:
            raise ValueError(
                f"method {self.name!r} needs the self-teacher's outputs (model.aux is None)"
            )
        c = self.cfg
        s_atts, t_atts = attention_maps(out.features, out.aux_features)
        eps = c.label_smoothing
        parts = {
            "ce": F.cross_entropy(out.logits.float(), targets, label_smoothing=eps),
            "ce_aux": F.cross_entropy(out.aux_logits.float(), targets, label_smoothing=eps),
            "kd": self.kd_weight(epoch) * kd_loss(out.logits, out.aux_logits, c.temperature),
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


@register_method("ls")
class LabelSmoothing(Method):
    """Label smoothing (Szegedy et al., CVPR 2016, section 7): CE against the target
    (1 - epsilon) one-hot + epsilon / K, for every class including the true one."""

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        eps = self.cfg.ls.smoothing
        ce = F.cross_entropy(out.logits.float(), targets, label_smoothing=eps)
        return LossOutput(ce, {"ce": ce.detach()})


@register_method("cskd")
class ClassWiseSelfKD(Method):
    """CS-KD (Yun et al., CVPR 2020): each sample x is paired with another training sample x'
    of its class; L = CE(z(x), y) + lambda_cls * T^2 * KL(p(x'; T) || p(x; T)), where the
    partner's prediction is computed by the same network without gradient (the paper's
    `torch.no_grad()` forward, in train mode, so batch norm sees it as the official code does).

    The loader supplies the partners (`needs_pair`): a per-sample draw, so it works with any
    sampler and with every process's shard. CE is on the anchors only, as in the paper.
    """

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
        c = self.cfg.cskd
        ce = F.cross_entropy(out.logits.float(), targets)
        cls = c.lambda_cls * kd_loss(out.logits, pair_logits, c.temperature)  # partner detached
        return LossOutput(ce + cls, {"ce": ce.detach(), "cls": cls.detach()})


@register_method("pskd")
class ProgressiveSelfKD(Method):
    """PS-KD (Kim et al., ICCV 2021): the target of sample i at epoch t (1-based) of T is
    (1 - a_t) one-hot(y_i) + a_t p_{t-1}(x_i), a_t = alpha_T * t / T, where p_{t-1}(x_i) is
    the model's own softmax prediction for the same sample when it was last trained on, one
    epoch earlier (the official code's store, written at each step after the target is read).
    Epoch 1 uses the one-hot target (there is no earlier prediction), as does any sample the
    store has not seen. The loss is CE against these soft targets, which are detached.

    The store (N x K probabilities and a seen mask) lives on the training device, is gathered
    across processes after every update and is part of every checkpoint.
    """

    needs_index = True

    def __init__(self, distill_cfg, *, num_classes: int, epochs: int) -> None:
        super().__init__(distill_cfg, num_classes=num_classes, epochs=epochs)
        self.probs: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def attach(self, num_samples: int, device: torch.device) -> None:
        self.probs = torch.zeros(num_samples, self.num_classes, device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def alpha(self, epoch: int) -> float:
        """a_t for the 0-based `epoch`: alpha_T * (epoch + 1) / T, 0 in the first epoch."""
        if epoch == 0:
            return 0.0
        return self.cfg.pskd.alpha_final * (epoch + 1) / self.epochs

    def extra_inputs(self, forward: Forward, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        if "index" not in extras:
            raise ValueError(
                "method 'pskd' needs each sample's index in the training set (extras['index']); "
                "the training loader adds it when the method's needs_index is set"
            )
        return {"index": extras["index"]}

    def soft_targets(self, targets: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        onehot = F.one_hot(targets, self.num_classes).float()
        a = self.alpha(epoch)
        if a == 0.0:
            return onehot
        if self.probs is None or self.seen is None:
            raise ValueError("method 'pskd' was not attached to a training set (call attach)")
        index = index.to(self.probs.device)
        past = torch.where(self.seen[index, None], self.probs[index], onehot.to(self.probs.device))
        return ((1.0 - a) * onehot + a * past.to(onehot.device)).detach()

    def loss(
        self,
        out: ModelOutput,
        targets: torch.Tensor,
        epoch: int,
        index: torch.Tensor | None = None,
        **inputs,
    ) -> LossOutput:
        if index is None:
            raise ValueError(
                "method 'pskd' needs index: each sample's position in the training set"
            )
        soft = self.soft_targets(targets, index, epoch)
        ce = F.cross_entropy(out.logits.float(), soft)
        alpha = torch.tensor(self.alpha(epoch), device=ce.device)
        return LossOutput(ce, {"ce": ce.detach(), "pskd_alpha": alpha})

    def record(self, out: ModelOutput, extras: dict[str, torch.Tensor], gather: Gather) -> None:
        probs = F.softmax(out.logits.detach().float(), dim=-1)
        index, probs = gather((extras["index"], probs))
        index = index.to(self.probs.device)
        self.probs[index] = probs.to(self.probs.device)
        self.seen[index] = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.probs is None:
            return {}
        return {"probs": self.probs.detach().cpu(), "seen": self.seen.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        probs, seen = state.get("probs"), state.get("seen")
        if probs is None or seen is None:
            raise ValueError(f"pskd state needs 'probs' and 'seen', got {sorted(state)}")
        if self.probs is not None and probs.shape != self.probs.shape:
            raise ValueError(
                f"pskd state holds {tuple(probs.shape)} predictions, this training set needs "
                f"{tuple(self.probs.shape)}"
            )
        device = self.probs.device if self.probs is not None else torch.device("cpu")
        self.probs = probs.to(device=device, dtype=torch.float32)
        self.seen = seen.to(device=device, dtype=torch.bool)


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

    needs_features = True

    def build_aux(self, backbone: nn.Module) -> nn.Module:
        from pipeline.models.shallow_heads import ShallowHeads

        return ShallowHeads(list(backbone.stage_channels), self.num_classes)

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        if not out.aux_heads:
            raise ValueError("method 'byot' needs the shallow heads' outputs (model.aux is None)")
        c = self.cfg.byot
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


def create_method(name: str, distill_cfg, *, num_classes: int, epochs: int) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](distill_cfg, num_classes=num_classes, epochs=epochs)
