"""The slim stage's unpruned teacher: its KL term by hand, and a teacher that stays frozen."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pipeline.distill import LossOutput
from pipeline.models.io import save_model
from pipeline.training.model import build_training_model, load_deployable
from pipeline.training.teacher import PART, TeacherSource, UnprunedTeacher, teacher_kd
from tests.specs import model_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(p_teacher || p_student) of the softened distributions, summed over classes, mean over
    the batch, written out from its definition."""
    p_t = torch.exp(teacher / t) / torch.exp(teacher / t).sum(1, keepdim=True)
    p_s = torch.exp(student / t) / torch.exp(student / t).sum(1, keepdim=True)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(1).mean()


def test_teacher_term_is_weight_times_t_squared_times_kl():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 10, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    for t, w in ((4.0, 1.0), (2.0, 0.3)):
        expected = w * t * t * _kl_by_hand(student, teacher, t)
        assert torch.allclose(teacher_kd(student, teacher, t, w).double(), expected, rtol=1e-5)
    assert teacher_kd(teacher, teacher, 4.0, 1.0).abs() < 1e-6  # equal logits: nothing to learn


def _saved_classifier(folder, seed: int) -> None:
    """A training model with every batch-norm statistic random (a trained one's would be)."""
    torch.manual_seed(seed)
    spec = model_spec("resnet18", "ama", width=0.125, num_classes=10, feature_taps=True)
    wrapper, _ = build_training_model(spec)
    with torch.no_grad():
        for m in wrapper.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_model(wrapper, spec, folder, "model")


def test_the_teacher_adds_its_term_on_the_same_batch_and_stays_frozen(tmp_path):
    _saved_classifier(tmp_path, seed=0)
    source = TeacherSource(tmp_path, temperature=2.0, weight=0.5)
    teacher = UnprunedTeacher.load(source, torch.device("cpu"))
    student, _ = build_training_model(model_spec("resnet18", "ce", width=0.125, num_classes=10))
    student.train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    teacher.net.train()  # whatever switched it to training mode: the teacher runs in eval mode
    out = student(x)
    ce = F.cross_entropy(out.logits, y)
    loss = teacher.add_to(LossOutput(ce, {"ce": ce.detach()}), out.logits, x)

    with torch.no_grad():  # the teacher's logits: the saved classifier's, in eval mode
        z_t = load_deployable(tmp_path)(x)
    term = 0.5 * 2.0**2 * _kl_by_hand(out.logits.detach().double(), z_t.double(), 2.0)
    assert set(loss.parts) == {"ce", PART}
    assert torch.allclose(loss.parts[PART].double(), term, rtol=1e-4)
    assert torch.allclose(loss.total, ce + loss.parts[PART])
    assert not loss.parts[PART].requires_grad  # parts are reported, the total trains

    loss.total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher.net.parameters())
    # neither weights nor batch-norm statistics moved: it is the saved classifier, unchanged
    saved = load_file(str(tmp_path / "model.safetensors"))
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"]), k
    assert not teacher.net.training
