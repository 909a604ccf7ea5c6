"""Side-by-side method benchmark: `ce`, `frskd`, `ama` and ablations of `ama`, same data, schedule and seeds.

Every variant is trained through the pipeline's own train stage (so results are cached per
variant and seed: an interrupted benchmark resumes where it stopped), then judged on the test
split at the last epoch. Prints and writes a table of mean and std test top-1, the gain over
`ce` (paired by seed), and epoch time with its ratio to `ce`.

    python benchmarks/methods.py --data imagefolder --root ../shared/datasets/cifar10-small \
        --model resnet18 --width 0.125 --epochs 15 --seeds 0 1 2 \
        --ablate train.distill.mask=hard train.distill.ratio=confidence
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import run_pipeline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="imagefolder", help="data.name")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "datasets" / "cifar10-small"))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["ce", "frskd", "ama"])
    p.add_argument(
        "--ablate",
        nargs="*",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="extra `ama` variants, each a comma-separated set of overrides",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="override for every run"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "methods")
    return p.parse_args(argv)


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    out = {m: [f"train.method={m}"] for m in args.methods}
    for spec in args.ablate:
        sets = [s.strip() for s in spec.split(",") if s.strip()]
        tag = "ama[" + ",".join(s.split(".")[-1] for s in sets) + "]"
        out[tag] = ["train.method=ama", *sets]
    return out


def base_overrides(args: argparse.Namespace) -> list[str]:
    o = [
        f"data.name={args.data}",
        f"model.name={args.model}",
        f"model.width={args.width}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.schedule=cosine",
        f"run_dir={args.out / 'runs'}",
    ]
    if args.data != "digits":
        o.append(f"data.root={args.root}")
    return o + args.overrides


def train_one(overrides: list[str], name: str) -> dict:
    cfg = load_config(None, [*overrides, f"name={name}"])
    m = run_pipeline(cfg, only="train")["train"].metrics
    keys = (
        "test_top1",
        "test_aux_top1",
        "val_top1",
        "train_top1",
        "epoch_s",
        "images_per_s",
        "train_s",
    )
    return {k: m.get(k) for k in keys}


def summarise(results: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict]:
    ce = results.get("ce", {})
    ce_epoch = statistics.mean(r["epoch_s"] for r in ce.values()) if ce else None
    rows = []
    for tag, per_seed in results.items():
        accs = [per_seed[s]["test_top1"] for s in seeds if s in per_seed]
        epoch = statistics.mean(per_seed[s]["epoch_s"] for s in seeds if s in per_seed)
        gains = [
            per_seed[s]["test_top1"] - ce[s]["test_top1"]
            for s in seeds
            if s in per_seed and s in ce
        ]
        rows.append(
            {
                "variant": tag,
                "seeds": len(accs),
                "top1_mean": statistics.mean(accs),
                "top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "gain_vs_ce_mean": statistics.mean(gains) if gains else None,
                "gain_vs_ce_std": statistics.stdev(gains) if len(gains) > 1 else None,
                "epoch_s": epoch,
                "epoch_ratio_vs_ce": epoch / ce_epoch if ce_epoch else None,
                "per_seed_top1": accs,
            }
        )
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| variant | seeds | test top-1 (mean ± std) | gain vs ce (paired, mean ± std) | epoch s | ratio vs ce |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = (
            "—"
            if r["gain_vs_ce_mean"] is None or r["variant"] == "ce"
            else f"{100 * r['gain_vs_ce_mean']:+.2f} ± {100 * (r['gain_vs_ce_std'] or 0):.2f}"
        )
        ratio = "—" if r["epoch_ratio_vs_ce"] is None else f"{r['epoch_ratio_vs_ce']:.2f}x"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {100 * r['top1_mean']:.2f} ± {100 * r['top1_std']:.2f} | "
            f"{gain} | {r['epoch_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per checkpoint file
    args.out.mkdir(parents=True, exist_ok=True)
    base = base_overrides(args)
    results: dict[str, dict[int, dict]] = {}
    # Seed-major order: an interrupted benchmark still has every variant at the first seeds.
    for seed in args.seeds:
        for tag, sets in variants(args).items():
            safe = tag.replace("[", "_").replace("]", "").replace(",", "_").replace("=", "-")
            results.setdefault(tag, {})[seed] = train_one(
                [*base, *sets, f"train.seed={seed}"], f"{safe}-s{seed}"
            )
    rows = summarise(results, args.seeds)
    train_min = (
        sum(r.get("train_s") or 0.0 for per_seed in results.values() for r in per_seed.values())
        / 60
    )
    header = (
        f"# Method benchmark: {args.model} width {args.width}, data {args.data}, {args.epochs} epochs, "
        f"batch {args.batch}, seeds {args.seeds}\n\nLast-epoch test top-1 (%), paired gain over `ce` "
        f"by seed; epoch time in seconds. Training time of all runs: {train_min:.1f} min."
    )
    md = markdown(rows, header)
    (args.out / "table.md").write_text(md)
    (args.out / "table.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "runs": results},
            indent=2,
        )
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
