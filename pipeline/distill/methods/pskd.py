"""`pskd`: progressive self-knowledge distillation (Kim et al., ICCV 2021)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.distill.methods.base import (
    Forward,
    Gather,
    LossOutput,
    Method,
    MethodOptions,
    OptionsInput,
    register_method,
)
from pipeline.models.wrapper import ModelOutput


class PSKDOptions(MethodOptions):
    """`pskd`: Kim et al., "Self-Knowledge Distillation with Progressive Refinement of
    Targets", ICCV 2021; the paper's default alpha_T = 0.8."""

    alpha_final: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="alpha_T: the weight of last epoch's own prediction in the target at the "
        "last epoch; epoch t (1-based) of T uses alpha_final * t / T",
    )


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

    Options = PSKDOptions
    needs_index = True

    def __init__(self, options: OptionsInput = None, *, num_classes: int, epochs: int) -> None:
        super().__init__(options, num_classes=num_classes, epochs=epochs)
        self.probs: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def attach(self, num_samples: int, device: torch.device) -> None:
        self.probs = torch.zeros(num_samples, self.num_classes, device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def alpha(self, epoch: int) -> float:
        """a_t for the 0-based `epoch`: alpha_T * (epoch + 1) / T, 0 in the first epoch."""
        if epoch == 0:
            return 0.0
        return self.options.alpha_final * (epoch + 1) / self.epochs

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
