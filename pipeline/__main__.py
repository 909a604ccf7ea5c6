"""Command line: `python -m pipeline run|check|data CONFIG`, `report RUN`, `compare RUN...` and
`serve|triton|tensorrt MODEL`.

The only place that exits; each command parses, sets up logging and calls library code. Exit
codes come from the error tree (`pipeline.errors`): 0 ok, 1 internal error, 2 bad
configuration or arguments, 3 a validation gate failed, 4 bad data, 5 a stage failed, 6 export
parity failed, 7 no GPU or TensorRT for a GPU command, 8 an artefact cannot be trusted,
9 cannot write, 130 interrupted.

Each command imports the pipeline's libraries inside its function (`pipeline.config`, the
runner, training and the report load torch; the export builders load onnx), so `--help`,
`check`, `report`, `compare` and `serve` load only what they use, and `serve` no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import typing
from pathlib import Path

from pipeline.artifacts import storage_errors
from pipeline.errors import INTERRUPTED_EXIT_CODE, ConfigError, PipelineError
from pipeline.stages import NAMES as STAGES
from serving.artefacts import resolve_model, resolve_onnx
from serving.predictor import load_predictor, require_tensorrt
from serving.server import serve
from serving.settings import ServeSettings, load_settings

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
        description="Train (self-distillation), prune, export and validate an image classifier; serve it.",
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

    report = sub.add_parser(
        "report", help="rebuild report.html / .md / .json of a run from its manifests"
    )
    report.add_argument("run_dir", type=Path, help="a run folder, e.g. runs/digits-resnet18")

    compare = sub.add_parser(
        "compare", help="one table and accuracy-latency figure across finished runs"
    )
    compare.add_argument(
        "runs", type=Path, nargs="+", help="run folders; the first is the reference"
    )
    compare.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="folder for compare.md/.html/.json"
    )
    _add_serving_parsers(sub)
    _add_triton_and_tensorrt(sub)
    return parser


def _add_model_arg(
    p: argparse.ArgumentParser, default: str | None = "onnx", engines: bool = False
) -> None:
    files = "an .onnx file or a TensorRT .engine" if engines else "an .onnx file"
    p.add_argument("model", type=Path, help=f"a run folder, its export folder, or {files}")
    names = "onnx, onnx_int8, onnx_fp16" + (", tensorrt_fp32/fp16/int8" if engines else "")
    p.add_argument(
        "--artefact",
        default=default,
        help=f"which exported model of a run: {names} "
        + (f"(default {default})" if default else "(default: the one matching --precision)"),
    )


def _add_serving_parsers(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="HTTP inference server (ONNX Runtime, or a TensorRT engine on a GPU): v1 images, "
        "the v2 inference protocol, metrics",
    )
    _add_model_arg(serve, engines=True)
    serve.add_argument("--config", type=Path, default=None, help="YAML of server settings")
    for field, info in ServeSettings.model_fields.items():
        flag = "--" + field.replace("_", "-")
        if field == "providers":
            serve.add_argument(flag, nargs="+", default=None, help=info.description)
            continue
        serve.add_argument(
            flag,
            type=_flag_type(info.annotation),
            default=None,
            help=f"{info.description} (default {info.default})",
        )


def _flag_type(annotation) -> type:
    """int, float or str from a settings field's annotation (`int | None` -> int)."""
    args = typing.get_args(annotation) or (annotation,)
    return next((t for t in (int, float, str) if t in args), str)


def _add_triton_and_tensorrt(sub) -> None:
    triton = sub.add_parser("triton", help="write a Triton Inference Server model repository")
    _add_model_arg(triton, engines=True)
    triton.add_argument("--out", type=Path, required=True, help="model repository folder")
    triton.add_argument("--name", default="classifier", help="model name (its folder)")
    triton.add_argument("--version", type=int, default=1)
    triton.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="Triton max_batch_size (default 64; an engine's: its profile's max batch)",
    )
    triton.add_argument("--instances", type=int, default=1, help="model instances per device")
    triton.add_argument(
        "--kind", choices=["cpu", "gpu"], default="gpu", help="instance kind (engines: gpu only)"
    )
    triton.add_argument(
        "--tensorrt",
        choices=["fp16", "fp32"],
        default=None,
        help="let Triton's ONNX Runtime backend run the model through TensorRT",
    )
    triton.add_argument("--overwrite", action="store_true", help="replace an existing model")
    triton.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="put normalisation inside the served model: clients send uint8 RGB pixels "
        "(N, H, W, 3) at the input size and get logits and probabilities",
    )
    triton.add_argument(
        "--max-queue-delay-us", type=int, default=500, help="Triton's dynamic batching delay"
    )
    triton.add_argument("--no-warmup", action="store_true", help="skip the load-time warm-up")

    trt = sub.add_parser("tensorrt", help="build a TensorRT engine and benchmark it (CUDA GPU)")
    _add_model_arg(trt, default=None)
    trt.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    trt.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    trt.add_argument("--engine", type=Path, default=None, help="engine file to write")
    trt.add_argument("--iters", type=int, default=200)


