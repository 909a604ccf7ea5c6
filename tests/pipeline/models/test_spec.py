"""The model spec is one typed record with one reader and one writer: it round-trips through
save/read, and a record with a missing key, an unknown key or from an older version is an
ArtefactError that names the file and the stage to rebuild."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from pipeline.errors import ArtefactError
from pipeline.models.io import build_backbone, load_weights, read_spec, save_model
from pipeline.models.spec import SPEC_VERSION, ModelSpec
from tests.specs import model_spec


def _saved(tmp_path, spec: ModelSpec | None = None):
    spec = spec or model_spec("resnet18", "ama", feature_taps=True)
    folder = tmp_path / "01_train"
    folder.mkdir()
    torch.manual_seed(0)
    save_model(build_backbone(spec), spec, folder, "model")
    return spec, folder


def test_a_spec_round_trips_through_save_and_read(tmp_path) -> None:
    spec, folder = _saved(tmp_path)
    again = read_spec(folder, "model")
    assert again == spec
    assert again.version == SPEC_VERSION and again.source == "builtin"
    # the JSON file and the safetensors metadata carry the same record, unset keys left out
    record = json.loads((folder / "model.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["spec"]) == record
    assert {"arch", "stem", "width", "num_classes", "method", "classes", "preset"} <= set(record)
    assert "shapes" not in record and "aux_removed" not in record
    assert record["preset"]["mean"] == list(spec.preset.mean)
    load_weights(build_backbone(again), folder, "model")  # the same network, loaded strictly


def test_changes_make_a_checked_copy(tmp_path) -> None:
    spec = model_spec()
    pruned = spec.replace(shapes={"fc": [8, 3]}, stage_channels=[8, 16, 32, 64])
    assert spec.shapes is None and pruned.shapes == {"fc": (8, 3)}
    assert pruned.replace(shapes=None, stage_channels=None).to_dict() == spec.to_dict()
    with pytest.raises(ValidationError):
        spec.arch = "resnet34"  # frozen
    with pytest.raises(ValidationError):
        spec.replace(num_classes="many")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: r.pop("num_classes"), "missing key `num_classes`"),
        (lambda r: r["preset"].pop("std"), "missing key `preset.std`"),
        (lambda r: r.update(widht=0.5), "unknown key `widht`"),
        (lambda r: r.pop("version"), "older version of the pipeline (no `version` key"),
        (lambda r: r.update(version=SPEC_VERSION - 1), "older version of the pipeline"),
        (lambda r: r.update(version=SPEC_VERSION + 1), "upgrade the pipeline"),
    ],
)
def test_a_bad_record_is_an_artefact_error_naming_the_file(tmp_path, change, problem) -> None:
    _, folder = _saved(tmp_path)
    path = folder / "model.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(ArtefactError) as err:
        read_spec(folder, "model")
    message = str(err.value)
    assert str(path) in message and problem in message
    assert "--from train" in message  # the stage whose folder holds it


def test_a_missing_or_corrupt_spec_is_an_artefact_error(tmp_path) -> None:
    with pytest.raises(ArtefactError, match="model.json is missing"):
        read_spec(tmp_path, "model")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="cannot read model spec"):
        read_spec(tmp_path, "model")
