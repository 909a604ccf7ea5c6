"""The method benchmark's bookkeeping: variants, paired gains and ratios."""

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def methods():
    return load_benchmark("methods")


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


def test_ablation_tags_keep_dotted_values(methods):
    args = methods.parse_args(
        ["--methods", "ama", "--ablate", "train.distill.label_smoothing=0.1", "train.lr=0.05"]
    )
    v = methods.variants(args)
    assert set(v) == {"ama", "ama[label_smoothing=0.1]", "ama[lr=0.05]"}
    assert methods.run_name("ama[label_smoothing=0.1]", 2) == "ama_label_smoothing-0.1-s2"


def test_ablation_names_its_method(methods):
    args = methods.parse_args(
        [
            "--methods",
            "ama",
            "--ablate",
            "train.method=frskd,train.distill.label_smoothing=0.1",
            "train.distill.label_smoothing=0.1",
        ]
    )
    v = methods.variants(args)
    assert v["frskd[label_smoothing=0.1]"] == [
        "train.method=frskd",
        "train.distill.label_smoothing=0.1",
    ]
    assert v["ama[label_smoothing=0.1]"][0] == "train.method=ama"
    with pytest.raises(SystemExit, match="no setting besides the method"):
        methods.variants(methods.parse_args(["--ablate", "train.method=frskd"]))


def test_summary_pairs_gains_by_seed(methods):
    res = {
        "ce": {0: {"test_top1": 0.50, "epoch_s": 10.0}, 1: {"test_top1": 0.60, "epoch_s": 10.0}},
        "ama": {
            0: {"test_top1": 0.55, "epoch_s": 25.0, "train_top1": 0.9, "test_aux_top1": 0.6},
            1: {"test_top1": 0.61, "epoch_s": 15.0, "train_top1": 0.8, "images_per_s": 900.0},
        },
    }
    rows = {r["variant"]: r for r in methods.summarise(res, [0, 1], baselines=["ce", "ls"])}
    gain = rows["ama"]["gains"]["ce"]
    assert gain["mean"] == pytest.approx(0.03) and gain["seeds"] == [0, 1]
    assert gain["std"] == pytest.approx(0.0282843, rel=1e-4)
    assert "ls" not in rows["ama"]["gains"]  # not run: no column
    assert rows["ce"]["gains"] == {}
    assert rows["ama"]["epoch_ratio_vs_ce"] == pytest.approx(2.0)
    # epoch times from another machine are never divided by this one's
    res["ce"][1]["merged_from"] = "elsewhere/table.json"
    rows = {r["variant"]: r for r in methods.summarise(res, [0, 1], baselines=["ce"])}
    assert rows["ama"]["epoch_ratio_vs_ce"] == pytest.approx(2.5)  # seed 0 only
    res["ce"][0]["merged_from"] = "elsewhere/table.json"
    assert methods.summarise(res, [0, 1])[1]["epoch_ratio_vs_ce"] is None
    del res["ce"][0]["merged_from"], res["ce"][1]["merged_from"]
    rows = {r["variant"]: r for r in methods.summarise(res, [0, 1], baselines=["ce", "ls"])}
    assert rows["ce"]["std"] == pytest.approx(0.0707107, rel=1e-4)
    md = methods.markdown(list(rows.values()), "#", ["ce", "ls"])
    # self-teacher and images/s: the mean over the seeds that report them; ce reports neither
    assert (
        "| ama | 2 | 55.00, 61.00 | 58.00 ± 4.24 | 60.00 | 85.00 | — | 20.0 | 900 | 2.00x |" in md
    )
    assert "| ce | 2 | 50.00, 60.00 | 55.00 ± 7.07 | — | — | — | 10.0 | — | 1.00x |" in md
    # two seeds: t(0.975, 1) = 12.706, half-width 12.706 * 0.0282843 / sqrt(2) = 0.2541
    assert "| ama | +3.00 [-22.41, +28.41] |" in md and "vs ls" not in md


