"""The first optimizer steps of one method, step by step: does the classifier survive its start?

Trains a CIFAR ResNet-18 of the given width from its initial weights on the train split of an
ImageFolder set (cifar10-small by default) for `--steps` SGD steps (momentum 0.9, weight decay
5e-4, the method's own loss in a 15-epoch schedule, so `ama`'s mixed term is on from the first
step; an epoch is as many steps as batches fit in the train split, so `--set kd_warmup_epochs=4`
ramps the KL term's weight over the first four epochs' steps), and writes one JSON line per
step: its epoch, loss terms, both heads' batch top-1, the largest |logit|, the RMS of every
stage's features, the gradient norm and the learning rate.
The first line holds the classifier head's sharpness at the initial weights on the first batch
(`pipeline/training/stability.py`) against momentum SGD's stability limit.

Batches are drawn with replacement from the whole train split held in memory (normalised, random
horizontal flip), from a generator seeded with `--seed`: the same command gives the same steps.

    python benchmarks/early_steps.py --method ama --width 1 --batch 128 --lr 0.1 --steps 40 \
        --out benchmarks/results/early-steps-r18w1-c10s/ama-lr0.1.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.presets import PRESETS  # noqa: E402
from pipeline.models.spec import ModelSpec  # noqa: E402
from pipeline.training.model import build_training_model  # noqa: E402
from pipeline.training.stability import head_sharpness, stability_limit  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cifar10-small"
MOMENTUM, WEIGHT_DECAY, SCHEDULE_EPOCHS = 0.9, 5e-4, 15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="ImageFolder set with train/")
    p.add_argument("--method", default="ama")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (not scaled)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up over this many steps")
    p.add_argument("--clip", type=float, default=None, help="max gradient norm")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the method (train.distill), e.g. --set alpha=0 (value read as JSON)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON lines file (default: stdout)")
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="train nothing: print the Markdown tables of the runs (*.jsonl) in FOLDER, "
        "whole runs and per epoch",
    )
    return p.parse_args(argv)


def summarise(path: Path, last: int = 10) -> dict:
    """One run's file in a row: its start against the limit, how far the logits went, how low
    the last stage's features fell, and both heads' batch top-1 over the last steps."""
    head, *steps = [json.loads(line) for line in path.read_text().splitlines()]
    tail = steps[-last:]
    aux = [s["aux_acc"] for s in tail if s["aux_acc"] is not None]
    return {
        "run": path.stem,
        "steps": len(steps),
        "lr_x_sharpness": head["peak_lr_x_sharpness"],
        "limit": head["stability_limit"],
        "logit_max": max(s["logit_max"] for s in steps),
        "last_stage_rms_min": min(s["feat_rms"][-1] for s in steps),
        "last_stage_rms_end": steps[-1]["feat_rms"][-1],
        "acc_end": sum(s["acc"] for s in tail) / len(tail),
        "aux_acc_end": sum(aux) / len(aux) if aux else None,
    }


def table(folder: Path) -> str:
    rows = [summarise(p) for p in sorted(folder.glob("*.jsonl"))]
    if not rows:
        raise SystemExit(f"no *.jsonl runs in {folder}")
    lines = [
        "| run | steps | peak lr x head sharpness (limit 3.8) | max abs logit | last-stage RMS: "
        "lowest, at the end | classifier top-1, last 10 steps | self-teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        aux = "" if r["aux_acc_end"] is None else f"{100 * r['aux_acc_end']:.1f}%"
        lines.append(
            f"| {r['run']} | {r['steps']} | {r['lr_x_sharpness']:.2f} | {r['logit_max']:.0f} | "
            f"{r['last_stage_rms_min']:.3f}, {r['last_stage_rms_end']:.3f} | "
            f"{100 * r['acc_end']:.1f}% | {aux} |"
        )
    return "\n".join(lines)


def epoch_table(folder: Path) -> str:
    """Per epoch of each run: the classifier's batch top-1 averaged over the epoch's steps and
    the lowest RMS of its last stage (files written before steps carried an epoch are left out)."""
    lines = [
        "| run | epoch | steps | classifier top-1, mean | last-stage RMS, lowest |",
        "|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.jsonl")):
        steps = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        for e in sorted({s["epoch"] for s in steps if "epoch" in s}):
            rows = [s for s in steps if s.get("epoch") == e]
            acc = sum(s["acc"] for s in rows) / len(rows)
            rms = min(s["feat_rms"][-1] for s in rows)
            lines.append(f"| {path.stem} | {e + 1} | {len(rows)} | {100 * acc:.1f}% | {rms:.3f} |")
    return "\n".join(lines)


def load_train(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All train images of an ImageFolder set, CIFAR-normalised, as one float tensor."""
    train = root / "train"
    if not train.is_dir():
        raise SystemExit(f"no train/ folder under {root}: pass --root an ImageFolder data set")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    xs, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((train / c).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(i)
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    preset = PRESETS["cifar10"]
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(ys)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.table is not None:
        print(table(a.table) + "\n\n" + epoch_table(a.table))
        return 0
    torch.manual_seed(a.seed)
    images, labels = load_train(a.root)
    options = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    n_classes = int(labels.max()) + 1
    spec = ModelSpec(
        arch="resnet18",
        stem="cifar",
        width=a.width,
        num_classes=n_classes,
        method=a.method,
        classes=[str(i) for i in range(n_classes)],
        preset=PRESETS["cifar10"].to_dict(),
    )
    model, method = build_training_model(spec, options, epochs=SCHEDULE_EPOCHS)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model.train()
    gen = torch.Generator().manual_seed(a.seed)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
    out_file = a.out.open("w") if a.out else sys.stdout
    steps_per_epoch = max(1, math.ceil(len(images) / a.batch))
    t0 = time.time()
    try:
        for step in range(a.steps):
            epoch = step // steps_per_epoch
            lr = a.lr * min(1.0, (step + 1) / a.warmup) if a.warmup else a.lr
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(images), (a.batch,), generator=gen)
            x, y = images[idx], labels[idx]
            flip = torch.rand(a.batch, generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = x.contiguous(memory_format=torch.channels_last)
            if step == 0:
                s = head_sharpness(model, method, x, y)
                limit = stability_limit(MOMENTUM, False)
                head = {
                    "head_sharpness": round(s, 2),
                    "peak_lr_x_sharpness": round(a.lr * s, 2),
                    "stability_limit": limit,
                    "args": {k: str(v) for k, v in vars(a).items()},
                }
                print(json.dumps(head), file=out_file, flush=True)
            out = model(x)
            loss = method.loss(out, y, epoch=epoch)
            opt.zero_grad()
            loss.total.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip or float("inf"))
            opt.step()
            row = {
                "step": step,
                "epoch": epoch,
                "lr": lr,
                "t": round(time.time() - t0),
                "acc": round((out.logits.argmax(1) == y).float().mean().item(), 3),
                "aux_acc": None
                if out.aux_logits is None
                else round((out.aux_logits.argmax(1) == y).float().mean().item(), 3),
                "grad_norm": round(norm.item(), 2),
                "logit_max": round(out.logits.detach().abs().max().item(), 1),
                "feat_rms": [
                    round(f.detach().float().pow(2).mean().sqrt().item(), 3) for f in out.features
                ],
                **{k: round(v.item(), 3) for k, v in loss.parts.items()},
            }
            print(json.dumps(row), file=out_file, flush=True)
    finally:
        if a.out:
            out_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
