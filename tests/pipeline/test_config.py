from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.conftest import REPO


def test_default_pipeline_yaml_is_valid():
    cfg = load_config(REPO / "pipeline.yaml")
    assert cfg.data.name == "digits"
    assert cfg.run_path == Path("runs") / cfg.name


def test_overrides_are_typed_yaml():
    cfg = load_config(None, ["train.epochs=3", "model.width=0.5", "train.milestones=[0.3, 0.6]"])
    assert cfg.train.epochs == 3 and cfg.model.width == 0.5 and cfg.train.milestones == (0.3, 0.6)
    # YAML reads a bare `no` as false; the one field whose allowed values include "no" takes it
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(None, ["data.on_device=true"]).data.on_device is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochz=3", ["train.epochz", "unknown key", "epochs"]),
        ("train.epochs=abc", ["train.epochs", "'abc'"]),
        ("train.epochs=0", ["train.epochs", "greater than or equal to 1"]),
        ("model.name=resnet1000", ["model.name", "resnet1000", "resnet18"]),
        ("train.method=magic", ["train.method", "'ce'", "'magic'"]),
        ("data.val_fraction=1.5", ["data.val_fraction", "1.5"]),
        ("train.milestones=[0.8, 0.2]", ["train.milestones", "increasing"]),
        ("name=has space", ["name", "folder"]),
        ("train.distill.pskd.alpha_final=1.5", ["train.distill.pskd.alpha_final", "1.5"]),
        ("train.distill.cskd.temperature=0", ["train.distill.cskd.temperature", "greater"]),
        ("train.distill.ls.smooth=0.2", ["train.distill.ls.smooth", "unknown key", "smoothing"]),
        ("train.distill.ls.smoothing=1", ["train.distill.ls.smoothing", "less than 1"]),
        ("train.val_every_epochs=0", ["train.val_every_epochs", "greater than or equal to 1"]),
        ("train.mixed_precision=yes", ["train.mixed_precision", "'bf16'"]),
        ("data.on_device=gpu", ["data.on_device", "'auto'"]),
        ("train.distill.label_smoothing=1", ["train.distill.label_smoothing", "less than 1"]),
        ("train.distill.kd_warmup_epochs=-1", ["train.distill.kd_warmup_epochs", "0"]),
    ],
)
def test_bad_values_name_field_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for text in expected:
        assert text in str(err.value)


def test_missing_data_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, ["data.name=imagefolder"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, ["data.name=imagefolder", f"data.root={tmp_path / 'nope'}"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_cli_bad_config_exits_2_without_traceback(capsys):
    code = main(["check", str(REPO / "pipeline.yaml"), "--set", "train.epochs=-1"])
    captured = capsys.readouterr()
    assert code == 2
    assert "train.epochs" in captured.err and "Traceback" not in captured.err


def test_cli_check_prints_resolved_config(capsys):
    assert main(["check", str(REPO / "pipeline.yaml"), "--set", "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "temperature: 4.0" in out


def test_cli_data_check_prints_counts_and_speeds(capsys):
    assert main(["data", "check", str(REPO / "pipeline.yaml"), "--set", "model.width=0.125"]) == 0
    out = capsys.readouterr().out
    assert "classes" in out and "images/s" in out


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_presets_are_valid(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert cfg.train.method == "ama" and cfg.train.epochs == 200
    fine_grained = cfg.data.name in ("cub200", "mit67", "stanford_dogs")
    assert cfg.model.stem == ("imagenet" if fine_grained else "cifar")


def test_comparator_methods_take_their_papers_defaults():
    cfg = load_config(None, ["train.method=pskd"])
    d = cfg.train.distill
    assert d.ls.smoothing == 0.1  # Szegedy et al. 2016
    assert (d.cskd.temperature, d.cskd.lambda_cls) == (4.0, 1.0)  # Yun et al. 2020
    assert d.pskd.alpha_final == 0.8  # Kim et al. 2021
    assert (d.byot.temperature, d.byot.alpha, d.byot.beta) == (3.0, 0.1, 1e-6)  # BYOT's code
    assert cfg.train.val_every_epochs == 1
    assert load_config(None, ["train.val_every_epochs=null"]).train.val_every_epochs is None
    for name in ("ls", "cskd", "pskd", "byot"):
        assert load_config(None, [f"train.method={name}"]).train.method == name
