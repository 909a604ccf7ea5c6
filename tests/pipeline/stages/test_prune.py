"""The prune stage's proofs: the deployed classifier is the trained backbone itself, and the
attention figures show the mask the run trained with."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.distill.methods.self_kd import SelfKDOptions
from pipeline.errors import StageError
from pipeline.stages import prune
from pipeline.training.model import build_training_model
from tests.specs import model_spec


def _wrapper(arch: str = "resnet18", method: str = "ama"):
    return build_training_model(model_spec(arch, method))[0].eval()


@pytest.mark.parametrize("arch", ["resnet18", "wrn16_2"])
def test_deployed_classifier_is_the_wrappers_own_backbone(arch: str) -> None:
    wrapper = _wrapper(arch)
    same = prune.check_deployed(wrapper.backbone, wrapper.deployable())
    # WRN's stage taps feed only the self-teacher and are left out; ResNets have none.
    assert (same["params_feature_taps"] > 0) == (arch == "wrn16_2")


def test_a_deployed_model_that_is_not_the_backbone_is_refused() -> None:
    wrapper = _wrapper()
    changed = copy.deepcopy(wrapper.backbone)
    with torch.no_grad():
        changed.fc.weight.add_(1.0)
    with pytest.raises(StageError, match="tensors that differ: fc.weight"):
        prune.check_deployed(wrapper.backbone, changed)
    fresh = _wrapper().backbone  # same architecture, other weights: the old check let it pass
    with pytest.raises(StageError, match="tensors that differ"):
        prune.check_deployed(wrapper.backbone, fresh)
    wider = build_training_model(model_spec("resnet18", "ce", width=0.25))[0].backbone
    with pytest.raises(StageError, match="not the trained backbone"):
        prune.check_deployed(wrapper.backbone, wider)


@pytest.mark.parametrize(("mask", "kappa"), [("hard", 20.0), ("soft", 5.0)])
def test_attention_figures_use_the_runs_mask_settings(tmp_path, monkeypatch, mask, kappa):
    import pipeline.report.figures as figures

    seen = []
    monkeypatch.setattr(
        figures, "save_attention_figure", lambda *a, **kw: seen.append((kw["mask"], kw["kappa"]))
    )
    wrapper = _wrapper()
    spec = model_spec()
    spec = spec.replace(
        preset=spec.preset.model_copy(update={"mean": [0.5] * 3, "std": [0.25] * 3})
    )
    distill = SelfKDOptions(mask=mask, kappa=kappa)
    prune.attention_figures(wrapper, torch.randn(2, 3, 16, 16), spec, distill, tmp_path)
    assert seen and all(s == (mask, kappa) for s in seen)


def test_hard_mask_panel_is_binary() -> None:
    from pipeline.report.figures import COLUMNS, attention_panels

    wrapper = _wrapper()
    x = torch.randn(2, 3, 16, 16)
    hard = attention_panels(wrapper, x, stage=1, mask="hard")[COLUMNS[3]]
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    soft = attention_panels(wrapper, x, stage=1, mask="soft", kappa=20.0)[COLUMNS[3]]
    assert ((soft > 0) & (soft < 1)).any()
