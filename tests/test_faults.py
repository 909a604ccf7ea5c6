"""Fault injection on tiny runs: each fault ends in its documented exit code with a one-line
message (no traceback on the console), and nothing computed before the fault is lost.

Exit codes (pipeline/errors.py): 2 config, 4 data, 5 stage, 6 export parity, 8 artefact
(changed, missing, corrupt or truncated), 9 storage (disk full, not writable).
"""

from __future__ import annotations

import errno
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import stages
from pipeline.__main__ import main
from pipeline.artifacts import CHECKPOINT_INDEX, Manifest, find_stage, read_checkpoint_index
from pipeline.config import load_config
from pipeline.errors import ArtefactError
from pipeline.runner import run_pipeline


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished tiny run; each test works on its own copy."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("faults")
    cfg = load_config(None, [*TINY, f"run_dir={root}", "name=base", "train.epochs=1"])
    run_pipeline(cfg)
    return cfg.run_path


@pytest.fixture
def run(base_run, tmp_path) -> tuple[Path, list[str]]:
    """(a copy of the finished run, CLI arguments that address it)."""
    from tests.conftest import TINY

    dst = tmp_path / "runs" / "base"
    shutil.copytree(base_run, dst)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    sets = sum((["--set", o] for o in [*TINY, f"run_dir={dst.parent}", "name=base"]), [])
    sets += ["--set", "train.epochs=1"]
    return dst, ["run", str(cfg), *sets]


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def _folder(run_dir: Path, stage: str) -> Path:
    return stages.folder(run_dir, stage)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-2000:]


# ---------------------------------------------------------------- integrity on every read


def test_changed_export_model_is_refused_by_only_validate_and_by_serving(run, capsys):
    run_dir, args = run
    model = _folder(run_dir, "export") / "model.onnx"
    _flip(model)
    assert main([*args, "--only", "validate"]) == 8
    err = capsys.readouterr().err
    _no_traceback(err)
    expected = find_stage(run_dir, "export").files["model.onnx"]
    assert str(model) in err and f"expected sha256 {expected}" in err and "found " in err
    assert "--from export" in err
    assert main([*args, "--only", "validate", "--force"]) == 8  # --force re-checks inputs too
    assert main(["triton", str(run_dir), "--out", str(run_dir.parent / "repo")]) == 8
    assert main(["tensorrt", str(run_dir)]) in (7, 8)  # no GPU here: refused either way
    from serving.artefacts import resolve_onnx

    with pytest.raises(ArtefactError, match="does not match its manifest"):
        resolve_onnx(run_dir)
    with pytest.raises(ArtefactError, match="does not match its manifest"):
        resolve_onnx(model)  # a stage's file named directly is checked as well
    assert main([*args, "--from", "export"]) == 0  # the way out the message names
    assert main([*args]) == 0


def test_changed_classifier_weights_stop_a_rebuild_from_export(run, capsys):
    run_dir, args = run
    weights = _folder(run_dir, "prune") / "classifier.safetensors"
    _flip(weights, at=0.999)  # a low byte of the last weight
    before = (_folder(run_dir, "export") / "model.onnx").read_bytes()
    assert main([*args, "--from", "export"]) == 8
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "classifier.safetensors does not match its manifest" in err and "--from prune" in err
    assert (_folder(run_dir, "export") / "model.onnx").read_bytes() == before  # nothing replaced


def test_deleted_manifest_is_reported_not_silently_retrained(run, capsys):
    run_dir, args = run
    (_folder(run_dir, "train") / "manifest.json").unlink()
    weights = (_folder(run_dir, "train") / "model.safetensors").read_bytes()
    assert main(args) == 8
    err = capsys.readouterr().err
    assert "has no readable manifest.json" in err and "--from train" in err
    assert (_folder(run_dir, "train") / "model.safetensors").read_bytes() == weights
    assert main([*args, "--from", "train"]) == 0  # asked for: the stage is rebuilt
    assert Manifest.load(_folder(run_dir, "train")).complete


