"""End-to-end runs of a tiny config: every stage, caching, partial re-runs, gates and parity."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.errors import ExportParityError
from pipeline.runner import run_pipeline


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run shared by the read-only checks below."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("e2e")
    cfg = load_config(
        None,
        [
            *TINY,
            f"run_dir={root}",
            "name=shared",
            "export.formats=[onnx_int8, onnx_fp16]",
            "data.input_size=32",  # the digits preset's size: the preprocessing checks below
        ],
    )
    return cfg, run_pipeline(cfg)


def test_every_stage_writes_a_complete_manifest(finished):
    cfg, manifests = finished
    assert list(manifests) == ["train", "slim", "prune", "export", "validate"]
    for stage, m in manifests.items():
        assert m.complete, stage
        on_disk = json.loads((m.folder / "manifest.json").read_text())
        assert on_disk["key"] == m.key and on_disk["environment"]["torch"]
        assert on_disk["files"], f"{stage} recorded no files"
    assert (manifests["train"].folder / "metrics.jsonl").read_text().count("\n") == cfg.train.epochs
    assert manifests["slim"].inputs == {"train": manifests["train"].key}
    assert manifests["prune"].inputs == {"slim": manifests["slim"].key}


def test_report_has_top1_and_latency_per_artefact(finished):
    cfg, _ = finished
    report = json.loads((cfg.run_path / "report.json").read_text())
    arts = report["artefacts"]
    # two epochs on digits reach 0.38 top-1 (chance: 0.10); FP32 ONNX is the same classifier,
    # FP16 and INT8 stay within their gates (1 and, for these barely trained runs, 5 points:
    # tests/conftest.py)
    assert arts["torch"]["top1"] >= 0.25
    assert arts["onnx"]["top1"] == arts["torch"]["top1"]
    assert abs(arts["onnx_fp16"]["top1"] - arts["torch"]["top1"]) <= 0.01
    assert abs(arts["onnx_int8"]["top1"] - arts["torch"]["top1"]) <= 0.05
    for name in ("torch", "onnx", "onnx_int8", "onnx_fp16"):
        lat = arts[name]["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert "| onnx |" in (cfg.run_path / "report.md").read_text()
    # int8 weights: about a quarter of the fp32 file
    assert report["artefacts"]["onnx_int8"]["bytes"] < 0.5 * report["artefacts"]["onnx"]["bytes"]
    gates = {g["gate"]: g for g in report["gates"]}
    assert gates["onnx_int8.top1_drop <= max_top1_drop_int8"]["limit"] == 0.05
    assert gates["onnx_fp16.top1_drop <= max_top1_drop"]["limit"] == 0.01
    assert all(g["passed"] for g in report["gates"])
    # fp16 stays close to fp32 logits; int8 moves further but keeps the class of nearly every
    # parity image (measured 61 of 64; how close each recipe stays to FP32 is
    # tests/export/test_quantize.py's); a broken export would agree at chance (0.1)
    assert report["export"]["onnx_fp16"]["parity"]["max_abs_diff"] < 0.05
    # a barely trained classifier has near-tied logits: on an AVX2 CPU one of the 64 parity
    # images changed class under FP16 (63 of 64), none on an AVX-512 one
    assert report["export"]["onnx_fp16"]["parity"]["top1_agreement"] >= 60 / 64
    assert report["export"]["onnx_int8"]["parity"]["top1_agreement"] >= 0.85


def test_prune_proves_logits_equal_and_export_parity(finished):
    _, manifests = finished
    prune = manifests["prune"].metrics
    assert prune["parity"]["max_abs_diff"] == 0.0
    assert prune["params_deployed"] == prune["params_bare_backbone"]
    onnx = manifests["export"].metrics["onnx"]["parity"]
    assert onnx["max_abs_diff"] < 1e-4 and onnx["top1_agreement"] == 1.0


def test_onnx_carries_class_names(finished):
    from serving.predictor import OrtPredictor

    _, manifests = finished
    pred = OrtPredictor(manifests["export"].folder / "model.onnx")
    assert pred.classes == [str(i) for i in range(10)]


def test_rerun_skips_and_changed_stage_reruns_only_downstream(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.epochs=1"])
    first = run_pipeline(cfg)
    again = run_pipeline(cfg)
    assert {s: m.started for s, m in first.items()} == {s: m.started for s, m in again.items()}
    changed = load_config(None, tiny_overrides + ["train.epochs=1", "export.atol=0.001"])
    third = run_pipeline(changed)
    for stage in ("train", "prune"):
        assert third[stage].started == first[stage].started, stage
    for stage in ("export", "validate"):
        assert third[stage].started > first[stage].started, stage
        assert third[stage].key != first[stage].key


def test_only_and_from(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.epochs=1"])
    first = run_pipeline(cfg)
    only = run_pipeline(cfg, only="validate")
    assert list(only) == ["train", "slim", "prune", "export", "validate"]
    assert only["export"].started == first["export"].started
    assert only["validate"].started == first["validate"].started  # up to date: skipped
    rerun = run_pipeline(cfg, from_stage="export")
    assert rerun["prune"].started == first["prune"].started
    assert rerun["export"].started > first["export"].started


def _cli_args(overrides: list[str], tmp_path) -> list[str]:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    return ["run", str(empty), *sum((["--set", o] for o in overrides), [])]


def test_only_without_inputs_fails_clearly(tiny_overrides, tmp_path):
    code = main([*_cli_args(tiny_overrides, tmp_path), "--only", "export"])
    assert code == 5


def test_failed_gate_exits_3_and_keeps_everything(tiny_overrides, tmp_path, capsys):
    args = _cli_args(tiny_overrides, tmp_path)
    code = main([*args, "--set", "train.epochs=1", "--set", "validate.gates.min_top1=1.01"])
    assert code == 2  # out of range: a config error, caught before any work
    code = main([*args, "--set", "train.epochs=1", "--set", "validate.gates.min_top1=1.0"])
    err = capsys.readouterr().err
    assert code == 3
    assert "min_top1" in err and "measured" in err and "limit 1.0" in err
    cfg = load_config(None, tiny_overrides)
    assert (cfg.run_path / "report.md").is_file()
    assert (cfg.run_path / "01_train" / "model.safetensors").is_file()
    validate = json.loads((cfg.run_path / "05_validate" / "manifest.json").read_text())
    assert validate["status"] == "gate_failed"


def test_export_parity_failure_names_difference_and_limit(tiny_overrides, monkeypatch):
    import export.onnx as ex

    real = ex.ort_parity

    def skewed(path, model, images):
        res = real(path, model, images)
        return {**res, "max_abs_diff": res["max_abs_diff"] + 0.5}

    monkeypatch.setattr(ex, "ort_parity", skewed)
    cfg = load_config(None, tiny_overrides + ["train.epochs=1"])
    with pytest.raises(ExportParityError, match=r"max \|diff\| 0\.5.*export\.atol=0\.0001"):
        run_pipeline(cfg)


def test_model_class_count_must_match_data(tiny_overrides):
    from pipeline.errors import DataError

    cfg = load_config(None, tiny_overrides + ["model.num_classes=100"])
    with pytest.raises(DataError, match=r"model.num_classes=100 but data 'digits' has 10 classes"):
        run_pipeline(cfg)


def test_ama_run_removes_self_teacher_and_reports_its_cost(tiny_overrides):
    cfg = load_config(
        None,
        tiny_overrides
        + ["train.epochs=1", "train.method=ama", "train.distill.mix_warmup_epochs=0"],
    )
    manifests = run_pipeline(cfg)
    p = manifests["prune"].metrics
    assert p["parity"]["max_abs_diff"] == 0.0
    assert p["params_removed"] > 0 and p["params_deployed"] == p["params_bare_backbone"]
    assert p["params_training"] == p["params_deployed"] + p["params_removed"]
    assert p["macs_training"] > p["macs_deployed"] > 0
    t = manifests["train"].metrics
    assert "test_aux_top1" in t
    report = (cfg.run_path / "report.md").read_text()
    figures = sorted((manifests["prune"].folder).glob("attention_stage*.png"))
    assert len(figures) == 2 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "03_prune/attention_stage4.png" in report


def test_force_trains_from_scratch_even_with_a_resumable_partial(tiny_overrides):
    import shutil

    cfg = load_config(None, tiny_overrides + ["train.epochs=1"])
    first = run_pipeline(cfg, only="train")["train"]
    assert first.extra.get("checkpoint"), "the train stage should name its last checkpoint"
    partial = first.folder.with_name(first.folder.name + ".partial")
    shutil.copytree(first.folder, partial)  # what a run killed after its last checkpoint leaves
    again = run_pipeline(cfg, only="train", force=True)["train"]
    assert again.metrics["resumed_from"] is None
    assert again.started > first.started


def test_predictor_preprocessing_matches_training_eval_transform(finished):
    """The served model sees validate's pixels and gives its probabilities, at the input size
    and off it: downscaled, upscaled, a crop margin of 1.5 (70 wide -> 35: torchvision rounds
    the offset to 2) and a long side of 42.67 (torchvision truncates it to 42)."""
    import numpy as np
    import torch

    from pipeline.data import eval_transform, resolve_preset
    from serving.classify import softmax
    from serving.predictor import OrtPredictor

    cfg, manifests = finished
    pred = OrtPredictor(manifests["export"].folder / "model.onnx")
    ref = eval_transform(resolve_preset(cfg.data))
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (40, 64), (131, 97), (64, 70), (480, 640), (20, 20), (33, 33)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    expected = torch.stack([ref(torch.from_numpy(a).permute(2, 0, 1)) for a in images]).numpy()
    batch = pred.preprocess(images)
    assert batch.shape == (len(sizes), 3, 32, 32) and batch.dtype == np.float32
    assert np.abs(batch - expected).max() < 1e-5
    served, validated = softmax(pred.run(batch)), softmax(pred.run(expected))
    assert served.shape == (len(sizes), 10)
    assert np.abs(served - validated).max() < 1e-3
