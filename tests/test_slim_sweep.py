"""The compression sweep: points through the slim stage, resumed when finished, and its table,
paired gains, best point and figure."""

import json
import shutil

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
    # judged on the test split: the FP32 top-1 is the judged one, no column of its own
    assert "| r0.5-ama-s0 | 40 | 0.0 M | 80.00 | 80.00 | 1.000 | 0.250 | 2.00x | 8.00x |" in md
    groups = sweep.by_ratio(lines, "ama")
    assert [g["ratio"] for g in groups] == [0.5, 0.7]
    assert groups[0]["top1"]["ama"]["fp32"] == pytest.approx(0.80)
    assert groups[0]["top1"]["ce"]["fp32"] == pytest.approx(0.775)
    assert groups[0]["speedup_fp32"] == pytest.approx(2.0)  # medians: 2.0 ms / 1.0 ms
    ce = groups[0]["judged"]["ce"]
    assert ce["mean"] == pytest.approx(0.775) and ce["per_seed"] == {0: 0.78, 1: 0.77}
    # ce - ama paired by seed: -2 and -3 points; t(0.975, 1) = 12.706 * 0.00707 / sqrt(2)
    vs = ce["vs_reference"]
    assert vs["seeds"] == [0, 1] and vs["mean"] == pytest.approx(-0.025)
    assert vs["high"] - vs["mean"] == pytest.approx(12.706 * 0.01 / 2, rel=1e-3)
    assert groups[0]["judged"]["ama"]["vs_reference"] is None
    assert groups[1]["judged"]["ama"]["vs_reference"] is None  # the reference itself
    assert sweep.by_ratio(lines, "ls")[0]["judged"]["ce"]["vs_reference"] is None  # not run
    table = "\n".join(sweep.judged_table(groups, "ama"))
    assert "| 0.5 | ce | 2 | 78.00, 77.00 | 77.50 ± 0.71 | -2.50 [-8.85, +3.85] |" in table
    assert "| 0.5 | ama | 2 | 80.00, 80.00 | 80.00 ± 0.00 | reference |" in table
    best = sweep.best_point(groups, lines[0]["top1"])
    assert best["ratio"] == 0.5 and best["recipe"] == "ama"  # 0.7 is faster but loses 10 points
    assert sweep.figure(lines, tmp_path / "sweep.png").is_file()


def test_recipes_name_their_method_teacher_and_start(sweep):
    r = sweep.parse_recipe("ce+unpruned", "ama")
    assert (r.method, r.teacher, r.scratch, r.name) == ("ce", True, False, "ce+unpruned")
    assert sweep.parse_recipe("auto", "ama").name == "ama"
    assert sweep.parse_recipe("auto+unpruned", "frskd").name == "frskd+unpruned"
    scratch = sweep.parse_recipe("scratch", "ama")
    assert (scratch.method, scratch.scratch, scratch.name) == ("ce", True, "scratch")
    ls = sweep.parse_recipe("scratch:ls", "ama")
    assert (ls.method, ls.name) == ("ls", "scratch:ls")
    assert sweep.point_name(0.5, ls.name, 1) == "r0.5-scratch-ls-s1"
    assert sweep.parse_recipe(ls.name, "ama") == ls  # a name parses back to its recipe
    common = ["slim.epochs=2", "slim.teacher_temperature=2", "slim.scratch_lr=0.05"]
    assert r.overrides(common) == [
        "slim.epochs=2",
        "slim.teacher_temperature=2",  # teacher keys reach the recipes with a teacher only
        "slim.method=ce",
        "slim.teacher=unpruned",
        "slim.init=pruned",
    ]
    assert scratch.overrides(common)[:2] == ["slim.epochs=2", "slim.scratch_lr=0.05"]
    assert scratch.overrides(common)[-2:] == ["slim.teacher=none", "slim.init=scratch"]
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        sweep.parse_recipe("nope", "ama")
    with pytest.raises(SystemExit, match="only '\\+unpruned'"):
        sweep.parse_recipe("ce+teacher", "ama")


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


