"""The unpruned teacher of the slim stage's recovery (`slim.teacher: unpruned`).

The frozen deployable classifier of the trained model teaches the pruned one by a KL term on
temperature-softened logits, added to whatever the recovery method's own loss is, as its own
part `teacher_kd`:

    teacher_weight * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))

The teacher is not part of the training model: it is never in the optimizer, never wrapped by
DDP, never checkpointed and never saved with the slim model. Every process builds it from the
train stage's files (`TeacherSource.folder`), so a resumed or multi-process recovery has the
same teacher. It runs in eval mode with frozen weights, under `torch.no_grad`, on the same
batch the student sees (same augmentation, same memory format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.distill import LossOutput
from pipeline.distill.losses import kd_loss
from pipeline.training.model import load_deployable

PART = "teacher_kd"


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher comes from and how it teaches (picklable: sent to the other ranks)."""

    folder: Path  # a saved training model (model.safetensors + model.json): the train stage's
    temperature: float = 4.0
    weight: float = 1.0

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "temperature": self.temperature, "weight": self.weight}


def teacher_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, the teacher detached."""
    return weight * kd_loss(student_logits, teacher_logits, temperature)


class UnprunedTeacher:
    """A frozen classifier whose logits on the student's batch add the `teacher_kd` term."""

    def __init__(self, classifier: nn.Module, source: TeacherSource) -> None:
        self.net = classifier.eval().requires_grad_(False)
        self.source = source

    @classmethod
    def load(
        cls, source: TeacherSource, device: torch.device, channels_last: bool = False
    ) -> UnprunedTeacher:
        net = load_deployable(source.folder).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return cls(net, source)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # whatever else was switched to training mode, the teacher never is
        with torch.no_grad():
            return self.net(images)

    def add_to(self, loss: LossOutput, student_logits: torch.Tensor, images: torch.Tensor):
        """The method's loss with the teacher's term added to its total and its parts."""
        term = teacher_kd(
            student_logits, self.logits(images), self.source.temperature, self.source.weight
        )
        return LossOutput(loss.total + term, {**loss.parts, PART: term.detach()})
