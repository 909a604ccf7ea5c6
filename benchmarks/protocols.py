"""What the benchmarks that train (`methods.py`, `slim_sweep.py`) share: the protocols (which
data a run trains on and which images judge it), the paired Student-t interval over seeds, and
running work side by side in single-threaded child processes with finished work reused.

Protocols:

- `test`: the data set's own test split judges a run (its test top-1).
- `precise`: 500 train images per class of `../shared/datasets/cifar10-full` (ImageFolder) are
  trained on, and the other 45,000 train images judge the run (`data.val_fraction=0.9`,
  `data.max_per_class=500`; the validation top-1, evaluated once after the last epoch).
- `full`: the GPU scale: 90% of the train images trained on, the other 10% (stratified) judge.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FULL_ROOT = REPO.parent / "shared" / "datasets" / "cifar10-full"

log = logging.getLogger("bench.protocols")

# The precise protocol (../shared/datasets/cifar10-full/README.md): 500 train images per class,
# judged on the other 4,500 per class. Validation runs once, after the last epoch.
PRECISE = [
    "data.name=imagefolder",
    "data.val_fraction=0.9",
    "data.max_per_class=500",
    "train.val_every_epochs=null",
]
# GPU scale: every train image of cifar10-full, 10% of them (stratified) held out and judged.
FULL = ["data.name=imagefolder", "data.val_fraction=0.1", "train.val_every_epochs=null"]
# The metric that judges a run under each protocol, and the split it is measured on.
METRIC = {"test": "test_top1", "precise": "val_top1", "full": "val_top1"}
SPLIT = {"test": "test", "precise": "val", "full": "val"}
# The data keys that decide which images a run trains on and which judge it.
SPLIT_KEYS = ("name", "val_fraction", "test_fraction", "split_seed", "max_per_class")


def protocol_overrides(protocol: str, full_root: Path) -> list[str]:
    """The overrides of the held-out protocols (`precise`, `full`) with their data root; the
    `test` protocol keeps the data as it is given (none)."""
    if protocol == "precise":
        return [*PRECISE, f"data.root={full_root}"]
    if protocol == "full":
        return [*FULL, f"data.root={full_root}"]
    if protocol == "test":
        return []
    raise ValueError(f"unknown protocol {protocol!r}; one of {sorted(METRIC)}")


def missing_data(protocol: str, full_root: Path) -> str | None:
    """Why the protocol cannot run here (its data folder is absent), else None."""
    if protocol in ("precise", "full") and not (Path(full_root) / "train").is_dir():
        return (
            f"skipped: the {protocol} protocol needs CIFAR-10 in ImageFolder layout at "
            f"{full_root} (train/<class>/*); it is not there. Pass --full-root."
        )
    return None


def judged_phrase(protocol: str, n_train: int, n_val: int, n_test: int, root_name: str) -> str:
    """What a judged top-1 is measured on, for a table's header."""
    if protocol in ("precise", "full"):
        return (
            f"top-1 (%) on the {n_val:,} validation images the runs did not train on "
            f"({n_train:,} train images, {root_name})"
        )
    return f"test top-1 (%) on {n_test:,} test images"


# statistics ----------------------------------------------------------------------------------


def judged_arrays(data, split: str, n: int = 0):
    """`n` images of `data`'s split spread evenly over it (all of them with n 0), preprocessed,
    as float32 NCHW images and integer labels: the images a benchmark judges ONNX models on."""
    import numpy as np

    view = getattr(data, split)
    picks = np.arange(len(view))
    if 0 < n < len(view):
        picks = np.linspace(0, len(view) - 1, n).round().astype(int)
    xs = np.stack([view[int(i)][0].numpy() for i in picks]).astype(np.float32)
    return xs, np.asarray(view.labels)[picks]


def t_interval(diffs: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of paired differences and its Student-t interval over them (n - 1 degrees of
    freedom); with one difference there is no interval."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        return {
            "n": n,
            "mean": mean,
            "std": None,
            "low": None,
            "high": None,
            "excludes_zero": False,
        }
    sd = statistics.stdev(diffs)
    if sd > 0:
        low, high = (
            float(v) for v in stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
        )
    else:  # every seed gave the same difference: no spread, the interval is the point
        low = high = mean
    return {
        "n": n,
        "mean": mean,
        "std": sd,
        "low": low,
        "high": high,
        "excludes_zero": low > 0 or high < 0,
    }


def paired_gain(values: dict[int, float], base: dict[int, float]) -> dict | None:
    """values - base over the seeds both have, with the t-interval of the mean difference."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    return {"seeds": seeds, **t_interval([values[s] - base[s] for s in seeds])}


def gain_cell(g: dict | None) -> str:
    """A paired gain in points for a Markdown table: mean [95% interval], bold where the
    interval excludes zero."""
    if g is None:
        return "—"
    if g["low"] is None:
        return f"{100 * g['mean']:+.2f} (1 seed)"
    text = f"{100 * g['mean']:+.2f} [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}]"
    return f"**{text}**" if g["excludes_zero"] else text


# child processes -----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """One thread per child process: torch's intra-op pool follows OMP_NUM_THREADS."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_child(cmd: Sequence[str], name: str) -> None:
    """`cmd` in a single-threaded child process (from the repository root); raises with the
    end of its stderr when it fails."""
    log.info("start %s", name)
    res = subprocess.run(
        [str(c) for c in cmd], env=child_env(), capture_output=True, text=True, cwd=REPO
    )
    if res.returncode != 0:
        raise RuntimeError(f"run {name} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    log.info("done %s", name)


def python_cmd(*args: str | Path) -> list[str]:
    """A command line that runs this interpreter."""
    return [sys.executable, *(str(a) for a in args)]


def run_resumable(
    keys: Sequence[Hashable],
    jobs: int,
    here: Callable[[Any], Any],
    child: Callable[[Any], Any],
    finished: Callable[[Any], Any | None] | None = None,
) -> dict:
    """key -> result for every key, in the order given. A key `finished` answers for (its
    finished result) is reused as it is; the others run: in this process (`here`) with
    `jobs` 1, else `jobs` of them side by side (`child`, which starts a child process and
    returns once it has finished). Without `finished` every key runs, and its own caching
    decides what is redone (the pipeline's stage cache)."""
    results: dict = {}
    todo = []
    for k in keys:
        done = finished(k) if finished is not None else None
        if done is not None:
            results[k] = done
        else:
            todo.append(k)
    if jobs == 1:
        for k in todo:
            results[k] = here(k)
    elif todo:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {k: pool.submit(child, k) for k in todo}
            for k, fut in futures.items():
                results[k] = fut.result()
    return {k: results[k] for k in keys}