# ---------------------------------------------------------------- NaN never passes


def test_nan_weights_fail_export_parity_as_nan(run, capsys, monkeypatch):
    run_dir, args = run
    import pipeline.models.io as io_mod

    real = io_mod.load_weights

    def poisoned(model, folder, stem):
        model = real(model, folder, stem)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
        return model

    monkeypatch.setattr(io_mod, "load_weights", poisoned)
    assert main([*args, "--from", "export"]) == 6
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "max |diff| nan" in err and "export.atol" in err
    assert (_folder(run_dir, "prune") / "classifier.safetensors").is_file()  # kept


def test_nan_and_inf_fail_every_gate(tiny_cfg):
    from pipeline.evaluation import check_gates
    from pipeline.gates import at_least, at_most, show

    for bad in (float("nan"), float("inf"), np.float32("nan")):
        assert not at_most(bad, 1.0) and not at_least(bad, 0.0)
    assert show(float("nan")) == "nan"
    gates = check_gates(tiny_cfg, {"torch": {"top1": 0.9}, "onnx": {"top1": float("nan")}})
    failed = {g["gate"] for g in gates if not g["passed"]}
    assert failed == {"onnx.top1 >= min_top1", "onnx.top1_drop <= max_top1_drop"}


def test_nan_logits_are_wrong_answers_and_fail_their_own_gate(tiny_cfg):
    from pipeline.evaluation import check_gates, predictions

    def half_nan(x):
        out = np.tile(np.array([[5.0, 0.0]]), (len(x), 1))
        out[::2] = np.nan  # every other image: a broken kernel's output
        return out

    pred, conf = predictions(half_nan, np.zeros((6, 1)))
    assert pred.tolist() == [-1, 0, -1, 0, -1, 0] and np.isnan(conf[0])
    arts = {"torch": {"top1": 1.0}, "onnx_int8": {"top1": 0.5, "nonfinite_outputs": 3}}
    failed = {g["gate"] for g in check_gates(tiny_cfg, arts) if not g["passed"]}
    assert "onnx_int8.nonfinite_outputs == 0" in failed


# ---------------------------------------------------------------- storage


