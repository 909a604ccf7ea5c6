from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.conftest import REPO


def test_default_pipeline_yaml_is_valid():
    cfg = load_config(REPO / "pipeline.yaml")
    assert cfg.data.name == "digits"
    assert cfg.run_path == Path("runs") / cfg.name


def test_the_default_run_compresses_with_a_short_recovery():
    cfg = load_config(REPO / "pipeline.yaml")
    assert cfg.slim.enabled  # the report's compression table: unpruned and pruned side by side
    assert 1 <= cfg.slim.recovery_epochs <= cfg.train.epochs // 2


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
        ("train.epochs=-1", ["train.epochs", "greater than or equal to 0"]),
        ("train.epochs=0", ["train.epochs: 0", "model.weights"]),
        ("model.name=resnet1000", ["resnet1000", "resnet18", "model.source"]),
        ("train.method=magic", ["train.method", "'ce'", "'magic'"]),
        ("data.val_fraction=1.5", ["data.val_fraction", "1.5"]),
        ("train.milestones=[0.8, 0.2]", ["train.milestones", "increasing"]),
        ("name=has space", ["name", "folder"]),
        (
            ["train.method=pskd", "train.distill.alpha_final=1.5"],
            ["train.distill.alpha_final", "1.5"],
        ),
        (
            ["train.method=cskd", "train.distill.temperature=0"],
            ["train.distill.temperature", "greater"],
        ),
        (
            ["train.method=ls", "train.distill.smooth=0.2"],
            ["train.distill.smooth", "unknown key", "smoothing"],
        ),
        (
            ["train.method=ls", "train.distill.smoothing=1"],
            ["train.distill.smoothing", "less than 1"],
        ),
        ("train.val_every_epochs=0", ["train.val_every_epochs", "greater than or equal to 1"]),
        ("train.mixed_precision=yes", ["train.mixed_precision", "'bf16'"]),
        ("data.on_device=gpu", ["data.on_device", "'auto'"]),
        (
            ["train.method=ama", "train.distill.label_smoothing=1"],
            ["train.distill.label_smoothing", "less than 1"],
        ),
        (
            ["train.method=frskd", "train.distill.kd_warmup_epochs=-1"],
            ["train.distill.kd_warmup_epochs", "0"],
        ),
        # each method takes its own options: an unknown key lists the selected method's
        (
            ["train.method=ama", "train.distill.smoothing=0.2"],
            [
                "train.distill.smoothing",
                "unknown key",
                "'ama'",
                "temperature",
                "kappa",
                "label_smoothing",
            ],
        ),
        (
            ["train.distill.alpha=1"],
            ["train.distill.alpha", "unknown key", "'ce' takes no options"],
        ),
        # the earlier nested layout names the key that replaced it
        (
            ["train.method=cskd", "train.distill.cskd.temperature=3"],
            ["train.distill.cskd", "train.distill.temperature", "train.method=cskd"],
        ),
        (
            ["train.method=ama", "train.distill.ls.smoothing=0.2"],
            ["train.distill.ls", "write train.distill.smoothing with train.method=ls"],
        ),
        # slim.distill holds the recovery method's options (`auto`: train.method's)
        (
            ["train.method=ama", "slim.method=ls", "slim.distill.alpha=1"],
            ["slim.distill.alpha", "unknown key", "'ls'", "smoothing"],
        ),
        (
            ["train.method=ls", "slim.distill.smoothing=1"],
            ["slim.distill.smoothing", "less than 1"],
        ),
    ],
)
def test_bad_values_name_field_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, override if isinstance(override, list) else [override])
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
    def distill(method):
        return load_config(None, [f"train.method={method}"]).train.distill

    cfg = load_config(None, ["train.method=pskd"])
    assert distill("ls").smoothing == 0.1  # Szegedy et al. 2016
    d = distill("cskd")
    assert (d.temperature, d.lambda_cls) == (4.0, 1.0)  # Yun et al. 2020
    assert cfg.train.distill.alpha_final == 0.8  # Kim et al. 2021
    d = distill("byot")
    assert (d.temperature, d.alpha, d.beta) == (3.0, 0.1, 1e-6)  # BYOT's code
    assert cfg.train.val_every_epochs == 1
    assert load_config(None, ["train.val_every_epochs=null"]).train.val_every_epochs is None
    for name in ("ls", "cskd", "pskd", "byot"):
        assert load_config(None, [f"train.method={name}"]).train.method == name