def test_precise_sweep_judges_recipes_on_validation_with_intervals(sweep, tmp_path):
    """The precise protocol end to end on a fake ImageFolder: a start run trained by the method
    benchmark on the protocol's split, three recipes (the reference, the unpruned teacher, from
    scratch) recovered at seed 0 in two single-threaded children, then at seeds 0 and 1 in this
    process (seed 0 reused), judged on the validation split (90% of the train images) and
    paired by seed against the reference."""
    from pipeline.artifacts import find_stage
    from pipeline.config import load_config
    from pipeline.data import build_data
    from tests.conftest import load_benchmark
    from tests.fake_datasets import make_imagefolder

    root = make_imagefolder(tmp_path / "data", n_train=20, n_test=2).folder  # 3 classes
    fast = ["--set", "data.num_workers=0", "--set", "train.checkpoint_every_epochs=null"]
    bench = tmp_path / "bench"
    methods = load_benchmark("methods")
    start = ["--protocol", "precise", "--full-root", str(root), "--methods", "ama", "--seeds", "0"]
    assert methods.main([*start, "--epochs", "1", "--batch", "8", "--out", str(bench), *fast]) == 0
    run = bench / "runs" / "ama-s0"
    out = tmp_path / "sweep"
    argv = [
        str(run),
        "--protocol",
        "precise",
        "--full-root",
        str(root),
        "--ratios",
        "0.5",
        "--recipes",
        "ama",
        "ce+unpruned",
        "scratch",
        "--set",
        "slim.epochs=1",
        "--set",
        "slim.compare=false",
        "--set",
        "slim.scratch_epochs=1",  # reaches the scratch points only
        *fast,
        "--out",
        str(out),
    ]
    assert sweep.main([*argv, "--seeds", "0", "--jobs", "2"]) == 0
    firsts = sorted((out / "points").glob("*-s0/result.json"))
    assert [p.parent.name for p in firsts] == [
        "r0.5-ama-s0",
        "r0.5-ce+unpruned-s0",
        "r0.5-scratch-s0",
    ]
    stamps = [p.stat().st_mtime_ns for p in firsts]
    argv += ["--seeds", "0", "1"]
    assert sweep.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in firsts] == stamps  # finished points are reused
    result = json.loads((out / "sweep.json").read_text())
    # judged on the 18 of 20 train images per class that training never saw
    assert result["protocol"] == "precise" and result["judged"] == {
        "split": "val",
        "images": 54,
        "metric": "top1",
    }
    assert result["unpruned_top1"] == find_stage(run, "train").metrics["val_top1"]
    names = [p["point"] for p in result["points"][1:]]
    assert sorted(names) == sorted(
        f"r0.5-{r}-s{s}" for r in ("ama", "ce+unpruned", "scratch") for s in (0, 1)
    )
    points = {n: json.loads((out / "points" / n / "result.json").read_text()) for n in names}
    rec = {n: p["recovery_recipe"] for n, p in points.items()}
    assert (rec["r0.5-ama-s1"]["method"], rec["r0.5-ama-s1"]["teacher"]) == ("ama", "none")
    assert (rec["r0.5-ce+unpruned-s1"]["method"], rec["r0.5-ce+unpruned-s1"]["teacher"]) == (
        "ce",
        "unpruned",
    )
    assert (rec["r0.5-scratch-s0"]["init"], rec["r0.5-scratch-s0"]["method"]) == ("scratch", "ce")
    assert all(p["settings"]["protocol"] == "precise" for p in points.values())
    # the judged top-1 is the recovered classifier's on the validation split: evaluated again
    # from the saved model, it is the same number
    cfg = load_config(run / "config.yaml", [f"data.root={root}", "data.val_fraction=0.9"])
    data = build_data(cfg.data, cfg.model)
    for n in ("r0.5-ce+unpruned-s0", "r0.5-scratch-s1"):  # from a child, from this process
        judged = points[n]["judged"]
        assert judged["split"] == "val" and judged["source"] == "recovery"
        assert judged["top1"] == pytest.approx(
            sweep.judged_top1(out / "points" / n / "work", data, "val")
        )
    (group,) = result["by_ratio"]
    assert set(group["judged"]) == {"ama", "ce+unpruned", "scratch"}
    assert group["judged"]["ama"]["vs_reference"] is None
    for recipe in ("ce+unpruned", "scratch"):
        vs = group["judged"][recipe]["vs_reference"]
        diffs = [
            points[f"r0.5-{recipe}-s{s}"]["judged"]["top1"]
            - points[f"r0.5-ama-s{s}"]["judged"]["top1"]
            for s in (0, 1)
        ]
        assert vs["seeds"] == [0, 1] and vs["n"] == 2
        assert vs["mean"] == pytest.approx(sum(diffs) / 2)
        assert vs["low"] <= vs["mean"] <= vs["high"]
    md = (out / "sweep.md").read_text()
    assert "(precise protocol)" in md and "on the 54 train images neither the run" in md
    assert "| 0.5 | scratch | 2 |" in md and "vs ama, 95% t-interval" in md
    assert not (out / "sweep.png").exists()  # no latency measured (slim.compare false)
    with pytest.raises(SystemExit, match="other settings"):
        sweep.main([*argv, "--set", "slim.lr=0.5"])
    # a run trained on another split may have trained on the judged images: refused
    args = sweep.parse_args(argv)
    other = load_config(run / "config.yaml", ["data.val_fraction=0.1"])
    with pytest.raises(SystemExit, match="data.val_fraction 0.1 there, 0.9 here"):
        sweep.check_split(args, other)

    # the frontier over that sweep, its base and a narrower network trained from scratch on
    # the same protocol: every classifier exported and judged, one latency per architecture
    narrow = ["--protocol", "precise", "--full-root", str(root), "--methods", "ce", "--seeds", "0"]
    small = tmp_path / "small"
    assert (
        methods.main(
            [*narrow, "--width", "0.0625", "--epochs", "1", "--batch", "8"]
            + ["--out", str(small), *fast]
        )
        == 0
    )
    frontier = load_benchmark("frontier")
    fargs = ["--base", str(run), "--sweep", str(out), "--scratch", str(small), "--protocol"]
    fargs += ["precise", "--full-root", str(root), "--judge-images", "0", "--rounds", "2"]
    fargs += ["--iters", "3", "--threads", "1", "--out", str(tmp_path / "frontier")]
    assert frontier.main(fargs) == 0
    front = json.loads((tmp_path / "frontier" / "frontier.json").read_text())
    assert front["judge_images"] == 54 and len(front["classifiers"]) == 1 + 1 + 6
    groups = {g["group"]: g for g in front["groups"]}
    assert {g["kind"] for g in groups.values()} == {"base", "smaller", "slim"}
    assert groups["slim 0.5 scratch"]["seeds"] == [0, 1]
    base = groups[next(k for k, g in groups.items() if g["kind"] == "base")]
    # ONNX FP32 on every judged image agrees with the run's own judged top-1 (argmax ties aside)
    assert abs(base["onnx_fp32_top1"] - base["judged_top1"]) <= 1 / 54 + 1e-9
    # seeds of one architecture share one latency; the pruned ones have fewer parameters
    assert groups["slim 0.5 ama"]["p50_fp32_ms"] == groups["slim 0.5 scratch"]["p50_fp32_ms"] > 0
    assert groups["slim 0.5 ama"]["params"] < base["params"]
    for prec in ("fp32", "int8"):
        rows = front["fronts"][prec]
        assert rows and all(r["pipeline"] is None or 0 <= r["pipeline"] <= 1 for r in rows)
    assert (tmp_path / "frontier" / "frontier.png").is_file()
    # a smaller network trained on another split may have seen the judged images: refused
    other = tmp_path / "other-split"
    shutil.copytree(small / "runs" / "ce-s0", other)
    text = (other / "config.yaml").read_text()
    assert "val_fraction: 0.9" in text
    (other / "config.yaml").write_text(text.replace("val_fraction: 0.9", "val_fraction: 0.5"))
    fargs[fargs.index(str(small))] = str(other)
    with pytest.raises(SystemExit, match="another split.*data.val_fraction"):
        frontier.main(fargs)