def test_run_dir_under_a_regular_file_is_a_storage_error(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    code = main(["run", str(cfg), "--set", f"run_dir={blocker}", "--set", "train.epochs=1"])
    assert code == 9
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "cannot write" in err and str(blocker) in err


def test_full_disk_while_writing_a_manifest_keeps_earlier_stages(run, capsys, monkeypatch):
    run_dir, args = run
    import pipeline.artifacts as artifacts

    real = artifacts.write_text_atomic

    def full(path, text):
        if path.parent.name.startswith(_folder(run_dir, "export").name):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(artifacts, "write_text_atomic", full)
    assert main([*args, "--from", "export"]) == 9
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "No space left on device" in err
    assert Manifest.load(_folder(run_dir, "prune")).complete  # what came before is intact


def test_full_disk_during_a_checkpoint_then_resume(tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    from tests.conftest import TINY

    real, saves = Accelerator.save_state, {"n": 0}

    def failing(self, output_dir=None, **kw):
        saves["n"] += 1
        if saves["n"] == 2:  # torch.save reports a full disk as a RuntimeError
            raise RuntimeError(
                "[enforce fail] PytorchStreamWriter failed writing file data/0: file write failed"
            )
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", failing)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    sets = sum((["--set", o] for o in [*TINY, f"run_dir={tmp_path / 'runs'}", "name=d"]), [])
    args = ["run", str(cfg), *sets, "--set", "train.checkpoint_every_steps=8", "--only", "train"]
    assert main(args) == 9
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "cannot write checkpoint" in err and "last good checkpoint" in err
    work = _folder(tmp_path / "runs" / "d", "train").with_name("01_train.partial")
    kept = read_checkpoint_index(work)["checkpoint"]
    assert kept["step"] == 8 and (work / "checkpoints" / kept["name"]).is_dir()
    monkeypatch.setattr(Accelerator, "save_state", real)
    assert main(args) == 0
    assert "resuming from checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- corrupt inputs


def _bomb_png(path: Path, side: int = 20_000) -> Path:
    """A PNG whose header claims side x side pixels (over Pillow's bomb limit), tiny on disk."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_a_bad_image(tmp_path, capsys):
    from pipeline.data import build_data
    from tests.fake_datasets import make_imagefolder

    fake = make_imagefolder(tmp_path)
    bomb = _bomb_png(fake.folder / "train" / "cat" / "zz-bomb.png")
    skip = load_config(
        None, ["data.name=imagefolder", f"data.root={fake.folder}", "data.on_bad_image=skip"]
    )
    bundle = build_data(skip.data)
    assert bundle.info["skipped_images"] == 1 and len(bundle.train) + len(bundle.val) == 15
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    code = main(
        [
            "run",
            str(cfg),
            "--set",
            "data.name=imagefolder",
            "--set",
            f"data.root={fake.folder}",
            "--set",
            f"run_dir={tmp_path / 'runs'}",
            "--only",
            "train",
        ]
    )
    assert code == 4
    err = capsys.readouterr().err
    _no_traceback(err)
    assert bomb.name in err


def _checkpointing_train_args(tmp_path: Path, name: str) -> list[str]:
    """`run` of the tiny training alone, checkpointing every 4 steps."""
    from tests.conftest import TINY

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    sets = sum((["--set", o] for o in [*TINY, f"run_dir={tmp_path / 'runs'}", f"name={name}"]), [])
    return ["run", str(cfg), *sets, "--set", "train.checkpoint_every_steps=4", "--only", "train"]


def _run_until_nan(monkeypatch, args: list[str], after: int = 10) -> int:
    """`main(args)` with the loss turning NaN after `after` steps, so the NaN policy stops the
    run and keeps its checkpoints; the real loss is back afterwards. Returns the exit code."""
    from pipeline.distill.methods.ce import CrossEntropy

    real, calls = CrossEntropy.loss, {"n": 0}

    def nan_after(self, out, y, epoch):
        calls["n"] += 1
        res = real(self, out, y, epoch)
        if calls["n"] > after:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(CrossEntropy, "loss", nan_after)
    try:
        return main(args)
    finally:
        monkeypatch.setattr(CrossEntropy, "loss", real)


def test_poisoned_checkpoint_falls_back_or_is_refused(tmp_path, capsys, monkeypatch):
    args = _checkpointing_train_args(tmp_path, "p")
    # stopped by the NaN policy, two checkpoints kept (steps 4 and 8)
    assert _run_until_nan(monkeypatch, args) == 5
    work = _folder(tmp_path / "runs" / "p", "train").with_name("01_train.partial")
    index = read_checkpoint_index(work)
    newest, older = index["checkpoints"][-1], index["checkpoints"][0]
    poison = work / "checkpoints" / newest / "optimizer.bin"
    poison.write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that runs code
    capsys.readouterr()
    assert main(args) == 0  # resumed from the checkpoint before
    err = capsys.readouterr().err
    assert f"checkpoint {newest} cannot be used" in err and "optimizer.bin is corrupt" in err
    assert f"checkpoints/{older}" in err and "weights_only=False" not in err

    # Every checkpoint damaged: refused, naming them, with the way out.
    shutil.rmtree(_folder(tmp_path / "runs" / "p", "train"))
    assert _run_until_nan(monkeypatch, [*args, "--force"]) == 5
    for name in read_checkpoint_index(work)["checkpoints"]:
        (work / "checkpoints" / name / "model.safetensors").write_bytes(b"junk")
    capsys.readouterr()
    assert main(args) == 8
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "no checkpoint in" in err and "--force" in err and "weights_only=False" not in err
    assert (work / CHECKPOINT_INDEX).is_file()  # nothing deleted: the user decides


def test_truncated_onnx_is_refused_by_the_server(run, tmp_path, capsys):
    run_dir, _ = run
    src = _folder(run_dir, "export") / "model.onnx"
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    pytest.importorskip("fastapi")
    assert main(["serve", str(cut), "--port", "1"]) == 8  # refused before binding a port
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "cannot load" in err and str(cut) in err and "truncated" in err
    assert main(["triton", str(cut), "--out", str(tmp_path / "repo")]) == 8


# ---------------------------------------------------------------- silent surprises


def test_empty_or_non_mapping_config_is_a_config_error(tmp_path, capsys):
    for text in ("", "# only a comment\n", "- a\n- list\n", "just words\n"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        assert main(["check", str(cfg)]) == 2, text
    err = capsys.readouterr().err
    assert "is empty" in err and "top level must be a mapping" in err


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from pipeline.data.base import decode_image
    from pipeline.images import to_rgb8

    grey16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # mean 32760
    path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        rgb = to_rgb8(im)
    assert rgb.shape == (64, 64, 3) and abs(float(rgb.mean()) - grey16.mean() / 257) < 0.6
    assert abs(float(decode_image(path).float().mean()) - grey16.mean() / 257) < 0.6


def test_internal_errors_exit_1_with_the_traceback_in_the_log(run, capsys, monkeypatch):
    run_dir, args = run
    import pipeline.evaluation as evaluation

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluation, "check_gates", broken)
    assert main([*args, "--only", "validate", "--force"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "internal error" in err and "ZeroDivisionError: a bug" in err
    assert "Traceback" in (run_dir / "pipeline.log").read_text()


def test_readme_documents_every_exit_code():
    import re

    from pipeline.errors import EXIT_CODES, INTERRUPTED_EXIT_CODE
    from tests.conftest import REPO

    documented = {
        int(c) for c in re.findall(r"^\| (\d+) \|", (REPO / "README.md").read_text(), re.M)
    }
    assert {*EXIT_CODES.values(), INTERRUPTED_EXIT_CODE} <= documented


def test_unfinished_run_under_another_config_is_discarded_with_the_reason(
    tmp_path, capsys, monkeypatch
):
    args = _checkpointing_train_args(tmp_path, "c")
    assert (
        _run_until_nan(monkeypatch, args) == 5
    )  # stopped, checkpoints kept in the unfinished folder
    work = _folder(tmp_path / "runs" / "c", "train").with_name("01_train.partial")
    step = read_checkpoint_index(work)["checkpoint"]["step"]
    capsys.readouterr()
    assert main([*args, "--set", "train.lr=0.05"]) == 0
    err = capsys.readouterr().err
    assert f"discarding an unfinished run in {work}" in err and f"step {step}" in err
    assert "its config differs (train.lr)" in err and "resuming from checkpoint" not in err

    # A torn checkpoint index under another key is discarded too, not refused.
    assert _run_until_nan(monkeypatch, [*args, "--set", "train.lr=0.02"]) == 5
    (work / CHECKPOINT_INDEX).write_text("{torn")
    assert main(args) == 0


def test_what_changed_names_config_keys_inputs_data_or_version():
    from pipeline.runner import _what_changed

    def m(**kw):
        base = dict(
            stage="train",
            key="k",
            config={"train": {"lr": 0.1, "distill": {"alpha": 1}}},
            inputs={},
            data={"fingerprint": "a"},
        )
        return Manifest(**{**base, **kw})

    nested = m(config={"train": {"lr": 0.1, "distill": {"alpha": 2}}, "model": {"w": 1}})
    assert _what_changed(m(), nested) == "its config differs (model, train.distill.alpha)"
    assert "earlier stage" in _what_changed(m(), m(inputs={"train": "x"}))
    assert "the data changed" in _what_changed(m(), m(data={"fingerprint": "b"}))
    assert "pipeline version" in _what_changed(m(), m())
