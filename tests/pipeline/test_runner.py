"""The runner and the stage table: order, folders, keys, and a new stage added by one entry."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pipeline import stages
from pipeline.artifacts import StageResult, find_stage, hash_files
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.runner import _selected, key_of, run_pipeline


def _audit(cfg, inputs, out_dir, ctx) -> StageResult:
    """A stage added after validate: reads its inputs' manifests, writes in its own folder."""
    top1 = inputs["validate"].metrics["artefacts"]["onnx"]["top1"]
    (out_dir / "audit.json").write_text(json.dumps({"onnx_top1": top1}))
    return StageResult(metrics={"onnx_top1": top1})


@pytest.fixture(scope="module")
def with_audit(tmp_path_factory):
    from tests.conftest import TINY

    mp = pytest.MonkeyPatch()
    table = (*stages.TABLE, stages.Stage("audit", _audit, inputs=("validate",), config=()))
    mp.setattr(stages, "TABLE", table)
    mp.setattr(stages, "STAGES", {s.name: s for s in table})
    mp.setattr(stages, "NAMES", tuple(s.name for s in table))
    cfg = load_config(None, [*TINY, f"run_dir={tmp_path_factory.mktemp('r')}", "name=a"])
    try:
        manifests = run_pipeline(cfg)
    finally:
        mp.undo()  # the other tests see the real table
    return cfg, manifests


def test_a_stage_added_to_the_table_runs_in_its_own_numbered_folder(with_audit) -> None:
    cfg, manifests = with_audit
    assert list(manifests) == ["train", "slim", "prune", "export", "validate", "audit"]
    audit = manifests["audit"]
    assert audit.folder == cfg.run_path / "06_audit" and audit.complete
    assert audit.inputs == {"validate": manifests["validate"].key}
    assert set(audit.files) == {"audit.json"}
    assert find_stage(cfg.run_path, "audit").key == audit.key


def test_stages_write_only_inside_their_own_folder(with_audit) -> None:
    cfg, manifests = with_audit
    folders = {m.folder.name for m in manifests.values()}
    top = {p.name for p in cfg.run_path.iterdir()}
    # Besides the stage folders: the resolved config, the log and the report built from manifests.
    allowed = {"config.yaml", "pipeline.log", "report.md", "report.html", "report.json", "figures"}
    allowed.add(".lock")  # who holds the run while it runs
    assert top - folders <= allowed
    assert {"config.yaml", "report.md", "report.html", "report.json"} <= top
    for m in manifests.values():  # what each manifest lists is exactly what its folder holds
        assert set(m.files) == set(hash_files(m.folder))


def test_keys_follow_the_config_sections_the_table_names(tiny_cfg) -> None:
    base = key_of("export", tiny_cfg, {}, "fp")
    other_validate = tiny_cfg.model_copy(deep=True)
    other_validate.validate_.latency.iters = 999
    assert key_of("export", other_validate, {}, "fp") == base  # not an export setting
    other_export = tiny_cfg.model_copy(deep=True)
    other_export.export.opset = 17
    assert key_of("export", other_export, {}, "fp") != base
    assert key_of("export", tiny_cfg, {}, "other data") != base


def test_selection_errors_name_the_allowed_stages() -> None:
    with pytest.raises(ConfigError, match="allowed: train, slim, prune, export, validate"):
        _selected("bogus", None)
    with pytest.raises(ConfigError, match="cannot be combined"):
        _selected("train", "export")
    assert _selected(None, "export") == ["export", "validate"]


def test_the_table_lists_each_stage_once_with_known_inputs() -> None:
    seen: set[str] = set()
    for s in stages.TABLE:
        assert s.name not in seen and set(s.inputs) <= seen, s  # inputs come earlier
        seen.add(s.name)
    assert replace(stages.get("train")).config == ("data", "model", "train")


def test_a_second_process_on_the_same_run_is_refused_naming_the_first(tiny_cfg, tmp_path):
    """Two processes on one run folder would write the same checkpoints; the second is refused
    before it writes anything (the config included), with exit code 10, and the run is free
    again once the first lets go."""
    import os

    from pipeline.__main__ import main
    from pipeline.errors import RunInUse
    from pipeline.runner import run_lock

    run = tiny_cfg.run_path
    run.mkdir(parents=True)
    with run_lock(run):  # stands in for a run in another process (a lock is per open file)
        with pytest.raises(RunInUse, match=f"in use by another process \\(pid {os.getpid()} on "):
            run_pipeline(tiny_cfg, only="train")
        assert not (run / "config.yaml").exists()
        cfg_file = tmp_path / "c.yaml"
        cfg_file.write_text("{}\n")
        sets = sum(
            (["--set", f"{k}={v}"] for k, v in [("run_dir", run.parent), ("name", run.name)]), []
        )
        assert main(["run", str(cfg_file), "--only", "train", *sets]) == 10
    with run_lock(run):  # released: it can be taken again
        pass
