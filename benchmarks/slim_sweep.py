"""Compression sweep: prune one trained run at several channel ratios, recover each with several
recipes (and seeds), and judge every point on the same images.

Each point is the pipeline's own slim stage (pruning, recovery, and unless `slim.compare` is
false the side-by-side ONNX Runtime FP32/INT8 measurement of the unpruned and the slim
classifier), run in its own folder under `--out`; a finished point is reused, so an
interrupted sweep resumes. `--jobs N` runs N points side by side, each in a single-threaded
child process. Writes `sweep.json`, `sweep.md` and, with the measurement, `sweep.png` (top-1
against batch-1 latency, FP32 and INT8 points, the frontier drawn).

Recovery recipes (`--recipes`): a method (`ce`, `ls`, `ama`, ...; `auto` is the run's own),
`METHOD+unpruned` (the frozen unpruned classifier teaches beside it: `slim.teacher=unpruned`),
`scratch` (the pruned architecture from fresh weights, `slim.init=scratch`, with `ce`) or
`scratch:METHOD`. Protocols (`--protocol`, shared with `methods.py` in `protocols.py`):
`test` judges on the run's test split; `precise` recovers on 500 images per class of
cifar10-full and judges on the 45,000 train images neither the run nor its recovery trained on
(the run must have been trained on the precise protocol: `methods.py --protocol precise`).
Per ratio and recipe: the mean over seeds, and the paired difference to `--reference` with its
95% Student-t interval over seeds.

    python benchmarks/slim_sweep.py runs/c10s-r18w05-ama --ratios 0.3 0.5 0.7 \
        --recipes ce ama --seeds 0 [--set slim.epochs=5 ...]
    python benchmarks/slim_sweep.py benchmarks/results/methods-precise/runs/ama-s0 \
        --protocol precise --ratios 0.5 --recipes ce ls ama ce+unpruned ama+unpruned scratch \
        --seeds 0 1 2 --jobs 2 --set slim.epochs=10
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.protocols import (  # noqa: E402
    FULL_ROOT,
    METRIC,
    SPLIT,
    SPLIT_KEYS,
    gain_cell,
    missing_data,
    paired_gain,
    protocol_overrides,
    python_cmd,
    run_child,
    run_resumable,
)
from pipeline.artifacts import StageContext, find_stage, write_json_atomic  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

PROTOCOLS = ("test", "precise")
# A best point loses at most this much judged top-1 against the unpruned classifier.
MAX_LOSS = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder with a finished train stage")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument(
        "--recipes",
        "--methods",
        dest="recipes",
        nargs="+",
        default=["ce", "auto"],
        help="recovery recipes: METHOD (auto: the run's), METHOD+unpruned (the unpruned "
        "classifier teaches too), scratch (fresh weights, ce) or scratch:METHOD",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="recovery seeds")
    p.add_argument(
        "--reference",
        default="ama",
        help="the recipe every other one is compared with, paired by seed (default ama)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="test",
        help="test: judge on the run's test split; precise: recover on 500 images per class of "
        "--full-root and judge on the 45,000 train images not trained on (a run trained on the "
        "precise protocol)",
    )
    p.add_argument("--full-root", type=Path, default=FULL_ROOT, help="data.root (protocol precise)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="points side by side, each in a single-threaded child process; 1 runs them in "
        "this process with torch's default threads",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override for every point (slim.teacher_* only reach the +unpruned recipes, "
        "slim.scratch_* only the scratch ones)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default: RUN/slim-sweep (RUN/slim-sweep-precise)"
    )
    # one point in this process (what --jobs starts in each child)
    p.add_argument("--point", nargs=3, metavar=("RATIO", "RECIPE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.out is None:
        args.out = args.run / ("slim-sweep" if args.protocol == "test" else "slim-sweep-precise")
    return args


# recipes -------------------------------------------------------------------------------------


class Recipe(NamedTuple):
    """How a pruned network is recovered: `method` (slim.method), with the unpruned classifier
    as a teacher beside it (`teacher`), from the pruned weights or from scratch."""

    method: str
    teacher: bool = False
    scratch: bool = False

    @property
    def name(self) -> str:
        base = self.method
        if self.scratch:
            base = "scratch" if self.method == "ce" else f"scratch:{self.method}"
        return base + ("+unpruned" if self.teacher else "")

    def overrides(self, common: list[str]) -> list[str]:
        """`common` less the recipe keys that belong to other recipes, then this recipe's."""

        def applies(o: str) -> bool:
            key = o.partition("=")[0].strip()
            if key.startswith("slim.teacher_"):
                return self.teacher
            if key.startswith("slim.scratch_"):
                return self.scratch
            return True

        return [
            *(o for o in common if applies(o)),
            f"slim.method={self.method}",
            f"slim.teacher={'unpruned' if self.teacher else 'none'}",
            f"slim.init={'scratch' if self.scratch else 'pruned'}",
        ]


