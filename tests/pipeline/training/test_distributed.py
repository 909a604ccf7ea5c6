"""Two gloo processes on CPU: DDP trains, ranks agree, and the stage folder looks like 1 process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.training.fit import HEAD_FILE
from tests.conftest import TINY
from tests.pipeline.training.test_resume import REPO

TINY_DDP = [
    "data.name=digits",
    "data.max_per_class=20",
    "model.width=0.125",
    "train.epochs=2",
    "train.batch_size=32",
]


def _run(
    tmp_path: Path,
    name: str,
    extra: list[str],
    launcher: list[str] | None = None,
    only: str | None = "train",
) -> subprocess.CompletedProcess:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    sets = sum(
        (["--set", o] for o in [*TINY_DDP, f"run_dir={tmp_path / 'runs'}", f"name={name}", *extra]),
        [],
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [
        *(launcher or [sys.executable]),
        "-m",
        "pipeline",
        "run",
        str(cfg),
        *(["--only", only] if only else []),
        *sets,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _layout(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.iterdir() if p.name != "checkpoints"
    )


def test_two_gloo_processes_train_with_equal_weights_and_same_layout(tmp_path):
    one = _run(tmp_path, "one", [])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(tmp_path, "two", ["train.processes=2"])
    assert two.returncode == 0, two.stderr[-3000:]
    single, multi = tmp_path / "runs" / "one" / "01_train", tmp_path / "runs" / "two" / "01_train"
    assert (
        _layout(single)
        == _layout(multi)
        == [HEAD_FILE, "manifest.json", "metrics.jsonl", "model.json", "model.safetensors"]
    )
    m = json.loads((multi / "manifest.json").read_text())
    assert m["status"] == "complete" and m["metrics"]["processes"] == 2
    hashes = m["metrics"]["weights_sha256_per_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert m["metrics"]["lr"] == json.loads((single / "manifest.json").read_text())["metrics"]["lr"]
    rows = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["loss"] > 0 for r in rows)


def test_whole_pipeline_under_torchrun_rank0_owns_the_run(tmp_path):
    """`torchrun -m pipeline run`: rank 1 joins training only; rank 0 writes and runs the rest."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = _run(tmp_path, "launched", [], launcher)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = tmp_path / "runs" / "launched" / "01_train"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["metrics"]["processes"] == 2 and len(set(m["metrics"]["weights_sha256_per_rank"])) == 1
    assert not (tmp_path / "runs" / "launched" / "01_train.partial").exists()
    assert res.stderr.count("train: running") == 1  # only rank 0 reports stages


# The whole pipeline with a pruned model to recover: slim trains as well as train. The gates
# are not what these runs test (one epoch on 200 images); measurements are kept short.
WHOLE = [
    "train.epochs=1",
    "slim.ratio=0.5",
    "slim.epochs=1",
    # the side-by-side ONNX measurement (two exports and calibrations) runs once, in the
    # fine-tune run under torchrun, where rank 0 alone measures while its followers wait
    "slim.compare=false",
    *(o for o in TINY if o.split("=")[0].startswith(("prune.", "export.", "validate."))),
    "validate.gates.max_top1_drop_int8=1.0",
]


def _assert_trained_on_two_ranks(run: Path) -> None:
    for stage in ("train", "slim"):
        m = json.loads((stages.folder(run, stage) / "manifest.json").read_text())
        metrics = m["metrics"] if stage == "train" else m["metrics"]["recovery"]
        assert m["status"] == "complete" and metrics["processes"] == 2, stage
        hashes = metrics["weights_sha256_per_rank"]
        assert len(hashes) == 2 and hashes[0] == hashes[1], stage
    validate = json.loads((stages.folder(run, "validate") / "manifest.json").read_text())
    assert validate["status"] == "complete"


