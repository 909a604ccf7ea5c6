"""Checkpoints and resume, through the CLI in subprocesses: SIGKILL, Ctrl-C, exact weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.artifacts import CHECKPOINT_INDEX
from tests.conftest import REPO

# Tiny and deterministic: 21 batches of 16 per epoch, a checkpoint every 5 optimizer steps.
RESUME = [
    "data.name=digits",
    "data.max_per_class=30",
    "model.width=0.125",
    "train.epochs=2",
    "train.batch_size=16",
    "train.schedule=cosine",
    "train.deterministic=true",
    "train.checkpoint_every_steps=5",
    "train.keep_checkpoints=2",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"  # same kernels in every run, and the shared CPU stays usable
    return env


def _cmd(cfg_path: Path, run_dir: Path, name: str, extra: list[str] = ()) -> list[str]:
    sets = sum((["--set", o] for o in [*RESUME, f"run_dir={run_dir}", f"name={name}", *extra]), [])
    return [sys.executable, "-m", "pipeline", "run", str(cfg_path), "--only", "train", *sets]


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text("{}\n")
    return p


def _checkpoint_named(work: Path) -> dict | None:
    """The checkpoint the work folder's index names as the last good one (its commit point)."""
    try:
        return json.loads((work / CHECKPOINT_INDEX).read_text()).get("checkpoint")
    except (OSError, ValueError, KeyError):
        return None


def _start_and_wait_for_checkpoint(
    cmd: list[str], work: Path, timeout: float = 120
) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while _checkpoint_named(work) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint appeared in {work}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return proc


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "extra",
    [["train.method=ce"], ["train.method=pskd"], ["train.method=cskd", "data.on_device=true"]],
    ids=["ce", "pskd", "cskd-batches-on-device"],
)
def test_sigkill_then_same_command_resumes_to_identical_weights(cfg_file, tmp_path, extra):
    """`pskd` reads last epoch's predictions of every sample in epoch 2: killed in epoch 1, the
    resumed run matches only if the checkpoint held the predictions made before the kill.
    With batches made on the device, the resumed epoch must draw the same crops, flips and
    `cskd` partners as the uninterrupted one."""
    runs = tmp_path / "runs"
    ref = subprocess.run(
        _cmd(cfg_file, runs, "ref", extra), env=_env(), capture_output=True, text=True
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    cmd = _cmd(cfg_file, runs, "killed", extra)
    work = runs / "killed" / "01_train.partial"
    proc = _start_and_wait_for_checkpoint(cmd, work)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _checkpoint_named(work)
    assert first is not None and first["epoch"] == 0 and first["batch"] > 0  # killed mid-epoch 1

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from checkpoint" in again.stderr

    done = runs / "killed" / "01_train"
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from"] is not None
    rows = [json.loads(line) for line in (done / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    a, b = _weights(runs / "ref" / "01_train"), _weights(done)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"kill-and-resume max abs weight difference: {diff:.3e}")
    assert diff <= 1e-6, {
        k: float((a[k].double() - b[k].double()).abs().max())
        for k in a
        if not torch.equal(a[k], b[k])
    }
    ref_rows = [
        json.loads(line)
        for line in (runs / "ref" / "01_train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-6)
    kept = sorted(p.name for p in (done / "checkpoints").iterdir() if p.is_dir())
    assert len(kept) == 2 and kept == sorted(manifest["extra"]["checkpoints"])


def test_ctrl_c_saves_checkpoint_and_prints_resume_command(cfg_file, tmp_path):
    runs = tmp_path / "runs"
    cmd = _cmd(cfg_file, runs, "int", ["train.checkpoint_every_steps=3"])
    work = runs / "int" / "01_train.partial"
    proc = _start_and_wait_for_checkpoint(cmd, work)
    before = _checkpoint_named(work)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Resume with the same command" in err and "--only train" in err
    after = _checkpoint_named(work)
    assert "stopped by a signal; checkpoint saved" in err
    assert after is not None and after["step"] >= before["step"]
    assert (work / "checkpoints" / after["name"] / "trainer_state.json").is_file()


@pytest.mark.parametrize(
    "recipe",
    [[], ["slim.teacher=unpruned", "slim.init=scratch"]],
    ids=["fine-tune", "teacher-scratch"],
)
def test_slim_recovery_killed_resumes_from_its_checkpoint(cfg_file, tmp_path, recipe):
    """The slim stage fine-tunes through the training code: killed mid-recovery, the same
    command keeps the pruned network and resumes the fine-tuning from its checkpoint (with a
    teacher: rebuilt from the train stage's files, its term in every epoch)."""
    runs = tmp_path / "runs"
    trained = subprocess.run(
        _cmd(cfg_file, runs, "slim"), env=_env(), capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    sets = ["slim.ratio=0.5", "slim.epochs=2", "slim.round_to=4", "slim.compare=false", *recipe]
    cmd = _cmd(cfg_file, runs, "slim", sets)
    cmd[cmd.index("--only") + 1] = "slim"
    work = runs / "slim" / "02_slim.partial"
    proc = _start_and_wait_for_checkpoint(cmd, work)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / "pruned" / "model.safetensors").is_file()
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing the pruned network" in again.stderr
    assert "resuming from checkpoint" in again.stderr
    manifest = json.loads((runs / "slim" / "02_slim" / "manifest.json").read_text())
    assert manifest["metrics"]["recovery"]["resumed_from"] is not None
    rows = [
        json.loads(x)
        for x in (runs / "slim" / "02_slim" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2]
    if recipe:
        assert all(r["teacher_kd"] > 0 for r in rows)
        recovery = manifest["metrics"]["recovery"]
        assert recovery["start"]["fresh"] is True
        assert (
            recovery["teacher"]["weights_sha256_start"] == recovery["teacher"]["weights_sha256_end"]
        )