def parse_recipe(spec: str, run_method: str) -> Recipe:
    """`ce`, `ama+unpruned`, `scratch`, `scratch:ls`, `auto` (the run's method), ..."""
    from pipeline.distill import METHODS

    body, plus, extra = spec.strip().partition("+")
    if plus and extra != "unpruned":
        raise SystemExit(f"recipe {spec!r}: only '+unpruned' may follow the method")
    scratch = body == "scratch" or body.startswith("scratch:")
    method = (body.partition(":")[2] or "ce") if scratch else body
    if method == "auto":
        method = run_method
    if method not in METHODS:
        raise SystemExit(
            f"recipe {spec!r}: unknown method {method!r}; one of auto, {', '.join(METHODS)} "
            "(as METHOD, METHOD+unpruned, scratch or scratch:METHOD)"
        )
    return Recipe(method, teacher=bool(plus), scratch=scratch)


def point_name(ratio: float, recipe: str, seed: int) -> str:
    return f"r{ratio:g}-{recipe.replace(':', '-')}-s{seed}"


# points --------------------------------------------------------------------------------------


def point_overrides(args, ratio: float, recipe: Recipe, seed: int) -> list[str]:
    """What makes a point, less the protocol's data settings (recorded in its result)."""
    return [*recipe.overrides(args.overrides), f"slim.ratio={ratio}", f"train.seed={seed}"]


def finished_point(args, ratio: float, recipe: Recipe, seed: int) -> dict | None:
    """The result of a finished point, else None; one run with other settings is refused."""
    result = args.out / "points" / point_name(ratio, recipe.name, seed) / "result.json"
    if not result.is_file():
        return None
    row = normalise(json.loads(result.read_text()))
    mine = {"protocol": args.protocol, "overrides": point_overrides(args, ratio, recipe, seed)}
    theirs = row.get("settings")
    if theirs is not None and theirs != mine:
        raise SystemExit(
            f"{result.parent} was run with other settings ({theirs}, here {mine}): pass "
            "another --out, or delete that point to run it again"
        )
    return row


def normalise(row: dict) -> dict:
    """A point's result as this version keeps it; an earlier sweep's (no recipe name, judged
    by its FP32 top-1 on the test split) is read as the plain method it recovered with."""
    if not isinstance(row.get("recipe"), str):
        row["recovery_recipe"] = row.pop("recipe", None)
        row["recipe"] = row["method"]
    if "judged" not in row:
        row["judged"] = {
            "split": "test",
            "top1": row["compression"]["slim"]["fp32"]["top1"],
            "source": "compression",
        }
    return row


def judged_top1(folder: Path, data, split: str) -> float:
    """Top-1 of the classifier saved in `folder` on a split, through the pipeline's own
    evaluation (`predictions` of its torch predictor), in chunks."""
    import numpy as np
    import torch

    from pipeline.evaluation.backends import torch_predictor
    from pipeline.evaluation.scoring import predictions
    from pipeline.training.slimming import deployable

    view = getattr(data, split)
    labels = np.asarray(view.labels)
    predict = torch_predictor(deployable(folder).eval())
    correct = 0
    for s in range(0, len(view), 256):
        xs = torch.stack([view[i][0] for i in range(s, min(s + 256, len(view)))])
        pred, _ = predictions(predict, xs.numpy().astype(np.float32))
        correct += int((pred == labels[s : s + len(pred)]).sum())
    return correct / max(len(view), 1)


