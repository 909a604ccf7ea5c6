"""Ranks of a run started by a launcher: `torchrun`/`accelerate launch -m pipeline run`, a
SLURM job step, or the pipeline's own multi-node launch (`train.nodes`).

Every rank runs `python -m pipeline run`. Global rank 0 leads: it runs every stage and writes
the run folder. The other ranks follow: they build the data, then wait for rank 0's word over
a gloo group made once for the whole run, and act on it:

- `check`: every rank gathers (host, data fingerprint) and all stop with the same `DataError`
  when they differ, so no rank trains on other data and none is left waiting;
- `fit`: join the training that rank 0 starts (the train stage, slim's recovery), with rank 0's
  config, work folder, start model (its weights, or its architecture freshly initialised) and
  teacher (each rank loads it from the same files);
- `done`: nothing more to train, leave; `abort`: rank 0 stopped, leave with its error class.

Rank 0 only says `abort` while the others wait for its word; a failure inside a training that
they joined ends rank 0's process, which fails their collectives (and the launcher stops them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from pathlib import Path

from pipeline.errors import ConfigError, DataError, PipelineError, StageError

log = logging.getLogger("pipeline.ranks")

# How long a follower waits for rank 0's next word (rank 0 meanwhile loads data, prunes, or
# measures the compression table). PIPELINE_RANK_TIMEOUT_S overrides it.
WAIT_TIMEOUT_S = 3 * 3600


def adopt_scheduler_env(
    master_addr: str | None = None,
    master_port: int = 29500,
    env: MutableMapping[str, str] | None = None,
) -> None:
    """Under `srun` (one task per process), the ranks come from SLURM: set RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torch's launcher would. Nothing when a launcher
    already set RANK/WORLD_SIZE, or outside a SLURM job step of more than one task (a batch
    script itself is not a step). `env`: the process environment unless given."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if "SLURM_PROCID" not in env or tasks is None or int(tasks) <= 1:
        return
    addr = env.get("MASTER_ADDR") or master_addr
    if not addr:
        raise ConfigError(
            f"running as SLURM task {env['SLURM_PROCID']} of {tasks}, but no rendezvous address: "
            "export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) in "
            "the batch script, or set train.master_addr"
        )
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = tasks
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    if per_node.isdigit():
        env["LOCAL_WORLD_SIZE"] = per_node
    env["MASTER_ADDR"] = addr
    env.setdefault("MASTER_PORT", str(master_port))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """This process is one of several ranks a launcher started."""
    return world_size() > 1


# ---------------------------------------------------------------------------------------------
# The pipeline's own multi-node launch


def nodes_command(t, argv: list[str]) -> list[str]:
    """`python -m pipeline ARGV` under torch's elastic launcher on this node: c10d rendezvous at
    train.master_addr:master_port, train.processes per node, node 0 hosting the rendezvous."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={t.nodes}",
        f"--nproc_per_node={t.processes}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={t.master_addr}:{t.master_port}",
        f"--rdzv_id=pipeline-{t.master_port}",
        f"--rdzv_conf=is_host={'true' if t.node_rank == 0 else 'false'}",
        f"--max_restarts={t.max_restarts}",
        "-m",
        "pipeline",
        *argv,
    ]


def run_nodes(t, argv: list[str]) -> int:
    """Start this node's ranks of a `train.nodes` run and wait for them (0: the run is done)."""
    from pipeline.training.launch import child_env

    cmd = nodes_command(t, argv)
    log.info(
        "node %d of %d: starting %d process(es), rendezvous at %s:%d: %s",
        t.node_rank,
        t.nodes,
        t.processes,
        t.master_addr,
        t.master_port,
        " ".join(cmd),
    )
    proc = subprocess.Popen(cmd, env=child_env())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the ranks got the same Ctrl-C; let them save their checkpoint
        raise
    if code != 0:
        raise StageError(
            f"the run across {t.nodes} nodes failed on node {t.node_rank}: torch's launcher "
            f"exited with code {code}; the failing rank and its error are in the log above (a "
            "killed rank shows as a signal, the others stop with it). Finished stages and the "
            "last training checkpoint are kept in the run folder: run the same command on "
            "every node to resume from them"
            + (
                ""
                if t.max_restarts
                else " (or set train.max_restarts to restart failed ranks by themselves)"
            )
        )
    return 0


# ---------------------------------------------------------------------------------------------
# Rank 0's word to the other ranks


def _wait_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("PIPELINE_RANK_TIMEOUT_S", WAIT_TIMEOUT_S)))


