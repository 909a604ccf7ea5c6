"""run_data_check and format_data_check on tiny fake data."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.training.data_check import format_data_check, run_data_check
from tests.fake_datasets import make_cub200, make_imagefolder


def _cfg(name: str, root: Path, **data) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data": {"name": name, "root": str(root), "val_fraction": 0.2, **data},
            "model": {"name": "resnet18", "width": 0.125},
            "train": {"batch_size": 4, "device": "cpu"},
        }
    )


def test_data_check_reports_counts_sizes_and_speeds(tmp_path: Path) -> None:
    fake = make_imagefolder(tmp_path, size=(32, 24))
    result = run_data_check(_cfg("imagefolder", fake.folder), loader_batches=2, train_steps=1)
    assert result["num_classes"] == 3
    assert result["sizes"] == {"train": 12, "val": 3, "test": 6}
    assert result["per_class"]["test"] == {"cat": 2, "dog": 2, "frog": 2}
    assert result["image_size"]["height"] == {"min": 24, "median": 24, "max": 24}
    assert result["image_size"]["width"]["max"] == 32
    assert result["cache"] == "memory"
    assert result["loader"]["images_per_s"] > 0 and result["train_step"]["images_per_s"] > 0
    assert result["train_step"]["stem"] == "cifar" and result["train_step"]["batch_shape"] == [
        4,
        3,
        32,
        32,
    ]
    assert result["loader_to_step_ratio"] > 0
    text = format_data_check(result)
    assert "classes: 3" in text and "loader / step" in text and "frog" in text


def test_data_check_on_files_of_differing_sizes(tmp_path: Path) -> None:
    fake = make_cub200(tmp_path)
    cfg = _cfg("cub200", fake.folder.parent, input_size=32, resize=36)
    result = run_data_check(cfg, loader_batches=1, train_steps=1)
    assert result["cache"] == "none"
    assert result["image_size"]["width"]["min"] == 40 and result["image_size"]["width"]["max"] == 52
    assert result["train_step"]["stem"] == "imagenet"
