"""The run report, written from the stages' manifests: `report.json` for machines, `report.md`
and PNG figures (`figures/`) for people. The runner writes it after validation (also when a gate
fails); `python -m pipeline report RUN_DIR` rebuilds it from the files alone."""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import find_stage, write_json_atomic, write_text_atomic
from pipeline.config import PipelineConfig
from pipeline.errors import StageError


def write_report(run_dir: Path, cfg: PipelineConfig) -> dict:
    """Build `report.json`, `report.md` and `figures/` in `run_dir` from its manifests."""
    from pipeline.report.figures import training_figure
    from pipeline.report.markdown import build_report, render_markdown

    run_dir = Path(run_dir)
    found = {s: find_stage(run_dir, s) for s in ("train", "prune", "export")}
    val = find_stage(run_dir, "validate", statuses=("complete", "gate_failed"))
    missing = [s for s in ("prune", "export") if found[s] is None] + ([] if val else ["validate"])
    if missing:
        raise StageError(
            f"{run_dir} has no finished {', '.join(missing)} stage; the report needs them: "
            "run the pipeline through validation first"
        )
    train = found["train"]
    report = build_report(cfg, train, found["prune"], found["export"], val.metrics)
    figures = []
    if train is not None:
        fig = training_figure(train.path("metrics.jsonl"), run_dir / "figures" / "training.png")
        if fig:
            figures.append(fig.relative_to(run_dir).as_posix())
    figures += sorted(
        p.relative_to(run_dir).as_posix() for p in found["prune"].folder.glob("attention*.png")
    )
    report["figures"] = figures
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", render_markdown(report, figures))
    return report
