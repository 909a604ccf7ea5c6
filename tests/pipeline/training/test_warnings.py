"""What a finished run's numbers say went wrong: a classifier stuck at chance, or one far below
its own self-teacher, named with what to change, in the metrics and in the report."""

from __future__ import annotations

from pipeline.training.fit import stall_warning, stalled, training_warnings


def _history(top1: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_top1": a} for i, a in enumerate(top1)]


def test_a_healthy_run_has_no_warnings():
    history = _history([0.2, 0.4, 0.6, 0.8])
    assert training_warnings(history, {"top1": 0.8, "aux_top1": 0.82}, 10) == []
    assert training_warnings(history, {"top1": 0.8}, 10) == []  # no self-teacher


def test_chance_after_the_first_epochs_is_named_with_the_epochs_and_the_fix():
    # the first epochs may sit at chance; from epoch 3 on it is a stall
    assert not stalled({"epoch": 2, "train_top1": 0.1}, 10)
    assert stalled({"epoch": 3, "train_top1": 0.14}, 10)
    assert not stalled({"epoch": 3, "train_top1": 0.16}, 10)
    assert stalled({"epoch": 3, "train_top1": 0.54}, 2) and not stalled(
        {"epoch": 3, "train_top1": 0.6}, 2
    )
    assert stalled({"epoch": 5, "train_top1": 0.012}, 100)
    assert stall_warning({"epoch": 2, "train_top1": 0.1}, 10) is None
    live = stall_warning({"epoch": 4, "train_top1": 0.101}, 10)  # logged as the epoch ends
    assert "0.101 after 4 epochs is chance (1/10)" in live and "train.lr" in live
    (w,) = training_warnings(_history([0.1, 0.1, 0.1, 0.11, 0.3]), {"top1": 0.3}, 10)
    assert "chance (1/10) at epoch 3 to 4" in w and "train.warmup_epochs" in w


def test_a_classifier_far_below_its_self_teacher_is_named():
    """The H100 run of `ama` at lr 0.2: classifier 27%, self-teacher 85%."""
    ws = training_warnings(
        _history([0.10, 0.10, 0.10, 0.10, 0.26]), {"top1": 0.2696, "aux_top1": 0.8532}, 10
    )
    assert len(ws) == 2
    assert "(27.0%) ended far below its own self-teacher's (85.3%)" in ws[1]
    assert "train.epochs" in ws[1] and "stability limit" in ws[1] and "train.lr" in ws[1]
    assert training_warnings(_history([0.9]), {"top1": 0.80, "aux_top1": 0.89}, 10) == []


def test_a_start_past_the_stability_limit_comes_first_and_a_record_without_one_adds_nothing():
    start = {"ratio": 3.5, "warning": "the learning rate starts past SGD's stability limit"}
    ws = training_warnings(_history([0.9]), {"top1": 0.9}, 10, start)
    assert ws == [start["warning"]]
    inside = {"ratio": 0.4, "warning": None}
    assert training_warnings(_history([0.9]), {"top1": 0.9}, 10, inside) == []


def test_the_report_shows_the_warnings_in_its_training_section():
    from pipeline.report.content import _training

    t = {
        "epochs": 2,
        "train_s": 1.0,
        "images_per_s": 10.0,
        "device": "cpu",
        "processes": 1,
        "train_top1": 0.1,
        "val_top1": 0.1,
        "test_top1": 0.1,
        "warnings": ["the classifier's train top-1 was at chance"],
    }
    section = _training({"training": t}, {})
    assert "**Warning:** the classifier's train top-1 was at chance." in section.blocks
    assert "sharpness" not in section.blocks[0]  # runs from before the check existed
    t["head_stability"] = {"sharpness": 56.0, "lr": 0.1, "limit": 3.8, "ratio": 5.6 / 3.8}
    text = _training({"training": t}, {}).blocks[0]
    assert "lr 0.1 x sharpness = 5.60 against SGD's stability limit 3.80 (past it)" in text
    del t["warnings"]  # runs from before the field existed
    assert not any("Warning" in str(b) for b in _training({"training": t}, {}).blocks)