def judge(protocol: str, metrics: dict, folder: Path, data) -> dict:
    """The judged top-1 of a point: on the test split, the slim stage's ONNX FP32 measurement
    (the recovery's PyTorch test top-1 without it); on the precise protocol, the recovered
    classifier's top-1 on the validation split, as the recovery's last epoch measured it.
    Where the stage recorded none (no recovery epochs), evaluated from the saved model."""
    split = SPLIT[protocol]
    top1, source = None, "recovery"
    if protocol == "test" and metrics.get("compression"):
        top1, source = metrics["compression"]["slim"]["fp32"]["top1"], "compression"
    if top1 is None:
        top1 = (metrics.get("recovery") or {}).get(METRIC[protocol])
    if top1 is None:
        top1, source = judged_top1(folder, data, split), "evaluated"
    return {"split": split, "top1": top1, "images": len(getattr(data, split)), "source": source}


def run_point(args, train, load_data, ratio: float, recipe: Recipe, seed: int) -> dict:
    """One point through the slim stage, in `out/points/<name>`; reused when finished."""
    from pipeline.stages import slim
    from pipeline.training.slimming import recovery_method

    done = finished_point(args, ratio, recipe, seed)
    if done is not None:
        return done
    folder = args.out / "points" / point_name(ratio, recipe.name, seed)
    mine = point_overrides(args, ratio, recipe, seed)
    sets = [*protocol_overrides(args.protocol, args.full_root), *mine]
    cfg = load_config(args.run / "config.yaml", sets)
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)  # a partial point resumes from its checkpoints
    ctx = StageContext(cfg=cfg, run_dir=args.run, load_data=load_data)
    metrics = slim.run(cfg, {"train": train}, work, ctx).metrics
    row = {
        **metrics,
        "ratio": ratio,
        "recipe": recipe.name,
        "recovery_recipe": metrics.get("recipe"),
        "method": recovery_method(cfg),
        "seed": seed,
        "judged": judge(args.protocol, metrics, work, ctx.data),
        "settings": {"protocol": args.protocol, "overrides": mine},
    }
    write_json_atomic(folder / "result.json", row)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return row


def point_in_child(args, ratio: float, recipe: Recipe, seed: int) -> dict:
    """One point in a single-threaded child process (this script with --point)."""
    sets = sum((["--set", o] for o in args.overrides), [])
    cmd = python_cmd(
        Path(__file__),
        args.run,
        "--protocol",
        args.protocol,
        "--full-root",
        args.full_root,
        "--out",
        args.out,
        "--point",
        f"{ratio!r}",
        recipe.name,
        str(seed),
        *sets,
    )
    run_child(cmd, point_name(ratio, recipe.name, seed))
    done = finished_point(args, ratio, recipe, seed)
    if done is None:
        raise RuntimeError(f"point {point_name(ratio, recipe.name, seed)} exited 0 with no result")
    return done


def check_split(args, run_cfg) -> None:
    """Under the precise protocol, the run must have trained on the protocol's images: a run
    trained on other images may have seen the judged ones."""
    cfg = load_config(args.run / "config.yaml", protocol_overrides(args.protocol, args.full_root))
    differ = [
        f"data.{k} {getattr(run_cfg.data, k)!r} there, {getattr(cfg.data, k)!r} here"
        for k in SPLIT_KEYS
        if getattr(run_cfg.data, k) != getattr(cfg.data, k)
    ]
    if differ:
        raise SystemExit(
            f"{args.run} was not trained on the {args.protocol} protocol's images "
            f"({'; '.join(differ)}), so it may have trained on the judged ones: train it with "
            f"`benchmarks/methods.py --protocol {args.protocol}` and sweep that run"
        )


# tables --------------------------------------------------------------------------------------


