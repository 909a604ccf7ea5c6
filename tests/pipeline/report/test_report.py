"""The report is built from the manifests alone, and `python -m pipeline report` rebuilds it."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.report import write_report
from pipeline.runner import run_pipeline


def test_report_command_rebuilds_report_from_manifests(tiny_overrides, capsys) -> None:
    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    run_pipeline(cfg)
    first = json.loads((cfg.run_path / "report.json").read_text())
    for name in ("report.md", "report.json"):
        (cfg.run_path / name).unlink()
    assert main(["report", str(cfg.run_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    again = json.loads((cfg.run_path / "report.json").read_text())
    assert again == first
    assert "## Artefacts" in (cfg.run_path / "report.md").read_text()
    # No stage folder holds a report: it belongs to the run, not to validate.
    assert not list(cfg.run_path.glob("*/report.*"))


def test_report_of_an_unfinished_run_says_what_is_missing(tmp_path, tiny_cfg) -> None:
    from pipeline.errors import StageError

    with pytest.raises(StageError, match="no finished prune, export, validate stage"):
        write_report(tmp_path, tiny_cfg)
    assert main(["report", str(tmp_path)]) == 2  # not a run folder: no config.yaml


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A `ce` and an `ama` run of the same tiny config."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("report")
    runs = []
    for method in ("ce", "ama"):
        cfg = load_config(
            None,
            [
                *TINY,
                f"run_dir={root}",
                f"name={method}",
                f"train.method={method}",
                "train.epochs=1",
                *(["train.distill.mix_warmup_epochs=0"] if method == "ama" else []),
            ],
        )
        run_pipeline(cfg)
        runs.append(cfg.run_path)
    return runs


def test_html_report_is_self_contained_with_every_figure(two_runs) -> None:
    import re

    ce, ama = two_runs
    page = (ama / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.findall(r"https?://", page), "the page must not reach a network"
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    report = json.loads((ama / "report.json").read_text())
    figures = report["figures"]
    for key in ("training", "confusion", "mistakes", "latency_batch", "accuracy_latency"):
        assert (ama / figures[key]).read_bytes()[:4] == b"\x89PNG", key
    assert any(k.startswith("attention") for k in figures)  # a self-distilled run
    assert len(srcs) == len(figures)
    ce_figures = json.loads((ce / "report.json").read_text())["figures"]
    assert not any(k.startswith("attention") for k in ce_figures)


def test_numbers_are_for_people(two_runs) -> None:
    ce, ama = two_runs
    md = (ce / "report.md").read_text()
    assert "{'train'" not in md and " train / " in md  # split sizes, not a dict
    assert "nothing removed" in md  # ce: no branch, no signed noise presented as a saving
    assert "speed-up vs torch FP32" in md and "| torch | 1 | 1 |" in md  # sweep rows
    assert "cpu_model" in md and "timed calls" in md
    from pipeline.report import format as f

    quiet = {"p50": 1.00, "p90": 1.10}
    assert f.latency_saving(quiet, {"p50": 0.97, "p90": 1.05}) == f.NOT_MEASURABLE
    assert f.latency_saving({"p50": 2.0, "p90": 2.1}, quiet).startswith("1.000 (50%)")
    assert f.count(1234567) == "1,234,567" and f.pct(0.98889) == "98.89%"
    assert f.size(810_550) == "810.55 kB" and f.speedup(2.0, 0.5) == "4.00x"


def test_model_card_and_onnx_description(two_runs) -> None:
    import onnx

    from pipeline import stages

    _, ama = two_runs
    export = stages.folder(ama, "export")
    card = (export / "MODEL_CARD.md").read_text()
    for heading in (
        "Model details",
        "Intended use",
        "Training data",
        "Evaluation data",
        "Metrics",
        "Limitations",
        "Preprocessing",
        "Class names",
    ):
        assert f"## {heading}" in card, heading
    assert "self-teacher was removed" in card and "`digits`" in card
    model = onnx.load(str(export / "model.onnx"), load_external_data=False)
    assert model.model_version == 1 and "image classifier over 10 classes" in model.doc_string


def test_compare_marks_differences_within_noise(two_runs, tmp_path, capsys) -> None:
    import numpy as np

    from pipeline.report.compare import top1_difference

    ce, ama = two_runs
    assert main(["compare", str(ce), str(ama), "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [r["run"] for r in rows[:1]] == ["ce"] and {r["run"] for r in rows} == {"ce", "ama"}
    ama_rows = [r for r in rows if r["run"] == "ama"]
    assert all(r["paired"] for r in ama_rows)  # same test images: paired interval
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "reference" in md and "pts (±" in md
    assert "<script" not in (tmp_path / "cmp" / "compare.html").read_text()
    # identical predictions: no difference; one image of 400 flipped: inside the interval
    same = np.ones(400, bool)
    assert top1_difference(0.9, 0.9, 400, 400, (same, same)) == (0.0, 0.0)
    flipped = same.copy()
    flipped[0] = False
    diff, half = top1_difference(1.0, 0.9975, 400, 400, (same, flipped))
    assert abs(diff) <= half
    assert main(["compare", str(ce), "--out", str(tmp_path / "one")]) == 2