def test_paired_gain_t_interval_matches_the_table_values(methods):
    """Differences 1, 2, 3 points: mean 2, sd 1, t(0.975, 2) = 4.303 -> 2 +- 2.484, which
    includes zero; 2, 3, 4, 3 points: mean 3, sd 0.8165, t(0.975, 3) = 3.182 -> 3 +- 1.299."""
    wide = methods.paired_gain({0: 0.51, 1: 0.62, 2: 0.73}, {0: 0.50, 1: 0.60, 2: 0.70})
    assert wide["mean"] == pytest.approx(0.02) and wide["std"] == pytest.approx(0.01)
    assert wide["high"] - wide["mean"] == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)
    assert wide["low"] < 0 < wide["high"] and not wide["excludes_zero"]
    base = {0: 0.40, 1: 0.50, 2: 0.45, 3: 0.55}
    narrow = methods.paired_gain({0: 0.42, 1: 0.53, 2: 0.49, 3: 0.58, 9: 0.99}, base)
    assert narrow["seeds"] == [0, 1, 2, 3]  # paired: seed 9 has no baseline
    assert narrow["mean"] == pytest.approx(0.03)
    assert narrow["low"] == pytest.approx(0.03 - 3.182 * (0.0002 / 3) ** 0.5 / 2, rel=1e-3)
    assert narrow["excludes_zero"] and narrow["low"] > 0
    worse = methods.paired_gain(base, {s: v + 0.03 for s, v in base.items()} | {1: 0.52})
    assert worse["high"] < 0 and worse["excludes_zero"]
    one = methods.paired_gain({0: 0.6}, {0: 0.5})
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and not one["excludes_zero"]
    assert methods.paired_gain({0: 0.6}, {1: 0.5}) is None
    md = methods.markdown(
        [
            {
                "variant": "ama",
                "seeds": 4,
                "per_seed": {0: 0.42},
                "mean": 0.5,
                "std": 0.0,
                "epoch_s": 1.0,
                "epoch_ratio_vs_ce": None,
                "gains": {"ce": narrow, "ls": wide},
            }
        ],
        "#",
        ["ce", "ls"],
    )
    assert "| ama | **+3.00 [+1.70, +4.30]** | +2.00 [-0.48, +4.48] |" in md


