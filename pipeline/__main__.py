"""Command line: `python -m pipeline run|check CONFIG`. The only place that exits.

Exit codes: 0 ok, 2 bad configuration or arguments, 3 a validation gate failed, 4 bad data,
5 a stage failed, 6 export parity failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from pipeline.config import STAGES
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline YAML file, e.g. pipeline.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config value (YAML syntax), repeatable: --set train.epochs=3",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Train (self-distillation), prune, export and validate an image classifier.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline's stages, skipping those already done")
    _add_config_args(run)
    run.add_argument("--only", choices=STAGES, help="run only this stage (its inputs must exist)")
    run.add_argument(
        "--from", dest="from_stage", choices=STAGES, help="re-run this stage and all after it"
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="re-run the selected stages from scratch, even if up to date",
    )

    check = sub.add_parser(
        "check", help="validate a config and print it with every default filled in"
    )
    _add_config_args(check)

    data = sub.add_parser("data", help="inspect the configured data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_check = data_sub.add_parser(
        "check", help="class and split counts, image sizes, loader vs training-step images/s"
    )
    _add_config_args(data_check)
    data_check.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    for noisy in ("torch", "onnxscript", "onnx_ir", "accelerate", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    print(f"# {args.config}: valid. Resolved configuration (defaults filled in):")
    print(dump_config(cfg), end="")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    import json

    from pipeline.config import load_config
    from pipeline.data.check import format_data_check, run_data_check

    cfg = load_config(args.config, args.overrides)
    result = run_data_check(cfg)
    print(json.dumps(result, indent=2) if args.json else format_data_check(result))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.training.accel import is_secondary_rank

    cfg = load_config(args.config, args.overrides)
    # Under a launcher every rank runs this; only rank 0 owns the run folder's log.
    _setup_logging(args.verbose, None if is_secondary_rank() else cfg.run_path / "pipeline.log")
    manifests = run_pipeline(cfg, only=args.only, from_stage=args.from_stage, force=args.force)
    report = cfg.run_path / "report.md"
    if "validate" in manifests:
        arts = manifests["validate"].metrics["artefacts"]
        summary = ", ".join(
            f"{k} top-1 {v['top1']:.4f} p50 {v['latency_ms']['p50']:.2f} ms"
            for k, v in arts.items()
        )
        log.info("done: %s", summary)
    log.info("run folder: %s%s", cfg.run_path, f"; report: {report}" if report.exists() else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return {"run": _cmd_run, "check": _cmd_check, "data": _cmd_data}[args.command](args)
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        again = shlex.join(
            [Path(sys.executable).name, "-m", "pipeline", *(sys.argv[1:] if argv is None else argv)]
        )
        log.error(
            "interrupted; finished stages and the last training checkpoint are kept. Resume with the same command: %s",
            again,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