def _measured(rows: list[dict]) -> bool:
    """Every point has the slim stage's side-by-side measurement (slim.compare)."""
    return all(r.get("compression") for r in rows)


def table(rows: list[dict], unpruned_top1: float | None = None) -> tuple[list[dict], str]:
    """One line per point and one for the unpruned model (its measurements averaged over the
    points, each point's speed-ups taken against its own unpruned measurement); `top1` is the
    judged top-1 (by default the unpruned FP32 one on the test split). Without the
    measurement (slim.compare false), sizes from the pruning record and the judged top-1."""
    rows = [normalise(r) for r in rows]
    measured = _measured(rows)
    lines = []
    if measured:
        ref = [r["compression"]["unpruned"] for r in rows]
        unpruned = {
            "point": "unpruned",
            "params": ref[0]["params"],
            "macs": ref[0]["macs"],
            "top1": ref[0]["fp32"]["top1"] if unpruned_top1 is None else unpruned_top1,
            "top1_fp32": ref[0]["fp32"]["top1"],
            "top1_int8": ref[0]["int8"]["top1"],
            "p50_fp32_ms": statistics.median(u["fp32"]["latency_ms"]["p50"] for u in ref),
            "p50_int8_ms": statistics.median(u["int8"]["latency_ms"]["p50"] for u in ref),
            "speedup_fp32": 1.0,
            "speedup_int8": statistics.median(
                r["compression"]["speedup_batch1"]["unpruned_int8"] for r in rows
            ),
        }
    else:
        before = rows[0]["pruning"]["before"]
        unpruned = {
            "point": "unpruned",
            "params": before["params"],
            "macs": before["macs"],
            "top1": unpruned_top1,
        }
    lines.append(unpruned)
    for r in rows:
        line = {
            "point": point_name(r["ratio"], r["recipe"], r["seed"]),
            "ratio": r["ratio"],
            "recipe": r["recipe"],
            "method": r["method"],
            "seed": r["seed"],
            "top1": r["judged"]["top1"],
            "recovery_s": (r.get("recovery") or {}).get("train_s"),
        }
        if measured:
            c = r["compression"]
            line |= {
                "params": c["slim"]["params"],
                "macs": c["slim"]["macs"],
                "top1_fp32": c["slim"]["fp32"]["top1"],
                "top1_int8": c["slim"]["int8"]["top1"],
                "top1_change_fp32": c["top1_change_fp32"],
                "top1_change_int8": c["top1_change_int8"],
                "p50_fp32_ms": c["slim"]["fp32"]["latency_ms"]["p50"],
                "p50_int8_ms": c["slim"]["int8"]["latency_ms"]["p50"],
                "speedup_fp32": c["speedup_batch1"]["slim_fp32"],
                "speedup_int8": c["speedup_batch1"]["slim_int8"],
                "throughput_fp32": c["slim"]["fp32"]["throughput"]["images_per_s"],
                "throughput_int8": c["slim"]["int8"]["throughput"]["images_per_s"],
            }
        else:
            after = r["pruning"]["after"]
            line |= {"params": after["params"], "macs": after["macs"]}
        lines.append(line)
    # the judged top-1 has its own column unless it is the FP32 one on the test split
    judged_col = not measured or rows[0]["judged"]["split"] != "test"
    head = ["point", "parameters", "MACs"]
    if judged_col:
        head.append(f"top-1 {rows[0]['judged']['split']} (judged)")
    if measured:
        test = "test " if judged_col else ""
        head += [
            f"{test}top-1 FP32",
            f"{test}top-1 INT8",
            "p50 FP32 ms",
            "p50 INT8 ms",
            "speed-up FP32",
            "speed-up INT8",
        ]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in lines:
        cells = [x["point"], f"{x['params']:,}", f"{x['macs'] / 1e6:.1f} M"]
        if judged_col:
            cells.append(_pct(x["top1"]))
        if measured:
            cells += [
                f"{100 * x['top1_fp32']:.2f}",
                f"{100 * x['top1_int8']:.2f}",
                f"{x['p50_fp32_ms']:.3f}",
                f"{x['p50_int8_ms']:.3f}",
                f"{x['speedup_fp32']:.2f}x",
                f"{x['speedup_int8']:.2f}x",
            ]
        md.append("| " + " | ".join(cells) + " |")
    return lines, "\n".join(md)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def by_ratio(lines: list[dict], reference: str | None = None) -> list[dict]:
    """Per ratio (one architecture): the judged top-1 per recipe (mean, std and per seed) and
    its paired difference to the `reference` recipe over the seeds both have, with the 95%
    Student-t interval; with the measurement, latency as the median over every point's and
    the speed-ups from medians against the unpruned median (single measurements on a busy
    machine move by 20% and more, medians over several do not), and the mean FP32 and INT8
    top-1 on the test split per recipe."""
    ref = lines[0]
    measured = "p50_fp32_ms" in ref
    out = []
    for ratio in sorted({x["ratio"] for x in lines[1:]}):
        pts = [x for x in lines[1:] if x["ratio"] == ratio]
        row = {
            "ratio": ratio,
            "params": pts[0]["params"],
            "macs": pts[0]["macs"],
            "measurements": len(pts),
            "p50_fp32_ms": None,
            "p50_int8_ms": None,
            "speedup_fp32": None,
            "speedup_int8": None,
            "top1": {},
            "judged": {},
        }
        if measured:
            fp32 = statistics.median(x["p50_fp32_ms"] for x in pts)
            int8 = statistics.median(x["p50_int8_ms"] for x in pts)
            row |= {
                "p50_fp32_ms": fp32,
                "p50_int8_ms": int8,
                "speedup_fp32": ref["p50_fp32_ms"] / fp32,
                "speedup_int8": ref["p50_fp32_ms"] / int8,
            }
        recipes = list(dict.fromkeys(x["recipe"] for x in pts))
        per_seed = {m: {x["seed"]: x["top1"] for x in pts if x["recipe"] == m} for m in recipes}
        for m in recipes:
            mine = [x for x in pts if x["recipe"] == m]
            values = list(per_seed[m].values())
            row["judged"][m] = {
                "seeds": len(values),
                "per_seed": per_seed[m],
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "vs_reference": paired_gain(per_seed[m], per_seed[reference])
                if reference in per_seed and m != reference
                else None,
            }
            if measured:
                row["top1"][m] = {
                    "fp32": statistics.mean(x["top1_fp32"] for x in mine),
                    "int8": statistics.mean(x["top1_int8"] for x in mine),
                    "seeds": len(mine),
                }
        out.append(row)
    return out


