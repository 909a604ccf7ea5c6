"""Side-by-side method benchmark: `ce`, `ls`, `cskd`, `pskd`, `frskd`, `ama` and ablations of `ama`, same data, schedule and seeds.

Every variant is trained through the pipeline's own train stage, so results are cached per
variant and seed: a finished (variant, seed) run is reused as it is and an interrupted one
resumes from its last checkpoint when the same command runs again. Each run is judged at the
last epoch: on the test split (`--protocol test`), or on the 45,000 CIFAR-10 train images it
did not train on (`--protocol precise`), or on the 5,000 of all 50,000 it did not train on
(`--protocol full`, the GPU scale). Prints and writes (JSON and Markdown) a table of
per-seed values, mean and std, the gain over each baseline paired by seed with its 95% Student-t
interval over seeds (marked where it excludes zero), the last epoch's train top-1 (does the
budget fit the training set?), and epoch time and images/s with their ratio to `ce`.

    python benchmarks/methods.py --data imagefolder --root ../shared/datasets/cifar10-small \
        --model resnet18 --width 0.125 --epochs 15 --seeds 0 1 2 \
        --ablate train.distill.mask=hard train.distill.ratio=confidence \
                 train.method=frskd,train.distill.label_smoothing=0.1
    python benchmarks/methods.py --protocol precise --width 0.25 --epochs 40 --seeds 0 1 2 --jobs 2
    python benchmarks/methods.py --protocol full --width 1 --epochs 30 --seeds 0 --methods ce ls ama \
        --batch 256 --set train.mixed_precision=bf16 --set train.channels_last=true
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.protocols import (  # noqa: E402
    FULL_ROOT,
    METRIC,
    gain_cell,
    judged_phrase,
    missing_data,
    paired_gain,
    protocol_overrides,
    python_cmd,
    run_child,
    run_resumable,
)
from pipeline import stages  # noqa: E402
from pipeline.artifacts import read_jsonl  # noqa: E402
from pipeline.config import load_config  # noqa: E402

log = logging.getLogger("bench.methods")

METHODS = ["ce", "ls", "cskd", "pskd", "byot", "frskd", "ama"]
BASELINES = ["ce", "ls", "frskd"]
# A budget "fits" when the last epochs reach this train top-1 (the literature's schedules do).
FIT_LEVEL = 0.95
KEPT = (
    "test_top1",
    "test_aux_top1",
    "val_top1",
    "val_aux_top1",
    "train_top1",
    "epoch_s",
    "images_per_s",
    "train_s",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--protocol",
        choices=sorted(METRIC),
        default="test",
        help="test: judge on the data set's test split; precise: train on 500 images per "
        "class of --full-root and judge on the 45,000 train images the run did not train on; "
        "full: train on 90%% of --full-root's train images and judge on the other 10%%",
    )
    p.add_argument("--data", default="imagefolder", help="data.name (protocol test)")
    p.add_argument(
        "--root",
        default=str(REPO.parent / "shared" / "datasets" / "cifar10-small"),
        help="data.root (protocol test)",
    )
    p.add_argument(
        "--full-root", type=Path, default=FULL_ROOT, help="data.root (protocols precise, full)"
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument(
        "--baselines",
        nargs="+",
        default=BASELINES,
        help="paired gains are reported against each of these that was run",
    )
    p.add_argument(
        "--ablate",
        nargs="*",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="extra variants, each a comma-separated set of overrides: of `ama`, or of the "
        "method a `train.method=NAME` among them names (frskd[label_smoothing=0.1])",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override for every run; train.distill holds the options of each run's own method, "
        "so a train.distill key belongs in --ablate unless every method takes it",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training processes side by side, each single-threaded; 1 trains in this process "
        "with torch's default threads",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: tabulate the runs that have finished (an interrupted benchmark's "
        "table so far); unfinished ones are listed and left out",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        metavar="TABLE_JSON",
        help="table.json files of earlier runs of this benchmark with the same settings (another "
        "machine, an earlier checkout): their (variant, seed) results fill the table where no "
        "finished run is under --out, and are not trained again",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results/methods or methods-precise)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.out is None:
        name = {"precise": "methods-precise", "full": "methods-full"}.get(args.protocol, "methods")
        args.out = REPO / "benchmarks" / "results" / name
    return args


def short_setting(setting: str) -> str:
    """`train.distill.label_smoothing=0.1` -> `label_smoothing=0.1` (the value keeps its dots)."""
    key, sep, value = setting.partition("=")
    return key.strip().rsplit(".", 1)[-1] + sep + value.strip()


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    out = {m: [f"train.method={m}"] for m in args.methods}
    for spec in args.ablate:
        sets = [s.strip() for s in spec.split(",") if s.strip()]
        # A variant of `ama` unless the spec names another method (train.method=frskd,...).
        method = "ama"
        for s in [s for s in sets if s.partition("=")[0].strip() == "train.method"]:
            method = s.partition("=")[2].strip()
            sets.remove(s)
        if not sets:
            raise SystemExit(
                f"--ablate {spec!r}: no setting besides the method; name the method in "
                "--methods instead, or add the overrides that make this variant"
            )
        # key=value with the key's last component: ama[mask=hard,label_smoothing=0.1]
        tag = f"{method}[" + ",".join(short_setting(s) for s in sets) + "]"
        out[tag] = [f"train.method={method}", *sets]
    return out


def base_overrides(args: argparse.Namespace) -> list[str]:
    o = [
        f"model.name={args.model}",
        f"model.width={args.width}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.schedule=cosine",
        f"run_dir={args.out / 'runs'}",
    ]
    if args.protocol in ("precise", "full"):
        o += protocol_overrides(args.protocol, args.full_root)
    else:
        o.append(f"data.name={args.data}")
        if args.data != "digits":
            o.append(f"data.root={args.root}")
    return o + args.overrides


def fit_epoch(metrics_jsonl: Path, level: float = FIT_LEVEL) -> int | None:
    """The first epoch whose train top-1 reached `level` (None: never, or no history)."""
    if not metrics_jsonl.is_file():
        return None
    rows = read_jsonl(metrics_jsonl)
    return next((r["epoch"] for r in rows if r.get("train_top1", 0.0) >= level), None)


def _kept(metrics: dict, data: dict, folder: Path) -> dict:
    """What the table needs of one finished run; `folder` is its train stage's folder."""
    sizes = data.get("sizes", {})
    return {
        **{k: metrics.get(k) for k in KEPT},
        "fit_epoch": fit_epoch(folder / "metrics.jsonl"),
        "n_train": sizes.get("train"),
        "n_val": sizes.get("val"),
        "n_test": sizes.get("test"),
    }