def control_group():
    """The default process group (made here if Accelerate has not made it yet, and kept for
    the whole run: every training joins it) and a gloo group for rank 0's word."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.new_group(backend="gloo", timeout=_wait_timeout())


def close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _broadcast(group, msg: dict | None = None) -> dict:
    import torch.distributed as dist

    box = [msg]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _gather(group, item: object) -> list:
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, item, group=group)
    return out


def data_identity(fingerprint: str | None, error: str | None = None) -> dict:
    return {
        "rank": rank(),
        "host": socket.gethostname(),
        "fingerprint": fingerprint,
        "error": error,
    }


def check_same_data(entries: list[dict]) -> None:
    """Every rank's data is the same (same fingerprint, all readable), or a `DataError` naming
    the hosts and their fingerprints."""
    failed = [e for e in entries if e["error"]]
    if failed:
        raise DataError(
            "not every rank could read the data: "
            + "; ".join(f"rank {e['rank']} on {e['host']}: {e['error']}" for e in failed)
        )
    if len({e["fingerprint"] for e in entries}) <= 1:
        return
    by_fp: dict[str, list[dict]] = {}
    for e in entries:
        by_fp.setdefault(e["fingerprint"], []).append(e)
    groups = "; ".join(
        f"fingerprint {fp} on {', '.join(sorted({e['host'] for e in es}))} "
        f"(ranks {', '.join(str(e['rank']) for e in es)})"
        for fp, es in by_fp.items()
    )
    raise DataError(
        f"the ranks see different data: {groups}. Every node needs the same data set at "
        "data.root (the same files with the same contents; their modification times may "
        "differ); copy it again from one source, or point data.root at shared storage"
    )


class Leader:
    """Rank 0's side: says what the others do next."""

    def __init__(self, group) -> None:
        self.group = group
        self.state = "waiting"  # the followers wait for a word; "training": they train with
        # rank 0; "broken": a training they joined failed; "closed": they have left

    def say(self, msg: dict) -> None:
        if self.state == "waiting":
            _broadcast(self.group, msg)

    def check_data(self, fingerprint: str) -> None:
        if self.state != "waiting":
            return
        self.say({"action": "check"})
        check_same_data(_gather(self.group, data_identity(fingerprint)))

    @contextlib.contextmanager
    def training(
        self, cfg, work: Path, start: Path | None, teacher=None, fresh: bool = False
    ) -> Iterator[None]:
        if self.state != "waiting":
            yield
            return
        self.say(
            {
                "action": "fit",
                "cfg": cfg,
                "work": str(work),
                "start": start and str(start),
                "teacher": teacher,
                "fresh": fresh,
            }
        )
        self.state = "training"
        try:
            yield
        except BaseException:
            self.state = "broken"
            raise
        self.state = "waiting"

    def done(self) -> None:
        self.say({"action": "done"})
        if self.state == "waiting":
            self.state = "closed"

    def abort(self, exc: BaseException) -> None:
        cls = type(exc).__name__ if isinstance(exc, PipelineError) else "StageError"
        self.say({"action": "abort", "class": cls, "message": f"{type(exc).__name__}: {exc}"})
        if self.state == "waiting":
            self.state = "closed"


_leader: Leader | None = None


@contextlib.contextmanager
def leading() -> Iterator[Leader | None]:
    """Rank 0 of a launched run: the others follow what happens inside (None when alone)."""
    global _leader
    if not launched():
        yield None
        return
    _leader = Leader(control_group())
    log.info(
        "rank 0 of %d, on %s: runs the stages and writes the run folder; the other ranks "
        "follow it into every training",
        world_size(),
        socket.gethostname(),
    )
    try:
        yield _leader
        _leader.done()
    except BaseException as exc:
        _leader.abort(exc)
        _raise_lost_contact(exc)
        raise
    finally:
        _leader = None
        close()


# What torch's collectives say when a peer process is gone (gloo, NCCL, the TCP store).
_LOST = ("Connection reset", "Connection closed", "Broken pipe", "gloo", "NCCL", "TCPStore")


def _raise_lost_contact(exc: BaseException) -> None:
    """A collective that failed because another rank died: say so, as a StageError."""
    import torch.distributed as dist

    if isinstance(exc, PipelineError) or not isinstance(exc, RuntimeError):
        return
    text = str(exc).strip()
    if not (isinstance(exc, dist.DistError) or any(m in text for m in _LOST)):
        return
    raise StageError(
        f"rank {rank()} of {world_size()} on {socket.gethostname()} lost contact with the "
        f"other ranks ({text.splitlines()[0][:200] if text else type(exc).__name__}): another "
        "rank failed or was killed, and its error is in its own log. Finished stages and the "
        "last training checkpoint are kept: run the same command again (on every node) to "
        "resume"
    ) from exc


def check_data(fingerprint: str) -> None:
    """All ranks agree on the data before anything trains (rank 0; nothing when alone)."""
    if _leader is not None:
        _leader.check_data(fingerprint)


def training(cfg, work: Path, start: Path | None = None, *, teacher=None, fresh: bool = False):
    """Around rank 0's training: the other ranks join it (a no-op when alone). `teacher`: a
    `training.teacher.TeacherSource`, sent as it is."""
    if _leader is None:
        return contextlib.nullcontext()
    return _leader.training(cfg, work, start, teacher, fresh)


def finished_training() -> None:
    """Rank 0 will train nothing more in this run: the others may leave."""
    if _leader is not None:
        _leader.done()


def follow(cfg) -> None:
    """A rank other than 0 (started with `cfg`): do what rank 0 says until it says done."""
    from pipeline import errors
    from pipeline.data import build_data
    from pipeline.training.fit import fit

    group = control_group()
    bundles: dict[str, object] = {}

    def data_of(c):
        key = c.data.model_dump_json()
        if key not in bundles:
            bundles[key] = build_data(c.data, c.model)
        return bundles[key]

    try:  # while rank 0 reads its own copy
        mine = data_identity(data_of(cfg).fingerprint)
    except PipelineError as exc:
        mine = data_identity(None, f"{type(exc).__name__}: {exc}")
    try:
        while True:
            msg = _broadcast(group)
            action = msg["action"]
            if action == "check":
                check_same_data(_gather(group, mine))
            elif action == "fit":
                start = Path(msg["start"]) if msg["start"] else None
                fit(
                    msg["cfg"],
                    data_of(msg["cfg"]),
                    Path(msg["work"]),
                    start,
                    teacher=msg.get("teacher"),
                    fresh=msg.get("fresh", False),
                )
            elif action == "done":
                return
            else:  # abort
                cls = getattr(errors, msg.get("class", ""), None)
                if not (isinstance(cls, type) and issubclass(cls, PipelineError)):
                    cls = StageError
                raise cls(f"rank 0 stopped the run ({msg['message']})")
    except RuntimeError as exc:
        _raise_lost_contact(exc)
        raise
    finally:
        close()
