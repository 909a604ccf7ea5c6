"""A user's workflow end to end, timed: their own model, their own training script, then the
pipeline.

1. A plain PyTorch script (below, `train_like_a_user`) trains a torchvision network on an
   ImageFolder (CIFAR-10 images by default) and saves it as people do:
   `{"epoch": ..., "state_dict": model.state_dict()}` with DataParallel's `module.` prefixes.
   It evaluates itself on the test folder with its own loop.
2. `train.epochs: 0`: the pipeline deploys the checkpoint as loaded; the report's top-1 must
   equal the script's own evaluation.
3. A compressed version: slim at a channel ratio, recovered with `ama` (its self-teacher warmed
   up on the frozen classifier first) and, for comparison, with `ce`.

    python benchmarks/user_workflow.py [--data ../shared/datasets/cifar10-small] [--epochs 3]

Skips cleanly where the data set is absent. Each step's wall time is printed and written to
`--out/workflow.json`; finished pipeline runs are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import run_pipeline  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/datasets/cifar10-small")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "user-workflow")
    p.add_argument("--arch", default="resnet18", help="a torchvision classification model")
    p.add_argument("--epochs", type=int, default=3, help="the user's own training")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--recovery-epochs", type=int, default=2)
    return p.parse_args(argv)


def train_like_a_user(args, ckpt: Path) -> dict:
    """What a user's own script does: ImageFolder, SGD, cosine, evaluate, save (DataParallel
    names, nested, beside the epoch)."""
    torch.manual_seed(0)
    norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            norm,
        ]
    )
    test_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(32, antialias=True),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            norm,
        ]
    )
    train = torchvision.datasets.ImageFolder(args.data / "train", train_tf)
    test = torchvision.datasets.ImageFolder(args.data / "test", test_tf)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=2)
    model = torchvision.models.get_model(args.arch, num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * len(loader))
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        print(f"  user script: epoch {epoch + 1}/{args.epochs} done", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=256):
            correct += int((model(x).argmax(1) == y).sum())
    wrapped = nn.DataParallel(model)  # what a multi-GPU script saves: `module.` names
    torch.save({"epoch": args.epochs, "state_dict": wrapped.state_dict()}, ckpt)
    return {"test_top1": correct / len(test), "test_images": len(test)}


def pipeline_run(args, name: str, ckpt: Path, sets: list[str]) -> tuple[dict, float]:
    cfg = load_config(
        None,
        [
            f"run_dir={args.out}",
            f"name={name}",
            "data.name=imagefolder",
            f"data.root={args.data}",
            "data.val_fraction=0.1",
            "data.input_size=32",
            "data.resize=32",
            "model.source=torchvision",
            f"model.name={args.arch}",
            f"model.weights={ckpt}",
            "train.batch_size=128",
            "train.lr=0.05",
            "validate.gates.min_top1=0.0",
            *sets,
        ],
    )
    t0 = time.perf_counter()
    m = run_pipeline(cfg)
    return m, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"skipped: no data set at {args.data} (an ImageFolder with train/ and test/)")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / f"{args.arch}.pth"
    record_path = args.out / "workflow.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if "user" not in record or not ckpt.is_file():
        t0 = time.perf_counter()
        record["user"] = train_like_a_user(args, ckpt)
        record["user"]["wall_s"] = time.perf_counter() - t0
        record_path.write_text(json.dumps(record, indent=2))
    print(f"user script: test top-1 {record['user']['test_top1']:.4f}", flush=True)

    m, wall = pipeline_run(args, "as-loaded", ckpt, ["train.epochs=0", "slim.ratio=0"])
    record["as_loaded"] = {
        "wall_s": wall,
        "train_test_top1": m["train"].metrics["test_top1"],
        "validate_top1": {k: v["top1"] for k, v in m["validate"].metrics["artefacts"].items()},
    }
    print(f"epochs 0: report top-1 {record['as_loaded']['train_test_top1']:.4f}", flush=True)
    for method in ("ama", "ce"):
        m, wall = pipeline_run(
            args,
            f"slim-{method}",
            ckpt,
            [
                "train.epochs=0",
                f"slim.ratio={args.ratio}",
                f"slim.epochs={args.recovery_epochs}",
                f"slim.method={method}",
            ],
        )
        c = m["slim"].metrics["compression"]
        record[f"slim_{method}"] = {
            "wall_s": wall,
            "macs": [c["unpruned"]["macs"], c["slim"]["macs"]],
            "params": [c["unpruned"]["params"], c["slim"]["params"]],
            "top1_fp32": [c["unpruned"]["fp32"]["top1"], c["slim"]["fp32"]["top1"]],
            "top1_int8": [c["unpruned"]["int8"]["top1"], c["slim"]["int8"]["top1"]],
            "p50_ms_fp32": [
                c["unpruned"]["fp32"]["latency_ms"]["p50"],
                c["slim"]["fp32"]["latency_ms"]["p50"],
            ],
            "teacher_warmup": m["slim"].metrics["recovery"].get("teacher_warmup"),
        }
        print(f"slim {method}: {json.dumps(record[f'slim_{method}'])}", flush=True)
    record_path.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
