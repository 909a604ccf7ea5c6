"""The method benchmark's bookkeeping: variants, paired gains and ratios."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def methods():
    spec = importlib.util.spec_from_file_location(
        "bench_methods", REPO / "benchmarks" / "methods.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablations_become_ama_variants(methods):
    args = methods.parse_args(
        ["--methods", "ce", "ama", "--ablate", "train.distill.mask=hard,train.distill.kappa=5"]
    )
    v = methods.variants(args)
    assert v["ce"] == ["train.method=ce"]
    assert v["ama[mask=hard,kappa=5]"] == [
        "train.method=ama",
        "train.distill.mask=hard",
        "train.distill.kappa=5",
    ]


def test_summary_pairs_gains_by_seed(methods):
    res = {
        "ce": {0: {"test_top1": 0.50, "epoch_s": 10.0}, 1: {"test_top1": 0.60, "epoch_s": 10.0}},
        "ama": {0: {"test_top1": 0.55, "epoch_s": 25.0}, 1: {"test_top1": 0.61, "epoch_s": 15.0}},
    }
    rows = {r["variant"]: r for r in methods.summarise(res, [0, 1])}
    assert rows["ama"]["gain_vs_ce_mean"] == pytest.approx(0.03)
    assert rows["ama"]["gain_vs_ce_std"] == pytest.approx(0.0282843, rel=1e-4)
    assert rows["ama"]["epoch_ratio_vs_ce"] == pytest.approx(2.0)
    assert rows["ce"]["top1_std"] == pytest.approx(0.0707107, rel=1e-4)
    assert "| ama | 2 | 58.00 ± 4.24 | +3.00 ± 2.83 | 20.0 | 2.00x |" in methods.markdown(
        list(rows.values()), "#"
    )


def test_gpu_check_says_what_it_skipped_without_a_gpu(tmp_path):
    import json
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a GPU is visible: the full check runs there, not in the CPU suite")
    out = tmp_path / "gpu.json"
    res = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert "no CUDA GPU" in data["skipped"]["everything"] and "skipped everything" in res.stdout
