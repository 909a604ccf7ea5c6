"""Runs across machines: `train.nodes` and its settings, SLURM's ranks, the data check between
ranks, and two "nodes" on this machine running the whole pipeline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError
from pipeline.training import ranks
from tests.pipeline.training.test_distributed import TINY_DDP, WHOLE
from tests.pipeline.training.test_resume import REPO


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["train.nodes=2"], "needs master_addr"),
        (["train.nodes=2", "train.node_rank=2", "train.master_addr=h"], "node_rank (2) must be"),
        (["train.node_rank=1"], "numbered 0 to 0"),
        (["train.master_port=0"], "train.master_port"),
        (["train.master_port=65536"], "train.master_port"),
        (["train.max_restarts=-1"], "train.max_restarts"),
        (
            ["train.nodes=2", "train.master_addr=h", "train.processes=2", "train.batch_size=6"],
            "multiple of 4",
        ),
    ],
)
def test_node_settings_are_checked(overrides, says):
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(None, overrides)
    assert says in str(exc.value)


def test_launch_settings_are_not_part_of_the_train_key():
    from pipeline.runner import key_of

    one = load_config(None, ["train.nodes=2", "train.master_addr=a", "train.node_rank=0"])
    other = load_config(
        None,
        [
            "train.nodes=2",
            "train.master_addr=b",
            "train.node_rank=1",
            "train.master_port=1234",
            "train.max_restarts=3",
        ],
    )
    assert key_of("train", one, {}, "fp") == key_of("train", other, {}, "fp")
    fewer = load_config(None, ["train.nodes=1"])
    assert key_of("train", one, {}, "fp") != key_of("train", fewer, {}, "fp")


def test_node_command_is_torchs_launcher_with_a_c10d_rendezvous():
    t = load_config(
        None,
        [
            "train.nodes=2",
            "train.node_rank=1",
            "train.processes=4",
            "train.batch_size=128",
            "train.master_addr=10.0.0.1",
            "train.master_port=29400",
            "train.max_restarts=2",
        ],
    ).train
    cmd = ranks.nodes_command(t, ["run", "p.yaml"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for arg in (
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.1:29400",
        "--rdzv_conf=is_host=false",
        "--max_restarts=2",
    ):
        assert arg in cmd
    assert cmd[-4:] == ["-m", "pipeline", "run", "p.yaml"]


def test_slurm_task_takes_its_ranks_from_the_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    }
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        ranks.adopt_scheduler_env(None, env=env)
    ranks.adopt_scheduler_env("node-a", 29600, env=env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }
    assert env["MASTER_ADDR"] == "node-a" and env["MASTER_PORT"] == "29600"


def test_a_launchers_ranks_win_over_slurms():
    env = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4"}
    ranks.adopt_scheduler_env("h", env=env)
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2"


def test_slurm_batch_script_itself_is_not_a_rank():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}  # no job step: the script itself
    ranks.adopt_scheduler_env(None, env=env)
    assert "RANK" not in env


def _ident(rank: int, host: str, fp: str | None, error: str | None = None) -> dict:
    return {"rank": rank, "host": host, "fingerprint": fp, "error": error}


def test_ranks_with_the_same_data_pass_the_check():
    ranks.check_same_data([_ident(0, "a", "f1"), _ident(1, "b", "f1"), _ident(2, "b", "f1")])


def test_ranks_with_other_data_stop_naming_nodes_and_fingerprints():
    with pytest.raises(DataError) as exc:
        ranks.check_same_data(
            [_ident(0, "node-a", "1111"), _ident(1, "node-a", "1111"), _ident(2, "node-b", "2222")]
        )
    msg = str(exc.value)
    assert "fingerprint 1111 on node-a (ranks 0, 1)" in msg
    assert "fingerprint 2222 on node-b (ranks 2)" in msg


def test_a_rank_that_cannot_read_the_data_stops_every_rank():
    with pytest.raises(DataError, match="rank 1 on node-b: DataError: no such folder"):
        ranks.check_same_data(
            [_ident(0, "node-a", "1"), _ident(1, "node-b", None, "DataError: no such folder")]
        )


# A launcher's variables in this process's environment would make the "nodes" ranks of it.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_this_machine_run_the_whole_pipeline(tmp_path):
    """Two invocations of the pipeline's own command, one process each (gloo), meet through
    the c10d rendezvous; slim's recovery trains on both; the run folder is shared, rank 0's."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    port = _free_port()
    common = [
        *TINY_DDP,
        *WHOLE,
        f"run_dir={tmp_path / 'runs'}",
        "name=nodes",
        "train.nodes=2",
        "train.master_addr=127.0.0.1",
        f"train.master_port={port}",
    ]
    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS},
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }
    procs = []
    for node in (0, 1):
        sets = sum((["--set", o] for o in [*common, f"train.node_rank={node}"]), [])
        cmd = [sys.executable, "-m", "pipeline", "run", str(cfg), *sets]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
        )
    try:
        logs = [p.communicate(timeout=400)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # the node's command, its launcher and ranks
                os.killpg(p.pid, signal.SIGKILL)
    for node, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, (node, log[-4000:])
    (tmp_path / "node0.log").write_text(logs[0])
    (tmp_path / "node1.log").write_text(logs[1])
    run = tmp_path / "runs" / "nodes"
    hashes = {}
    for stage in ("train", "slim"):
        m = json.loads((stages.folder(run, stage) / "manifest.json").read_text())
        metrics = m["metrics"] if stage == "train" else m["metrics"]["recovery"]
        assert m["status"] == "complete" and metrics["processes"] == 2
        hashes[stage] = metrics["weights_sha256_per_rank"]
        assert len(hashes[stage]) == 2 and hashes[stage][0] == hashes[stage][1]
    print(json.dumps(hashes))
    assert (
        json.loads((stages.folder(run, "validate") / "manifest.json").read_text())["status"]
        == "complete"
    )
    both = logs[0] + logs[1]
    assert both.count("slim: running") == 1 and both.count("train: running") == 1
    assert "node 0 of 2" in logs[0] and "node 1 of 2" in logs[1]


def test_a_collective_broken_by_a_dead_rank_is_a_stage_error():
    from pipeline.errors import StageError

    gone = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
    with pytest.raises(StageError, match="lost contact with the other ranks"):
        ranks._raise_lost_contact(gone)
    ranks._raise_lost_contact(RuntimeError("shape mismatch"))  # not ours to rename
    ranks._raise_lost_contact(DataError("x"))


def test_rank0_failing_before_training_stops_the_other_ranks(tmp_path):
    """Rank 0 stops before anything trains (here: a stage whose inputs were never made); the
    other rank is told and stops too instead of waiting for a word that never comes."""
    from tests.pipeline.training.test_distributed import _run

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = _run(tmp_path, "early", [], launcher, only="prune")
    assert res.returncode != 0
    assert "has no completed output" in res.stderr
    assert "rank 0 stopped the run (StageError: stage 'train' has no completed output" in res.stderr