def test_train_distill_holds_the_options_of_train_method():
    cfg = load_config(None, ["train.method=ls", "train.distill.smoothing=0.2"])
    assert cfg.train.distill.smoothing == 0.2
    assert cfg.train.distill.model_dump() == {"smoothing": 0.2}
    assert load_config(None, ["train.method=ce"]).train.distill.model_dump() == {}
    ama = load_config(None, ["train.method=ama", "train.distill.kappa=5"]).train.distill
    assert (ama.kappa, ama.temperature, ama.kd_warmup_epochs) == (5.0, 4.0, 0)


def test_cli_check_prints_the_selected_methods_options(capsys):
    yaml = str(REPO / "pipeline.yaml")
    assert (
        main(["check", yaml, "--set", "train.method=cskd", "--set", "train.distill.lambda_cls=2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "  distill:\n    temperature: 4.0\n    lambda_cls: 2.0\n" in out
    assert main(["check", yaml, "--set", "train.method=byot"]) == 0
    out = capsys.readouterr().out
    assert "  distill:\n    temperature: 3.0\n    alpha: 0.1\n    beta: 1.0e-06\n" in out
    assert "smoothing" not in out and "lambda_cls" not in out
    assert main(["check", yaml, "--set", "train.method=ama"]) == 0
    out = capsys.readouterr().out
    for key in ("temperature", "beta_mix", "mask", "kappa", "ratio_invert", "kd_warmup_epochs"):
        assert f"    {key}: " in out


def test_recovery_takes_train_distill_or_its_own_methods_defaults():
    # the same method: train.distill, without the KL warm-up (a trained head)
    cfg = load_config(
        None, ["train.method=ama", "train.distill.alpha=1.5", "train.distill.kd_warmup_epochs=5"]
    )
    assert cfg.recovery_method() == "ama"
    assert (cfg.recovery_options().alpha, cfg.recovery_options().kd_warmup_epochs) == (1.5, 0)
    # another method: its defaults, whatever train.distill says
    cfg = load_config(None, ["train.method=ama", "train.distill.alpha=1.5", "slim.method=frskd"])
    assert cfg.recovery_options().alpha == 2.0
    cfg = load_config(None, ["train.method=ama", "slim.method=ls"])
    assert cfg.recovery_options().smoothing == 0.1
    assert cfg.slim.distill is None
    # slim.distill: the recovery method's options, as written
    cfg = load_config(None, ["train.method=ama", "slim.method=ls", "slim.distill.smoothing=0.3"])
    assert cfg.recovery_options().smoothing == 0.3
    cfg = load_config(None, ["train.method=ama", "train.distill.alpha=1.5", "slim.distill.beta=50"])
    assert (cfg.recovery_options().beta, cfg.recovery_options().alpha) == (50.0, 2.0)
    assert cfg.train.distill.beta == 100.0  # train.distill is left as it was
    # what the prune stage draws with: the recovery method's options when slimming
    slimmed = ["train.method=ce", "slim.method=ama", "slim.ratio=0.5", "slim.distill.kappa=5"]
    assert load_config(None, slimmed).final_options().kappa == 5.0
    assert (
        load_config(None, ["train.method=ama", "train.distill.kappa=7"]).final_options().kappa
        == 7.0
    )


def test_slim_distill_survives_a_dump_and_reload(tmp_path):
    from pipeline.config import dump_config

    cfg = load_config(None, ["train.method=ama", "slim.method=cskd", "slim.distill.lambda_cls=2"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and again.recovery_options().lambda_cls == 2.0


def test_a_run_folders_config_in_the_earlier_layout_still_loads(tmp_path):
    """`config.yaml` of a run made when train.distill held every method's options."""
    earlier = {
        "temperature": 4.0,
        "alpha": 1.5,
        "beta": 100.0,
        "beta_mix": 100.0,
        "mask": "soft",
        "kappa": 20.0,
        "ratio": "entropy",
        "ratio_invert": False,
        "mix_warmup_epochs": None,
        "kd_warmup_epochs": 0,
        "label_smoothing": 0.0,
        "ls": {"smoothing": 0.2},
        "cskd": {"temperature": 4.0, "lambda_cls": 1.0},
        "pskd": {"alpha_final": 0.8},
        "byot": {"temperature": 3.0, "alpha": 0.1, "beta": 1e-6},
    }
    path = tmp_path / "config.yaml"
    for method, expected in (("ama", {"alpha": 1.5}), ("ls", {"smoothing": 0.2}), ("ce", {})):
        path.write_text(yaml.safe_dump({"train": {"method": method, "distill": earlier}}))
        d = load_config(path).train.distill.model_dump()
        default = load_config(None, [f"train.method={method}"]).train.distill.model_dump()
        assert d == {**default, **expected}
