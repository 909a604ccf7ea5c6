"""Freed host memory is reused inside `reuse_freed_memory` (glibc), and released after it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from pipeline.training.host_memory import reuse_freed_memory
from tests.conftest import REPO

# Run in a fresh interpreter, as a training process starts: how a long-lived test process's
# heap is laid out depends on every test before this one.
PROBE = textwrap.dedent(
    """
    import json, resource, torch
    from pipeline.training.host_memory import reuse_freed_memory

    SIZES = (40 << 20, 64 << 20, 96 << 20)  # above glibc's largest mmap threshold (32 MiB)

    def step():
        # like a training step: a few large activations alive together, then all freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.empty(n // 4).fill_(1.0) for n in SIZES]
        del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    out = {"pages": sum(SIZES) // resource.getpagesize(), "default": [step() for _ in range(3)]}
    with reuse_freed_memory() as on:
        out["on"] = on
        out["reuse"] = [step() for _ in range(12)]
    out["after"] = [step() for _ in range(2)]
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning applies to Linux with glibc only",
)
def test_large_blocks_are_reused_not_faulted_again():
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    r = json.loads(res.stdout.strip().splitlines()[-1])
    pages = r["pages"]
    assert r["on"]
    # glibc's default: every such block is a fresh mapping, faulted in page by page
    assert min(r["default"]) > pages // 2, r
    # the first steps grow the heap; once it has settled, a step reuses the pages the previous
    # one faulted in
    assert max(r["reuse"][-4:]) < pages // 20, r
    assert r["after"][0] > pages // 2, r  # glibc's behaviour is back after the block


def test_disabled_is_a_no_op():
    with reuse_freed_memory(False) as on:
        assert on is False
