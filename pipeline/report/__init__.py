"""The run report, written from the stages' manifests: `report.json` for machines, `report.md`
and a self-contained `report.html` (figures embedded) for people, figures in `figures/`. The
runner writes it after validation (also when a gate fails); `python -m pipeline report RUN_DIR`
rebuilds it from the files alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import Manifest, find_stage, write_json_atomic, write_text_atomic
from pipeline.config import PipelineConfig
from pipeline.errors import StageError
from pipeline.report import figures as fig
from pipeline.report.content import build_document, build_report, figure_paths
from pipeline.report.document import to_html, to_markdown


def _figures(run_dir: Path, train: Manifest | None, prune: Manifest, val: Manifest, r: dict):
    out = run_dir / "figures"
    made: dict[str, Path | None] = {}
    if train is not None:
        made["training"] = fig.training_figure(train.path("metrics.jsonl"), out / "training.png")
    classes = r["classes"] or [str(i) for i in range(r["data"].get("num_classes", 0))]
    preds = val.path("predictions.npz")
    if preds.is_file() and classes:
        with np.load(preds) as p:
            made["confusion"] = fig.confusion_figure(
                p["labels"], p["pred_torch"], classes, out / "confusion.png"
            )
    worst = val.path("mistakes.npz")
    if worst.is_file() and classes:
        with np.load(worst) as w:
            made["mistakes"] = fig.mistakes_figure(
                w["images"], w["true"], w["pred"], w["conf"], classes, out / "mistakes.png"
            )
    arts = r["artefacts"]
    made["latency_batch"] = fig.latency_batch_figure(arts, out / "latency_batch.png")
    points = [(n, a["latency_ms"]["p50"], a["top1"]) for n, a in arts.items()]
    made["accuracy_latency"] = fig.accuracy_latency_figure(points, out / "accuracy_latency.png")
    for p in sorted(prune.folder.glob("attention*.png")):
        made[p.stem] = p
    return made


def write_report(run_dir: Path, cfg: PipelineConfig) -> dict:
    """Build `report.json`, `report.md`, `report.html` and `figures/` from the manifests."""
    run_dir = Path(run_dir)
    found = {s: find_stage(run_dir, s) for s in ("train", "slim", "prune", "export")}
    val = find_stage(run_dir, "validate", statuses=("complete", "gate_failed"))
    missing = [s for s in ("prune", "export") if found[s] is None] + ([] if val else ["validate"])
    if missing:
        raise StageError(
            f"{run_dir} has no finished {', '.join(missing)} stage; the report needs them: "
            "run the pipeline through validation first"
        )
    train, prune = found["train"], found["prune"]
    report = build_report(cfg, train, prune, found["export"], val, found["slim"])
    figures = figure_paths(_figures(run_dir, train, prune, val, report), run_dir)
    report["figures"] = figures
    doc = build_document(report, figures)
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", to_markdown(doc))
    write_text_atomic(run_dir / "report.html", to_html(doc, run_dir))
    return report