def best_point(groups: list[dict], ref_top1: float, max_loss: float = MAX_LOSS) -> dict | None:
    """The fastest architecture (median latency; without the measurement, the fewest MACs)
    whose best recovery recipe (mean judged top-1 over its seeds) loses at most `max_loss`
    against the unpruned model."""
    ok = []
    for g in groups:
        recipe, top1 = max(g["judged"].items(), key=lambda kv: kv[1]["mean"])
        if top1["mean"] - ref_top1 >= -max_loss:
            best = {**g, "recipe": recipe, "top1": top1["mean"]}
            if recipe in g["top1"]:
                best |= {
                    "top1_fp32": g["top1"][recipe]["fp32"],
                    "top1_int8": g["top1"][recipe]["int8"],
                }
            ok.append(best)
    if not ok:
        return None
    return max(ok, key=lambda g: g["speedup_fp32"] if g["speedup_fp32"] else -g["macs"])


def figure(lines: list[dict], out: Path) -> Path | None:
    """Top-1 (test split, ONNX) against batch-1 latency; none without the measurement."""
    from pipeline.report.figures import accuracy_latency_figure

    if "p50_fp32_ms" not in lines[0]:
        return None
    points = [
        ("unpruned FP32", lines[0]["p50_fp32_ms"], lines[0]["top1_fp32"]),
        ("unpruned INT8", lines[0]["p50_int8_ms"], lines[0]["top1_int8"]),
    ]
    for x in lines[1:]:
        points.append((f"{x['point']} FP32", x["p50_fp32_ms"], x["top1_fp32"]))
        points.append((f"{x['point']} INT8", x["p50_int8_ms"], x["top1_int8"]))
    return accuracy_latency_figure(points, out, title="slim sweep: top-1 against latency")


