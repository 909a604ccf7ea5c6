"""Training options and faults in-process: precision, accumulation, clipping, NaN policy, disk errors."""

from __future__ import annotations

import errno
import math

import pytest
import torch

from pipeline.artifacts import read_checkpoint_index
from pipeline.config import load_config
from pipeline.errors import ConfigError, StageError
from pipeline.runner import run_pipeline

SMALL = ["data.max_per_class=12", "train.epochs=1", "train.batch_size=16"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _train(tiny_overrides, extra: list[str]):
    cfg = load_config(None, [*tiny_overrides, *SMALL, *extra])
    return cfg, run_pipeline(cfg, only="train")["train"]


def _named_checkpoint(tiny_overrides) -> tuple:
    """The partial train folder and the checkpoint its index names as the last good one."""
    cfg = load_config(None, [*tiny_overrides, *SMALL])
    work = cfg.run_path / "01_train.partial"
    return work, read_checkpoint_index(work)["checkpoint"]


def test_bf16_accumulation_clipping_channels_last_train_on_cpu(tiny_overrides):
    extra = [
        "train.mixed_precision=bf16",
        "train.grad_accum_steps=2",
        "train.grad_clip=1.0",
        "train.channels_last=true",
        "train.checkpoint_every_steps=2",
        "model.width=0.25",  # 16+ channels: see test_channels_last_resolution
    ]
    cfg, m = _train(tiny_overrides, extra)
    # the epoch's mean loss per image, finite and not scaled by the accumulation: one epoch of
    # a fresh 10-class classifier stays near CE at chance, ln 10 = 2.30 (measured 2.39)
    assert m.complete and abs(m.metrics["final_loss"] - math.log(10)) < 0.5
    # 120 images / micro-batch 8 = 15 batches -> 8 optimizer steps with accumulation 2
    assert m.extra["checkpoint"]["step"] == 8 and m.extra["checkpoint"]["batch"] == 0


@pytest.mark.parametrize(
    ("setting", "device", "precision", "narrowest", "expected"),
    [
        ("auto", "cpu", "no", 16, True),
        ("auto", "cpu", "no", 8, False),  # oneDNN's narrow NHWC bug: stay NCHW
        ("auto", "cuda", "no", 64, False),
        ("auto", "cuda", "bf16", 64, True),
        (False, "cpu", "no", 64, False),
        (True, "cuda", "no", 8, True),
    ],
)
def test_channels_last_resolution(setting, device, precision, narrowest, expected):
    from pipeline.config import TrainConfig
    from pipeline.training.accel import use_channels_last

    t = TrainConfig(channels_last=setting, mixed_precision=precision)
    assert use_channels_last(t, torch.device(device), narrowest) is expected


def test_channels_last_on_narrow_cpu_model_is_refused_with_the_fix(tiny_overrides):
    with pytest.raises(ConfigError, match="channels_last=auto"):
        _train(tiny_overrides, ["train.channels_last=true"])  # TINY: width 0.125, 8 channels


@pytest.mark.parametrize(("every", "validated"), [(1, [1, 2, 3]), (2, [2, 3]), (None, [3])])
def test_validation_runs_every_n_epochs_and_after_the_last(tiny_overrides, every, validated):
    import json

    setting = "null" if every is None else str(every)
    _, m = _train(tiny_overrides, ["train.epochs=3", f"train.val_every_epochs={setting}"])
    rows = [json.loads(x) for x in (m.folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "val_top1" in r] == validated
    assert m.metrics["val_top1"] == rows[-1]["val_top1"]


def test_training_without_any_checkpoint_completes(tiny_overrides):
    """With epoch and step checkpoints off, no checkpoints/ folder exists when the result is
    written there."""
    cfg, m = _train(tiny_overrides, ["train.checkpoint_every_epochs=null"])
    assert m.complete
    # the reported test top-1 is the saved classifier's, recomputed here on the test split
    from pipeline.data import build_data
    from pipeline.training.slimming import deployable

    model = deployable(m.folder)
    test = build_data(cfg.data).test
    with torch.no_grad():
        pred = model(test.stack()).argmax(1)
    top1 = (pred == torch.as_tensor(test.labels)).double().mean().item()
    assert m.metrics["test_top1"] == pytest.approx(top1, abs=1e-9)


def _no_head_check(monkeypatch) -> None:
    """The poisoned losses count training steps: the check before the first step (which calls
    the method's loss once) is left out of these runs."""
    monkeypatch.setattr("pipeline.training.fit._head_stability", lambda *args: None)


def test_nan_stop_names_epoch_and_step_and_keeps_checkpoint(tiny_overrides, monkeypatch):
    from pipeline.distill.methods.ce import CrossEntropy

    real, calls = CrossEntropy.loss, {"n": 0}

    def poisoned(self, out, targets, epoch):
        calls["n"] += 1
        res = real(self, out, targets, epoch)
        if calls["n"] == 5:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(CrossEntropy, "loss", poisoned)
    _no_head_check(monkeypatch)
    with pytest.raises(
        StageError, match=r"non-finite loss at epoch 1, batch 5 \(optimizer step 5\)"
    ):
        _train(tiny_overrides, ["train.checkpoint_every_steps=2"])
    work, named = _named_checkpoint(tiny_overrides)
    assert (
        named["step"] == 4
        and (work / "checkpoints" / named["name"] / "trainer_state.json").is_file()
    )


def test_nan_skip_counts_and_gives_up_past_the_limit(tiny_overrides, monkeypatch):
    from pipeline.distill.methods.ce import CrossEntropy

    real = CrossEntropy.loss
    bad = {3, 6}

    def poisoned(self, out, targets, epoch):
        poisoned.n += 1
        res = real(self, out, targets, epoch)
        if poisoned.n in bad:
            res.total = res.total * float("inf")
        return res

    poisoned.n = 0
    monkeypatch.setattr(CrossEntropy, "loss", poisoned)
    _no_head_check(monkeypatch)
    _, m = _train(tiny_overrides, ["train.on_nan=skip", "train.max_nan_skips=2"])
    assert m.metrics["nan_skips"] == 2
    poisoned.n, bad = 0, {1, 2, 3}
    with pytest.raises(StageError, match="more than train.max_nan_skips=2"):
        _train(tiny_overrides, ["train.on_nan=skip", "train.max_nan_skips=2", "train.seed=1"])


def test_full_disk_gives_stage_error_and_keeps_last_checkpoint(tiny_overrides, monkeypatch):
    from accelerate import Accelerator

    real, saves = Accelerator.save_state, {"n": 0}

    def failing(self, output_dir=None, **kw):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", failing)
    with pytest.raises(
        StageError, match=r"cannot write checkpoint .*No space left.*last good checkpoint"
    ):
        _train(tiny_overrides, ["train.checkpoint_every_steps=2"])
    work, named = _named_checkpoint(tiny_overrides)
    assert named["step"] == 2 and (work / "checkpoints" / named["name"]).is_dir()
    assert not any(
        p.name.startswith(".tmp") and (p / "trainer_state.json").exists()
        for p in (work / "checkpoints").iterdir()
    )


def test_tensorboard_missing_tells_how_to_install(tiny_overrides, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        _train(tiny_overrides, ["train.tracker=tensorboard"])


@pytest.mark.gpu
def test_gpu_bf16_channels_last_pinned(tiny_overrides):
    _, m = _train(
        tiny_overrides,
        ["train.device=cuda", "train.mixed_precision=bf16", "train.channels_last=true"],
    )
    assert m.metrics["device"].startswith("cuda")