def test_judged_arrays_spread_n_images_evenly_over_the_split():
    import torch

    from benchmarks.protocols import judged_arrays

    class View(list):
        labels = list(range(10))

    data = type("Data", (), {"val": View((torch.full((1, 2, 2), float(i)), i) for i in range(10))})
    xs, ys = judged_arrays(data, "val", 4)
    assert xs.dtype == "float32" and xs.shape == (4, 1, 2, 2)
    assert ys.tolist() == [0, 3, 6, 9] and xs[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    for n in (0, 10, 50):  # all of them, in order
        assert judged_arrays(data, "val", n)[1].tolist() == list(range(10))


def test_precise_protocol_trains_on_500_per_class_and_judges_validation(methods, tmp_path):
    args = methods.parse_args(["--protocol", "precise", "--full-root", str(tmp_path)])
    o = methods.base_overrides(args)
    assert {"data.val_fraction=0.9", "data.max_per_class=500", f"data.root={tmp_path}"} <= set(o)
    assert "train.val_every_epochs=null" in o and methods.METRIC["precise"] == "val_top1"
    assert args.out.name == "methods-precise"


def test_precise_protocol_skips_cleanly_without_the_data(methods, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--protocol", "precise", "--full-root", str(tmp_path / "absent"), "--out", str(out)]
    assert methods.main(argv) == 0
    assert "skipped" in capsys.readouterr().out and not out.exists()


def test_side_by_side_jobs_write_tables_and_reuse_finished_runs(methods, tmp_path):
    """Two single-threaded children; the same command again retrains nothing."""
    import json

    out = tmp_path / "bench"
    argv = [
        "--data",
        "digits",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch",
        "32",
        "--methods",
        "ce",
        "ls",
        "--seeds",
        "0",
        "--jobs",
        "2",
        "--out",
        str(out),
        "--set",
        "data.max_per_class=10",
        "--set",
        "train.checkpoint_every_epochs=null",
    ]
    assert methods.main(argv) == 0
    manifests = sorted(out.glob("runs/*/01_train/manifest.json"))
    assert [p.parts[-3] for p in manifests] == ["ce-s0", "ls-s0"]
    ended = [json.loads(p.read_text())["ended"] for p in manifests]
    table = json.loads((out / "table.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["ce", "ls"] and table["metric"] == "test_top1"
    assert "ce" in table["rows"][1]["gains"] and "| ls |" in (out / "table.md").read_text()
    assert methods.main(argv) == 0
    assert [json.loads(p.read_text())["ended"] for p in manifests] == ended  # reused
    assert json.loads((out / "table.json").read_text())["runs"] == table["runs"]
    # --no-train tabulates what finished (a third method never ran) and trains nothing
    assert methods.main([*argv, "--methods", "ce", "ls", "pskd", "--no-train"]) == 0
    assert [json.loads(p.read_text())["ended"] for p in manifests] == ended
    assert [r["variant"] for r in json.loads((out / "table.json").read_text())["rows"]] == [
        "ce",
        "ls",
    ]
    assert not (out / "runs" / "pskd-s0").exists()
    # --merge: an earlier table's runs fill the seeds not run here and are not trained again;
    # a finished run here wins over a merged one
    ce0, ls0 = table["runs"]["ce"]["0"], table["runs"]["ls"]["0"]
    earlier = dict(
        table,
        runs={
            "ce": {"0": {**ce0, "test_top1": 0.123}, "1": {**ce0, "test_top1": 0.789}},
            "ls": {"1": {**ls0, "test_top1": 0.456}},
        },
    )
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    assert (
        methods.main([*argv, "--seeds", "0", "1", "--merge", str(tmp_path / "earlier.json")]) == 0
    )
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert rows["ce"]["per_seed"] == {"0": ce0["test_top1"], "1": 0.789}
    assert rows["ls"]["per_seed"] == {"0": ls0["test_top1"], "1": 0.456}
    assert rows["ls"]["gains"]["ce"]["seeds"] == [0, 1]
    assert "2 of the runs come from earlier tables" in (out / "table.md").read_text()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ce-s0", "ls-s0"]
    assert [json.loads(p.read_text())["ended"] for p in manifests] == ended
    # other settings or a file that is not a table: refused, naming the setting and the fix
    (tmp_path / "other.json").write_text(
        json.dumps(dict(earlier, args={**table["args"], "width": "0.5"}))
    )
    with pytest.raises(SystemExit, match="width '0.5' there, '0.125' here"):
        methods.main([*argv, "--no-train", "--merge", str(tmp_path / "other.json")])
    no_width = {k: v for k, v in table["args"].items() if k != "width"}
    (tmp_path / "no-width.json").write_text(json.dumps(dict(earlier, args=no_width)))
    with pytest.raises(SystemExit, match="width None there, '0.125' here"):
        methods.main([*argv, "--no-train", "--merge", str(tmp_path / "no-width.json")])
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(SystemExit, match="not a table.json"):
        methods.main([*argv, "--no-train", "--merge", str(tmp_path / "bad.json")])


def test_fit_epoch_is_the_first_epoch_at_the_level(methods, tmp_path):
    import json

    path = tmp_path / "metrics.jsonl"
    assert methods.fit_epoch(path) is None  # no history
    rows = [{"epoch": e, "train_top1": a} for e, a in [(1, 0.5), (2, 0.96), (3, 0.94), (4, 0.99)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert methods.fit_epoch(path) == 2 and methods.fit_epoch(path, 0.999) is None
    assert methods._epochs([2, 5, 3]) == "2-5" and methods._epochs([4, 4]) == "4"
    assert methods._epochs([2, None]) == "never (1 of 2)"


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
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert "no CUDA GPU" in data["skipped"]["everything"] and "skipped everything" in res.stdout
    # a check that does not exist is refused by name before anything runs
    bad = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--only", "eager_vs_eager"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "eager_vs_compiled" in bad.stderr


def test_gpu_check_loader_comparison_runs_both_paths(tmp_path, fresh_accelerate_state, one_thread):
    """The check's DataLoader-against-device comparison, on the CPU at toy size."""
    check = load_benchmark("gpu_check")
    res = check.loader_ab(0.125, 32, tmp_path, epochs=1, device="cpu", n=100)
    assert res["dataloader"]["images_per_s"] > 0 and res["on_device"]["images_per_s"] > 0
    assert res["speed_up"] == pytest.approx(
        res["on_device"]["images_per_s"] / res["dataloader"]["images_per_s"]
    )
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["loader-dataloader", "loader-device"]


def test_early_steps_writes_the_head_check_then_one_line_per_step_and_repeats(tmp_path):
    from tests.fake_datasets import make_imagefolder

    early = load_benchmark("early_steps")
    root = make_imagefolder(tmp_path, n_train=6).folder
    rows = []
    for run in ("a", "b"):
        out = tmp_path / "new" / f"{run}.jsonl"  # a folder that is not there yet
        args = [
            "--root",
            str(root),
            "--method",
            "ama",
            "--width",
            "0.125",
            "--batch",
            "4",
            "--steps",
            "3",
            "--warmup",
            "2",
            "--set",
            "alpha=0",
            "--out",
            str(out),
        ]
        assert early.main(args) == 0
        rows.append([json.loads(line) for line in out.read_text().splitlines()])
    head, *steps = rows[0]
    assert head["head_sharpness"] > 0 and head["stability_limit"] == pytest.approx(3.8)
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert [s["lr"] for s in steps] == pytest.approx([0.05, 0.1, 0.1])  # warm-up over 2 steps
    assert steps[0]["kd"] == 0.0 and len(steps[0]["feat_rms"]) == 4 and steps[0]["aux_acc"] >= 0

    def same(r):
        return {k: v for k, v in r.items() if k not in ("t", "args")}  # args name the file

    assert [same(r) for r in rows[0]] == [same(r) for r in rows[1]]  # seeded: the same steps
    row = early.summarise(tmp_path / "new" / "a.jsonl")
    assert row["steps"] == 3 and row["logit_max"] == max(s["logit_max"] for s in steps)
    assert row["last_stage_rms_end"] == steps[-1]["feat_rms"][-1]
    assert row["acc_end"] == pytest.approx(sum(s["acc"] for s in steps) / 3)
    lines = early.table(tmp_path / "new").splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a | 3 |") and lines[3].startswith("| b |")


def test_early_steps_count_epochs_so_a_kl_warm_up_ramps_over_them(tmp_path):
    """12 images in batches of 4: three steps an epoch. A KL warm-up of one epoch has no KL
    term in the first epoch (the same steps as alpha 0) and switches it on in the second."""
    from tests.fake_datasets import make_imagefolder

    early = load_benchmark("early_steps")
    root = make_imagefolder(tmp_path, n_train=4).folder
    runs = {}
    for name, sets in (("ramp", ["alpha=2", "kd_warmup_epochs=1"]), ("zero", ["alpha=0"])):
        out = tmp_path / f"{name}.jsonl"
        args = [
            "--root",
            str(root),
            "--method",
            "frskd",
            "--width",
            "0.125",
            "--batch",
            "4",
            "--steps",
            "4",
            "--out",
            str(out),
        ]
        assert early.main([*args, *sum((["--set", s] for s in sets), [])]) == 0
        runs[name] = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    ramp, zero = runs["ramp"], runs["zero"]
    assert [s["epoch"] for s in ramp] == [0, 0, 0, 1]
    for a, b in zip(ramp[:3], zero[:3], strict=True):
        assert {k: v for k, v in a.items() if k != "t"} == {k: v for k, v in b.items() if k != "t"}
    assert ramp[3]["ce"] == zero[3]["ce"] and zero[3]["kd"] == 0.0 < ramp[3]["kd"]
    lines = early.epoch_table(tmp_path).splitlines()
    first = sum(s["acc"] for s in ramp[:3]) / 3
    rms = min(s["feat_rms"][-1] for s in ramp[:3])
    assert f"| ramp | 1 | 3 | {100 * first:.1f}% | {rms:.3f} |" in lines
    assert lines[-1].startswith("| zero | 2 | 1 |") and len(lines) == 2 + 4


def test_early_steps_names_a_root_without_train(tmp_path):
    early = load_benchmark("early_steps")
    with pytest.raises(SystemExit, match="no train/ folder"):
        early.main(["--root", str(tmp_path)])