TRACEBACKS = "pipeline.traceback"  # tracebacks: the run's log file always, the console with -v


class _HideTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != TRACEBACKS


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    if not verbose:
        console.addFilter(_HideTracebacks())
    root.addHandler(console)
    if log_file is not None:
        with storage_errors(log_file.parent, kept="nothing was started", what=log_file):
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
    from pipeline.config import load_config
    from pipeline.training.data_check import format_data_check, run_data_check

    cfg = load_config(args.config, args.overrides)
    result = run_data_check(cfg)
    print(json.dumps(result, indent=2) if args.json else format_data_check(result))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.training import ranks
    from pipeline.training.accel import is_secondary_rank

    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    ranks.adopt_scheduler_env(t.master_addr, t.master_port)  # under srun: SLURM's ranks
    if t.nodes > 1 and not ranks.launched():
        # This machine's share of a multi-node run: its ranks, under torch's launcher, run
        # this same command; the one that gets global rank 0 owns the run folder.
        return ranks.run_nodes(t, args.argv)
    # Under a launcher every rank runs this; only rank 0 owns the run folder's log.
    _setup_logging(args.verbose, None if is_secondary_rank() else cfg.run_path / "pipeline.log")
    manifests = run_pipeline(cfg, only=args.only, from_stage=args.from_stage, force=args.force)
    if is_secondary_rank():
        return 0  # rank 0 reports the run
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


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.report import write_report

    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{args.run_dir} is not a run folder ({config} is missing)")
    write_report(args.run_dir, load_config(config))
    print(args.run_dir / "report.md")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.report.compare import compare

    out = compare(args.runs, args.out)
    print(out / "compare.md")
    print(out / "compare.html")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ServeSettings.model_fields}
    settings = load_settings(args.config, overrides)
    model = resolve_model(args.model, args.artefact)
    _check_model_loads(model, settings)
    serve(model, settings)
    return 0


def _check_model_loads(model: Path, settings) -> None:
    """Fail with the right exit code before binding a port if the model cannot be loaded: an
    engine without TensorRT or a GPU exits 7, one built for another GPU or TensorRT 8."""
    load_predictor(model, threads=1, providers=settings.providers)


def _cmd_triton(args: argparse.Namespace) -> int:
    from export.triton import write_repository

    folder = write_repository(
        resolve_model(args.model, args.artefact),
        args.out,
        name=args.name,
        version=args.version,
        overwrite=args.overwrite,
        max_batch_size=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        tensorrt=args.tensorrt,
        preprocessing=args.with_preprocessing,
        max_queue_delay_us=args.max_queue_delay_us,
        warmup=not args.no_warmup,
    )
    print(folder / "config.pbtxt")
    return 0


def _cmd_tensorrt(args: argparse.Namespace) -> int:
    from export.tensorrt import build_and_benchmark

    require_tensorrt()  # no GPU or no TensorRT: say so (exit 7) before anything else
    # A strongly typed engine runs in its graph's precision: pick the matching artefact.
    artefact = (
        args.artefact or {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}[args.precision]
    )
    res = build_and_benchmark(
        resolve_onnx(args.model, artefact),
        args.engine,
        precision=args.precision,
        batches=args.batch,
        iters=args.iters,
    )
    print(json.dumps(res, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    try:
        commands = {
            "run": _cmd_run,
            "check": _cmd_check,
            "data": _cmd_data,
            "report": _cmd_report,
            "compare": _cmd_compare,
            "serve": _cmd_serve,
            "triton": _cmd_triton,
            "tensorrt": _cmd_tensorrt,
        }
        return commands[args.command](args)
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        logging.getLogger(TRACEBACKS).error("traceback of the above", exc_info=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place every fault becomes an exit code
        files = [
            h.baseFilename
            for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler)
        ]
        where = f"in {files[0]}" if files else "shown when the command is run again with -v"
        log.error(
            "internal error, not a problem with your input (%s: %s). The traceback is %s; "
            "please report it",
            type(exc).__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            where,
        )
        logging.getLogger(TRACEBACKS).error("traceback of the above", exc_info=True)
        return PipelineError.exit_code
    except KeyboardInterrupt:
        again = shlex.join(
            [Path(sys.executable).name, "-m", "pipeline", *(sys.argv[1:] if argv is None else argv)]
        )
        log.error(
            "interrupted; finished stages and the last training checkpoint are kept. Resume with the same command: %s",
            again,
        )
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
