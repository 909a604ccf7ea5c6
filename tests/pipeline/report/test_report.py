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
