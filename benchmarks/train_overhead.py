"""The pipeline's training loop against a minimal plain-PyTorch loop: same model, batch and data.

    PYTHONPATH=. python benchmarks/train_overhead.py --width 0.25 --rounds 5

Both loops run in this one process, interleaved round by round (the CPU may be shared and
noisy), each round one epoch of the same data set; prints images/s per round, the medians and
the ratio pipeline / plain (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def plain_epoch(model, optimizer, loader) -> float:
    model.train()
    seen, t0 = 0, time.perf_counter()
    for images, targets in loader:
        loss = F.cross_entropy(model(images).logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += targets.size(0)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    from pipeline.config import load_config
    from pipeline.data import build_data, make_loader
    from pipeline.training import accel
    from pipeline.training.checkpoint import Checkpointer, TrainerState
    from pipeline.training.fit import make_optimizer
    from pipeline.training.loop import StopFlag, Trainer, train_one_epoch
    from pipeline.training.model import build_training_model, model_spec

    def build_model(cfg, bundle):
        return build_training_model(model_spec(cfg, bundle), cfg.train.distill, cfg.train.epochs)

    p = argparse.ArgumentParser()
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = load_config(
        None, [f"model.width={args.width}", f"train.batch_size={args.batch}", *args.overrides]
    )
    bundle = build_data(cfg.data)
    torch.manual_seed(0)
    plain_model, _ = build_model(cfg, bundle)
    plain_opt = make_optimizer(plain_model, cfg.train)
    plain_loader = make_loader(bundle.train, args.batch, shuffle=True, workers=cfg.data.num_workers)

    work = Path(tempfile.mkdtemp())
    acc = accel.make_accelerator(cfg.train, work)
    torch.manual_seed(0)
    model, method = build_model(cfg, bundle)
    opt = make_optimizer(model, cfg.train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loader = accel.loaders(
        bundle, cfg.train, accel.batch_plan(cfg.train, 1), cfg.data.num_workers, False
    )[0]
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    bar = type("NoBar", (), {"disable": True, "update": lambda self, n: None})()
    tr = Trainer(
        model,
        method,
        opt,
        sched,
        acc,
        cfg.train,
        Checkpointer(acc, work, 1),
        TrainerState(),
        StopFlag(),
        bar,
    )
    tr.cfg = cfg.train.model_copy(update={"checkpoint_every_steps": None})

    plain, ours = [], []
    plain_epoch(plain_model, plain_opt, plain_loader)  # warm-up both
    train_one_epoch(tr, loader, 0)
    tr.state = TrainerState()
    for r in range(args.rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            if which == 0:
                plain.append(plain_epoch(plain_model, plain_opt, plain_loader))
            else:
                tr.reset_sums()
                tr.state = TrainerState()  # a full epoch each round
                ours.append(train_one_epoch(tr, loader, r + 1)["images_per_s"])
        print(f"round {r + 1}: plain {plain[-1]:.0f} img/s, pipeline {ours[-1]:.0f} img/s")
    mp, mo = statistics.median(plain), statistics.median(ours)
    print(
        f"median: plain {mp:.0f} img/s, pipeline {mo:.0f} img/s, ratio {mo / mp:.3f} ({(1 - mo / mp) * 100:+.1f}% overhead)"
    )


if __name__ == "__main__":
    main()
