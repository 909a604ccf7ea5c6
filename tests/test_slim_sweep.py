"""The compression sweep: points through the slim stage, resumed when finished, and its table,
paired gains, best point and figure."""

import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("slim_sweep")


def _row(ratio, method, seed, top1, p50, ref_p50=2.0, ref_top1=0.80):
    def m(t, ms):
        return {"top1": t, "latency_ms": {"p50": ms}, "throughput": {"images_per_s": 1000 / ms}}

    return {
        "ratio": ratio,
        "method": method,
        "seed": seed,
        "recovery": {"train_s": 1.0},
        "compression": {
            "unpruned": {
                "params": 100,
                "macs": 1000,
                "fp32": m(ref_top1, ref_p50),
                "int8": m(ref_top1 - 0.01, ref_p50 / 4),
            },
            "slim": {"params": 40, "macs": 250, "fp32": m(top1, p50), "int8": m(top1, p50 / 4)},
            "speedup_batch1": {
                "unpruned_int8": 4.0,
                "slim_fp32": ref_p50 / p50,
                "slim_int8": ref_p50 / (p50 / 4),
            },
            "top1_change_fp32": top1 - ref_top1,
            "top1_change_int8": top1 - ref_top1,
        },
    }


def test_table_gain_and_best_point(sweep, tmp_path):
    rows = [
        _row(0.5, "ce", 0, 0.78, 1.0),
        _row(0.5, "ama", 0, 0.80, 1.0),
        _row(0.5, "ce", 1, 0.77, 1.0),
        _row(0.5, "ama", 1, 0.80, 1.0),
        _row(0.7, "ama", 0, 0.70, 0.5),  # faster but 10 points lost: not within 1 point
    ]
    lines, md = sweep.table(rows)
    assert lines[0]["point"] == "unpruned" and lines[0]["speedup_int8"] == 4.0
    assert "| r0.5-ama-s0 | 40 | 0.0 M | 80.00 | 80.00 | 1.000 | 0.250 | 2.00x | 8.00x |" in md
    gain = sweep.paired(rows, "ama", "ce")
    assert gain["0.5"]["gains"] == pytest.approx([0.02, 0.03])
    assert gain["0.5"]["mean"] == pytest.approx(0.025)
    assert "0.7" not in gain  # no ce point to pair with
    with_ls = [*rows, _row(0.5, "ls", 0, 0.785, 1.0), _row(0.5, "ls", 1, 0.79, 1.0)]
    pairs = sweep.comparisons(with_ls, ["ama", "ls", "ce"])
    assert sorted(pairs) == [("ama", "ce"), ("ama", "ls"), ("ls", "ce")]  # no ce - ls
    assert pairs[("ama", "ls")]["0.5"]["gains"] == pytest.approx([0.015, 0.01])
    groups = sweep.by_ratio(lines)
    assert [g["ratio"] for g in groups] == [0.5, 0.7]
    assert groups[0]["top1"]["ama"]["fp32"] == pytest.approx(0.80)
    assert groups[0]["top1"]["ce"]["fp32"] == pytest.approx(0.775)
    assert groups[0]["speedup_fp32"] == pytest.approx(2.0)  # medians: 2.0 ms / 1.0 ms
    best = sweep.best_point(groups, lines[0]["top1_fp32"])
    assert best["ratio"] == 0.5 and best["method"] == "ama"  # 0.7 is faster but loses 10 points
    assert sweep.figure(lines, tmp_path / "sweep.png").is_file()


def test_sweep_runs_points_through_the_slim_stage_and_resumes(sweep, tiny_overrides, tmp_path):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config(None, [*tiny_overrides, "train.epochs=1", "model.width=0.25"])
    run_pipeline(cfg, only="train")
    out = tmp_path / "sweep"
    argv = [
        str(cfg.run_path),
        "--ratios",
        "0.5",
        "--methods",
        "ce",
        "--seeds",
        "0",
        "--set",
        "slim.epochs=1",
        "--set",
        "slim.round_to=4",
        "--out",
        str(out),
    ]
    assert sweep.main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    point = result["points"][1]
    assert point["point"] == "r0.5-ce-s0" and point["params"] < result["points"][0]["params"] / 2
    assert (out / "sweep.md").is_file() and (out / "sweep.png").is_file()
    done = out / "points" / "r0.5-ce-s0" / "result.json"
    stamp = done.stat().st_mtime_ns
    assert sweep.main(argv) == 0  # the finished point is reused, not re-run
    assert done.stat().st_mtime_ns == stamp