def judged_table(groups: list[dict], reference: str) -> list[str]:
    """Markdown: per ratio and recipe, the judged top-1 over seeds and the paired difference
    to the reference recipe."""
    lines = [
        f"| ratio | recipe | seeds | per seed | mean ± std | vs {reference}, 95% t-interval |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        for m, j in g["judged"].items():
            per_seed = ", ".join(f"{100 * v:.2f}" for _, v in sorted(j["per_seed"].items()))
            vs = "reference" if m == reference else gain_cell(j["vs_reference"])
            lines.append(
                f"| {g['ratio']:g} | {m} | {j['seeds']} | {per_seed} | {100 * j['mean']:.2f} ± "
                f"{100 * j['std']:.2f} | {vs} |"
            )
    return lines


def unpruned_judged(args, train, rows: list[dict], load_data) -> float:
    """The unpruned classifier's judged top-1, measured like the points: its ONNX FP32 top-1
    from the points' measurement on the test split; else the train stage's own top-1 on the
    judged split (evaluated from its saved model where the stage recorded none)."""
    if args.protocol == "test" and _measured(rows):
        return rows[0]["compression"]["unpruned"]["fp32"]["top1"]
    top1 = train.metrics.get(METRIC[args.protocol])
    if top1 is None:
        top1 = judged_top1(train.folder, load_data(), SPLIT[args.protocol])
    return top1


def write_report(args, rows: list[dict], ref_top1: float) -> str:
    rows = [normalise(r) for r in rows]
    lines, md = table(rows, ref_top1)
    groups = by_ratio(lines, args.reference)
    best = best_point(groups, ref_top1)
    first = rows[0]["judged"]
    images = f"{first['images']:,} " if first.get("images") else ""
    where = (
        f"the {images}train images neither the run nor its recovery trained on (validation split)"
        if first["split"] == "val"
        else f"the {images}test images"
    )
    summary = {
        "run": str(args.run),
        "protocol": args.protocol,
        "judged": {"split": first["split"], "images": first.get("images"), "metric": "top1"},
        "reference": args.reference,
        "unpruned_top1": ref_top1,
        "points": lines,
        "by_ratio": groups,
        "best_within_1pt": best,
    }
    write_json_atomic(args.out / "sweep.json", summary)
    text = [
        f"# Compression sweep of `{args.run}` ({args.protocol} protocol)",
        "",
        f"Judged top-1 (%) on {where}; the unpruned classifier: {100 * ref_top1:.2f}.",
        "",
        "Every point as measured:",
        "",
        md,
        "",
        f"Per ratio and recipe, judged top-1 over seeds and the paired difference to `{args.reference}` "
        "in points (mean [95% Student-t interval over seeds]; **bold**: it excludes zero):",
        "",
        *judged_table(groups, args.reference),
        "",
    ]
    if args.reference not in {m for g in groups for m in g["judged"]}:
        text += [f"The reference recipe `{args.reference}` was not run: no differences.", ""]
    if lines[0].get("p50_fp32_ms") is not None:
        recipes = list(dict.fromkeys(m for g in groups for m in g["top1"]))
        text += [
            "Per ratio: latency as the median over the points' measurements, speed-ups against "
            f"the unpruned median ({lines[0]['p50_fp32_ms']:.3f} ms FP32), top-1 on the test split "
            "(ONNX) as the mean over seeds:",
            "",
            "| ratio | parameters | MACs | p50 FP32 ms | p50 INT8 ms | speed-up FP32 | speed-up INT8 "
            "| " + " | ".join(f"top-1 {m} FP32 / INT8" for m in recipes) + " |",
            "|" + "---|" * (7 + len(recipes)),
        ]
        for g in groups:
            cells = [
                f"{100 * g['top1'][m]['fp32']:.2f} / {100 * g['top1'][m]['int8']:.2f} (n={g['top1'][m]['seeds']})"
                if m in g["top1"]
                else ""
                for m in recipes
            ]
            text.append(
                f"| {g['ratio']:g} | {g['params']:,} | {g['macs'] / 1e6:.1f} M | {g['p50_fp32_ms']:.3f} "
                f"| {g['p50_int8_ms']:.3f} | {g['speedup_fp32']:.2f}x | {g['speedup_int8']:.2f}x | "
                + " | ".join(cells)
                + " |"
            )
        text.append("")
        if args.jobs > 1:
            text += [
                f"The latencies were measured with {args.jobs} points running side by side: "
                "each beside another point's work.",
                "",
            ]
    if best:
        lead = (
            f"Fastest ratio within {100 * MAX_LOSS:g} point of the unpruned judged top-1 "
            f"({100 * ref_top1:.2f}): {best['ratio']:g} recovered by `{best['recipe']}`, "
        )
        if best["speedup_fp32"] is not None:
            lead += (
                f"{best['speedup_fp32']:.2f}x faster in FP32 and {best['speedup_int8']:.2f}x in "
                f"INT8 (judged top-1 {100 * (best['top1'] - ref_top1):+.2f}"
            )
            if "top1_fp32" in best:
                base = lines[0]["top1_fp32"]
                lead += (
                    f"; test top-1 {100 * (best['top1_fp32'] - base):+.2f} FP32, "
                    f"{100 * (best['top1_int8'] - base):+.2f} INT8"
                )
            lead += ")."
        else:
            lead = (
                f"Fewest MACs within {100 * MAX_LOSS:g} point of the unpruned judged top-1 "
                f"({100 * ref_top1:.2f}): ratio {best['ratio']:g} recovered by "
                f"`{best['recipe']}`, {lines[0]['macs'] / best['macs']:.2f}x fewer MACs (judged "
                f"top-1 {100 * (best['top1'] - ref_top1):+.2f})."
            )
        text.append(lead)
    (args.out / "sweep.md").write_text("\n".join(text) + "\n")
    figure(lines, args.out / "sweep.png")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    args = parse_args(argv)
    missing = missing_data(args.protocol, args.full_root)
    if missing:
        print(missing)
        return 0
    train = find_stage(args.run, "train")
    if train is None:
        print(f"{args.run} has no finished train stage; run the pipeline first", file=sys.stderr)
        return 4
    from pipeline.data import build_data

    run_cfg = load_config(args.run / "config.yaml")
    check_split(args, run_cfg)
    args.reference = parse_recipe(args.reference, run_cfg.train.method).name  # auto: the run's
    recipes = list(
        {r.name: r for r in (parse_recipe(s, run_cfg.train.method) for s in args.recipes)}.values()
    )
    # the data every point shares: the overrides less those only some recipes take (a plain
    # recipe's, which refuses slim.teacher_* and slim.scratch_* without its teacher or scratch)
    common = Recipe("ce").overrides(args.overrides)
    cfg = load_config(
        args.run / "config.yaml", [*protocol_overrides(args.protocol, args.full_root), *common]
    )
    load_data = functools.cache(lambda: build_data(cfg.data, cfg.model))
    try:
        if args.point:  # one point, here (a child of --jobs)
            ratio, spec, seed = float(args.point[0]), args.point[1], int(args.point[2])
            run_point(args, train, load_data, ratio, parse_recipe(spec, run_cfg.train.method), seed)
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        keys = [(ratio, r, seed) for ratio in args.ratios for r in recipes for seed in args.seeds]

        def here(k):
            row = run_point(args, train, load_data, *k)
            print(f"done {point_name(k[0], k[1].name, k[2])}", flush=True)
            return row

        results = run_resumable(
            keys,
            args.jobs,
            here=here,
            child=lambda k: point_in_child(args, *k),
            finished=lambda k: finished_point(args, *k),
        )
        rows = list(results.values())
        ref_top1 = unpruned_judged(args, train, rows, load_data)
    except PipelineError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(write_report(args, rows, ref_top1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