@pytest.mark.parametrize(
    "recipe",
    [["slim.compare=true"], ["slim.teacher=unpruned", "slim.init=scratch"]],
    ids=["fine-tune", "teacher-scratch"],
)
def test_whole_pipeline_with_slim_recovery_under_torchrun(tmp_path, recipe):
    """Every rank follows every stage that trains: slim's recovery once ran on rank 0 alone
    ("Default process group has not been initialized"); with a recipe, the followers are
    told its fresh start and teacher and train beside rank 0."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = _run(tmp_path, "whole", [*WHOLE, *recipe], launcher, only=None)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_trained_on_two_ranks(tmp_path / "runs" / "whole")
    assert res.stderr.count("slim: running") == 1
    slim = json.loads(
        (stages.folder(tmp_path / "runs" / "whole", "slim") / "manifest.json").read_text()
    )
    if "slim.init=scratch" in recipe:
        recovery = slim["metrics"]["recovery"]
        assert recovery["start"]["fresh"] is True and "teacher" in recovery
    assert (slim["metrics"]["compression"] is not None) == ("slim.compare=true" in recipe)
    again = _run(tmp_path, "whole", [*WHOLE, *recipe], launcher, only=None)  # all up to date
    assert again.returncode == 0, again.stderr[-3000:]
    assert "slim: up to date" in again.stderr and "running" not in again.stderr


def test_whole_pipeline_with_slim_recovery_on_two_processes(tmp_path):
    """The launched recovery gets the start model (its architecture: a fresh start) and the
    unpruned teacher, on every rank; the fine-tuned start is covered under torchrun."""
    recipe = ["slim.teacher=unpruned", "slim.init=scratch"]
    res = _run(tmp_path, "whole", [*WHOLE, "train.processes=2", *recipe], only=None)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "whole"
    _assert_trained_on_two_ranks(run)
    slim = json.loads((stages.folder(run, "slim") / "manifest.json").read_text())["metrics"]
    recovery = slim["recovery"]
    assert recovery["start"]["fresh"] is bool(recipe)
    if recipe:
        teacher = recovery["teacher"]
        assert teacher["weights_sha256_start"] == teacher["weights_sha256_end"]
        rows = (stages.folder(run, "slim") / "metrics.jsonl").read_text().splitlines()
        assert all(json.loads(r)["teacher_kd"] > 0 for r in rows)


def test_batch_must_split_over_processes():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    try:
        load_config(None, ["train.batch_size=33", "train.processes=2"])
    except ConfigError as exc:
        assert "multiple of 2" in str(exc)
    else:
        raise AssertionError("a global batch of 33 over 2 processes was accepted")


def test_wrn_without_self_teacher_trains_on_two_processes(tmp_path):
    """WRN-16-2 with `ce`: no layer of the model may go without a gradient, or DDP stops
    ("Expected to have finished reduction in the prior iteration")."""
    res = _run(
        tmp_path,
        "wrn",
        ["model.name=wrn16_2", "train.method=ce", "train.epochs=1", "train.processes=2"],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(
        (stages.folder(tmp_path / "runs" / "wrn", "train") / "manifest.json").read_text()
    )
    assert m["status"] == "complete" and m["metrics"]["processes"] == 2


@pytest.mark.parametrize("method", ["cskd", "pskd"])
def test_comparators_with_extras_train_on_two_processes(tmp_path, method):
    """`cskd`'s no-grad partner forward must not leave the ranks' batch-norm statistics apart;
    `pskd`'s store must gather every rank's predictions (each rank sees half the samples)."""
    from safetensors.torch import load_file

    res = _run(tmp_path, method, [f"train.method={method}", "train.processes=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    folder = stages.folder(tmp_path / "runs" / method, "train")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "complete" and m["metrics"]["processes"] == 2
    assert len(set(m["metrics"]["weights_sha256_per_rank"])) == 1
    if method == "pskd":
        last = m["extra"]["checkpoint"]["name"]
        store = load_file(str(folder / "checkpoints" / last / "method_state.safetensors"))
        assert store["seen"].numel() == 200  # digits, 20 train images per class
        assert bool(store["seen"].all())


def _epoch_lrs(run: Path) -> list[float]:
    rows = (stages.folder(run, "train") / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["lr"] for line in rows]


def test_learning_rate_per_epoch_is_the_same_on_one_and_two_processes(tmp_path):
    """The schedule follows epochs, not processes: batches made on the device (each rank's
    loader already sharded) once ran it N times too fast (cosine over 4 epochs ended epoch 1
    at a quarter of its peak, then sat at 0)."""
    common = [
        "train.method=ce",
        "train.epochs=4",
        "train.warmup_epochs=0",
        "train.schedule=cosine",
        "train.val_every_epochs=4",
    ]
    variants = {
        "one": ["data.on_device=false"],
        "two-device": ["data.on_device=true", "train.processes=2"],
        "two-device-accum": [
            "data.on_device=true",
            "train.processes=2",
            "train.grad_accum_steps=2",
        ],
        "two-loader-accum": [
            "data.on_device=false",
            "train.processes=2",
            "train.grad_accum_steps=2",
        ],
    }
    lrs = {}
    for name, extra in variants.items():
        res = _run(tmp_path, name, [*common, *extra])
        assert res.returncode == 0, (name, res.stderr[-3000:])
        lrs[name] = _epoch_lrs(tmp_path / "runs" / name)
    peak = 0.1 * 32 / 128  # train.lr at the linear-scaled global batch
    expected = [peak * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in (1, 2, 3, 4)]
    for name, got in lrs.items():
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12), (name, got)