def train_one(overrides: list[str], name: str) -> dict:
    """In this process (a finished run with the same settings is reused, not retrained)."""
    from pipeline.runner import run_pipeline

    cfg = load_config(None, [*overrides, f"name={name}"])
    m = run_pipeline(cfg, only="train")["train"]
    return _kept(m.metrics, m.data, stages.folder(cfg.run_path, "train"))


def train_in_child(overrides: list[str], name: str, empty_config: Path) -> dict:
    """In a single-threaded `python -m pipeline run --only train` (the same caching and resume)."""
    sets = sum((["--set", o] for o in [*overrides, f"name={name}"]), [])
    run_child(python_cmd("-m", "pipeline", "run", empty_config, "--only", "train", *sets), name)
    done = finished_run(overrides, name)
    if done is None:
        raise RuntimeError(f"run {name} exited 0 but its train stage left no manifest")
    return done


def finished_run(overrides: list[str], name: str) -> dict | None:
    """The kept metrics of a run whose train stage has finished, else None."""
    cfg = load_config(None, [*overrides, f"name={name}"])
    folder = stages.folder(cfg.run_path, "train")
    if not (folder / "manifest.json").is_file():
        return None
    m = json.loads((folder / "manifest.json").read_text())
    return _kept(m["metrics"], m.get("data", {}), folder)


def run_name(tag: str, seed: int) -> str:
    safe = tag.replace("[", "_").replace("]", "").replace(",", "_").replace("=", "-")
    return f"{safe}-s{seed}"


# What must agree between an earlier table and this command for its runs to be comparable.
# Paths (the data root) may differ between machines; the data itself is named by the protocol.
SAME_SETTINGS = ("protocol", "model", "width", "epochs", "batch", "overrides")


def _setting(args: dict, key: str) -> object:
    """One setting as `table.json` stores it (strings) or as parsed here, made comparable."""
    value = args.get(key)
    try:
        if key == "width":
            return float(value)
        if key in ("epochs", "batch"):
            return int(value)
        if key == "overrides" and isinstance(value, str):
            return ast.literal_eval(value)
    except (TypeError, ValueError, SyntaxError):
        pass  # missing or unreadable: compared as it is, so it differs and is named
    return value


