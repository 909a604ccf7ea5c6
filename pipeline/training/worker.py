"""Entry point of each launched training process: `python -m pipeline.training.worker`.

Started by `torch.distributed.run` (see launch.py); runs the training stage body only, in the
work folder the parent runner prepared, and exits with the CLI's codes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from pipeline.artifacts import write_json_atomic
from pipeline.config import load_config
from pipeline.data import build_data
from pipeline.errors import PipelineError
from pipeline.training import ranks
from pipeline.training.checkpoint import ERROR_FILE
from pipeline.training.fit import fit
from pipeline.training.teacher import TeacherSource

log = logging.getLogger("pipeline.train")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.training.worker")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--start-model", type=Path, default=None, help="a saved model to fine-tune")
    p.add_argument(
        "--fresh-start", action="store_true", help="the start model's architecture, fresh weights"
    )
    p.add_argument("--teacher-model", type=Path, default=None, help="a frozen teacher's model")
    p.add_argument("--teacher-temperature", type=float, default=4.0)
    p.add_argument("--teacher-weight", type=float, default=1.0)
    args = p.parse_args(argv)
    teacher = (
        TeacherSource(args.teacher_model, args.teacher_temperature, args.teacher_weight)
        if args.teacher_model is not None
        else None
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        fit(
            cfg,
            build_data(cfg.data, cfg.model),
            args.work,
            args.start_model,
            teacher=teacher,
            fresh=args.fresh_start,
        )
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        if int(os.environ.get("RANK", "0")) == 0:  # the launching parent re-raises it
            with contextlib.suppress(OSError):
                write_json_atomic(
                    args.work / ERROR_FILE, {"class": type(exc).__name__, "message": str(exc)}
                )
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        ranks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
