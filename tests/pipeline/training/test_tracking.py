"""Experiment trackers through Accelerate: chosen by name, really written, clear when missing."""

from __future__ import annotations

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.runner import run_pipeline


def test_tensorboard_tracker_logs_every_epoch(tiny_overrides, one_thread) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, [*tiny_overrides, "train.tracker=tensorboard"])
    run_pipeline(cfg, only="train")
    logs = stages.folder(cfg.run_path, "train") / "tensorboard" / cfg.name  # one run per project
    assert list(logs.glob("events.out.tfevents.*")), f"no event file in {logs}"
    acc = EventAccumulator(str(logs))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "train_top1", "lr"} <= set(tags), tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]  # one point per epoch


def test_tracker_names_come_from_accelerate() -> None:
    cfg = load_config(None, ["train.tracker=mlflow"])
    assert cfg.train.tracker == "mlflow"
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbored'.*'tensorboard'"):
        load_config(None, ["train.tracker=tensorbored"])


def test_missing_tracker_package_says_what_to_install(tiny_overrides, monkeypatch) -> None:
    import accelerate.utils

    from pipeline.training.accel import _check_tracker

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install wandb"):
        _check_tracker("wandb")