def load_merged(args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """(variant, seed) -> kept metrics from the `--merge` tables, for this command's variants
    and seeds; an earlier file wins over a later one. A table from other settings is refused."""
    mine = {k: str(v) for k, v in vars(args).items()}
    checked = (*SAME_SETTINGS, "data") if args.protocol == "test" else SAME_SETTINGS
    wanted = set(variants(args))
    merged: dict[tuple[str, int], dict] = {}
    for path in args.merge:
        try:
            table = json.loads(Path(path).read_text())
            theirs, runs = table["args"], table["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(
                f"--merge {path}: not a table.json written by this benchmark ({e}); pass the "
                "table.json of an earlier results folder"
            ) from None
        differ = [
            f"{k} {theirs.get(k)!r} there, {mine[k]!r} here"
            for k in checked
            if _setting(theirs, k) != _setting(mine, k)
        ]
        if differ:
            raise SystemExit(
                f"--merge {path}: its runs used other settings ({'; '.join(differ)}); merge only "
                "tables of the same benchmark settings"
            )
        for tag, per_seed in runs.items():
            for seed, kept in per_seed.items():
                key = (tag, int(seed))
                if tag in wanted and key[1] in args.seeds and key not in merged:
                    # a run merged twice keeps the table it first came from: where it ran
                    merged[key] = {"merged_from": str(path), **kept}
    return merged


def run_all(args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    base = base_overrides(args)
    # Seed-major order: an interrupted benchmark still has every variant at the first seeds.
    tasks = [
        (tag, seed, [*base, *sets, f"train.seed={seed}"])
        for seed in args.seeds
        for tag, sets in variants(args).items()
    ]
    results: dict[str, dict[int, dict]] = {tag: {} for tag in variants(args)}
    merged = load_merged(args)
    if merged:
        # A finished run under --out wins; the merged result stands in for one that is not here.
        kept = []
        for tag, seed, overrides in tasks:
            if (tag, seed) in merged and finished_run(overrides, run_name(tag, seed)) is None:
                results[tag][seed] = merged[(tag, seed)]
            else:
                kept.append((tag, seed, overrides))
        log.info("%d run(s) from --merge tables, %d here", len(tasks) - len(kept), len(kept))
        tasks = kept
    if args.no_train:
        for tag, seed, overrides in tasks:
            done = finished_run(overrides, run_name(tag, seed))
            if done is None:
                log.info("not finished, left out: %s", run_name(tag, seed))
            else:
                results[tag][seed] = done
        return {tag: per_seed for tag, per_seed in results.items() if per_seed}
    if not tasks:
        return results
    empty = args.out / "empty.yaml"
    if args.jobs > 1:
        empty.write_text("{}\n")
    # Every run goes through the pipeline, whose stage cache reuses a finished, up-to-date run
    # (the run folder is named by variant and seed, not by the settings).
    overrides = {(tag, seed): o for tag, seed, o in tasks}
    done = run_resumable(
        list(overrides),
        args.jobs,
        here=lambda k: train_one(overrides[k], run_name(*k)),
        child=lambda k: train_in_child(overrides[k], run_name(*k), empty),
    )
    for (tag, seed), kept in done.items():
        results[tag][seed] = kept
    return results


# statistics (the paired t-interval over seeds: protocols.py) ---------------------------------


def summarise(
    results: dict[str, dict[int, dict]],
    seeds: list[int],
    metric: str = "test_top1",
    baselines: list[str] = BASELINES,
) -> list[dict]:
    ce = results.get("ce", {})
    judged = {
        tag: {s: per_seed[s][metric] for s in seeds if s in per_seed}
        for tag, per_seed in results.items()
    }
    rows = []
    for tag, per_seed in results.items():
        accs = [judged[tag][s] for s in seeds if s in judged[tag]]
        ran = [per_seed[s] for s in seeds if s in per_seed]
        epoch = statistics.mean(r["epoch_s"] for r in ran)
        gains = {
            b: paired_gain(judged[tag], judged[b])
            for b in baselines
            if b in judged and b != tag and judged[b]
        }
        rows.append(
            {
                "variant": tag,
                "metric": metric,
                "seeds": len(accs),
                "per_seed": dict(zip([s for s in seeds if s in per_seed], accs, strict=True)),
                "mean": statistics.mean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "gains": gains,
                "train_top1": _mean_of(ran, "train_top1"),
                "fit_epochs": [r["fit_epoch"] for r in ran if "fit_epoch" in r],
                "aux_top1": _mean_of(
                    ran, "val_aux_top1" if metric == "val_top1" else "test_aux_top1"
                ),
                "images_per_s": _mean_of(ran, "images_per_s"),
                "epoch_s": epoch,
                "epoch_ratio_vs_ce": time_ratio(per_seed, ce),
            }
        )
    return rows


def time_ratio(per_seed: dict[int, dict], ce: dict[int, dict]) -> float | None:
    """Epoch time over `ce`'s, per seed against `ce`'s run of the same seed from the same place
    (both here, or both from the same merged table), then averaged: machines differ by more
    than the methods do, so times from different places are never divided."""
    ratios = [
        r["epoch_s"] / ce[s]["epoch_s"]
        for s, r in per_seed.items()
        if s in ce and ce[s].get("epoch_s") and r.get("merged_from") == ce[s].get("merged_from")
    ]
    return statistics.mean(ratios) if ratios else None


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def _epochs(values: list[int | None]) -> str:
    """The fit epochs over seeds as 'min-max' ('never' for a seed that did not get there)."""
    if not values:
        return "—"
    if any(v is None for v in values):
        reached = [v for v in values if v is not None]
        return f"never ({len(values) - len(reached)} of {len(values)})"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def markdown(rows: list[dict], header: str, baselines: list[str] = BASELINES) -> str:
    lines = [
        header,
        "",
        "| variant | seeds | per seed | mean ± std | self-teacher | train top-1 "
        f"| {FIT_LEVEL:.0%} train at epoch | epoch s | images/s | time vs ce |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{100 * v:.2f}" for v in r["per_seed"].values())
        ratio = "—" if r["epoch_ratio_vs_ce"] is None else f"{r['epoch_ratio_vs_ce']:.2f}x"
        ips = "—" if r.get("images_per_s") is None else f"{r['images_per_s']:,.0f}"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {per_seed} | {100 * r['mean']:.2f} ± "
            f"{100 * r['std']:.2f} | {_pct(r.get('aux_top1'))} | {_pct(r.get('train_top1'))} "
            f"| {_epochs(r.get('fit_epochs', []))} | {r['epoch_s']:.1f} | {ips} | {ratio} |"
        )
    shown = [b for b in baselines if any(b in r["gains"] for r in rows)]
    if shown:
        lines += [
            "",
            "Paired gain in points, mean over seeds [95% Student-t interval over seeds]; "
            "**bold**: the interval excludes zero.",
            "",
            "| variant | " + " | ".join(f"vs {b}" for b in shown) + " |",
            "|---|" + "---|" * len(shown),
        ]
        for r in rows:
            cells = [gain_cell(r["gains"].get(b)) for b in shown]
            lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per checkpoint file
    missing = missing_data(args.protocol, args.full_root)
    if missing:
        print(missing)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    if not results:
        print(f"no finished runs under {args.out / 'runs'} for these settings")
        return 1
    metric = METRIC[args.protocol]
    rows = summarise(results, args.seeds, metric, args.baselines)
    train_min = (
        sum(r.get("train_s") or 0.0 for per_seed in results.values() for r in per_seed.values())
        / 60
    )
    first = next(iter(next(iter(results.values())).values()))
    judged = "Last-epoch " + judged_phrase(
        args.protocol, first["n_train"], first["n_val"], first["n_test"], args.full_root.name
    )
    header = (
        f"# Method benchmark ({args.protocol} protocol): {args.model} width {args.width}, "
        f"{args.epochs} epochs, batch {args.batch}, seeds {args.seeds}\n\n{judged}; epoch time in "
        f"seconds{' (' + str(args.jobs) + ' single-threaded runs side by side)' if args.jobs > 1 else ''}. "
        f"Training time of all runs: {train_min:.1f} min."
    )
    merged = [r for per_seed in results.values() for r in per_seed.values() if "merged_from" in r]
    if merged:
        sources = sorted({r["merged_from"] for r in merged})
        header += (
            f" {len(merged)} of the runs come from earlier tables ({', '.join(sources)}); their "
            "epoch times are those of the machine and load they ran under, and time vs ce pairs "
            "each run with ce's run of the same seed from the same place."
        )
    md = markdown(rows, header, args.baselines)
    (args.out / "table.md").write_text(md)
    (args.out / "table.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "metric": metric,
                "rows": rows,
                "runs": results,
            },
            indent=2,
        )
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
