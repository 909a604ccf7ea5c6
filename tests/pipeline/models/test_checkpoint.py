"""A user's own checkpoint: read the ways people save them (safetensors, torch files, nested
under common keys, wrapper prefixes, beside training state), never by running pickled code,
and fitted to a built model strictly except for a classifier head sized for other classes."""

from __future__ import annotations

import argparse
import hashlib
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18

from pipeline.errors import ArtefactError, ConfigError
from pipeline.models.checkpoint import (
    NESTED_KEYS,
    Checkpoint,
    FitReport,
    fit_checkpoint,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(classes: int = 3, channels: int = 4, seed: int = 0) -> nn.Sequential:
    """Conv, BatchNorm (its running stats moved off their defaults), pooled, flattened, linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, channels, 3),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 6, 6))  # running_mean/var and num_batches_tracked change
    return net.eval()


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def assert_loaded(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Every tensor of `model` equals the source's (and differed before: callers use another
    seed for the target)."""
    assert_same(state_of(model), source)


def fits(tmp_path: Path, saved: object, name: str = "ckpt.pt") -> Checkpoint:
    path = tmp_path / name
    torch.save(saved, path)
    return read_checkpoint(path)


# --- formats ---------------------------------------------------------------------------------


def test_safetensors_file_is_read_and_fitted(tmp_path) -> None:
    src = state_of(tiny(seed=0))
    path = tmp_path / "weights.safetensors"
    save_file(src, str(path))
    ckpt = read_checkpoint(str(path))  # a str path too
    assert ckpt.path == path
    assert_same(ckpt.state, src)
    assert ckpt.state["1.num_batches_tracked"].dtype == torch.int64  # kept as it is
    assert (ckpt.nested_key, ckpt.stripped_prefixes, ckpt.other_entries) == (None, (), ())
    target = tiny(seed=1)
    assert not torch.equal(target[0].weight, src["0.weight"])
    report = fit_checkpoint(target, ckpt, head="5")
    assert report == FitReport(head_replaced=None, head_classes=None, loaded=len(src))
    assert_loaded(target, src)


@pytest.mark.parametrize("name", ["weights.pt", "model.bin", "no_extension"])
def test_safetensors_is_recognised_by_its_content(tmp_path, name) -> None:
    src = state_of(tiny())
    path = tmp_path / name
    save_file(src, str(path))
    assert_same(read_checkpoint(path).state, src)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".bin", ".ckpt", ""])
def test_bare_torch_state_dict(tmp_path, suffix) -> None:
    model = tiny(seed=0)
    ckpt = fits(tmp_path, model.state_dict(), f"weights{suffix}")  # an OrderedDict
    src = state_of(model)
    assert_same(ckpt.state, src)
    assert type(ckpt.state) is dict
    assert (ckpt.nested_key, ckpt.stripped_prefixes, ckpt.other_entries) == (None, (), ())
    target = tiny(seed=1)
    assert fit_checkpoint(target, ckpt, head=None).loaded == len(src)
    assert_loaded(target, src)


def test_legacy_torch_serialisation_is_read(tmp_path) -> None:
    src = state_of(tiny())
    path = tmp_path / "old.pth"
    torch.save(src, path, _use_new_zipfile_serialization=False)
    assert_same(read_checkpoint(path).state, src)


def test_sha256_is_that_of_the_files_bytes(tmp_path) -> None:
    src = {"big.weight": torch.randn(700_000), "small.bias": torch.ones(3)}  # > 2 MiB: 3 blocks
    for path in (tmp_path / "w.pt", tmp_path / "w.safetensors"):
        if path.suffix == ".pt":
            torch.save(src, path)
        else:
            save_file(src, str(path))
        assert path.stat().st_size > 2 * (1 << 20)
        assert read_checkpoint(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- finding the state dict ------------------------------------------------------------------


@pytest.mark.parametrize("key", NESTED_KEYS)
def test_nested_under_each_common_key(tmp_path, key) -> None:
    src = state_of(tiny())
    ckpt = fits(tmp_path, {"epoch": 3, key: src, "note": "best"})
    assert ckpt.nested_key == key
    assert ckpt.other_entries == ("epoch", "note")
    assert_same(ckpt.state, src)


def test_nested_two_levels(tmp_path) -> None:
    src = state_of(tiny())
    ckpt = fits(tmp_path, {"model": {"state_dict": src, "config": {"depth": 18}}, "epoch": 1})
    assert ckpt.nested_key == "model/state_dict"
    assert ckpt.other_entries == ("epoch",)
    assert_same(ckpt.state, src)


def test_the_preferred_key_wins_over_the_later_ones(tmp_path) -> None:
    first, second = state_of(tiny(seed=0)), state_of(tiny(seed=1))
    ckpt = fits(tmp_path, {"model": second, "state_dict": first})
    assert ckpt.nested_key == "state_dict"
    assert ckpt.other_entries == ("model",)
    assert_same(ckpt.state, first)


def test_beside_epoch_best_acc_and_optimizer_state(tmp_path) -> None:
    model = tiny(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()  # the optimizer's state now holds momentum tensors
    src = state_of(model)
    saved = {
        "epoch": 7,
        "best_acc": 0.91,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler": {"last_epoch": 7},
    }
    ckpt = fits(tmp_path, saved)
    assert ckpt.nested_key == "model_state_dict"
    assert ckpt.other_entries == ("epoch", "best_acc", "optimizer_state_dict", "scheduler")
    assert_same(ckpt.state, src)
    target = tiny(seed=1)
    fit_checkpoint(target, ckpt, head="5")
    assert_loaded(target, src)


def test_timm_style_checkpoint_prefers_the_weights_to_their_ema(tmp_path) -> None:
    """timm's train.py saves its argparse arguments and the EMA copy beside the weights."""
    weights, ema = state_of(tiny(seed=0)), state_of(tiny(seed=1))
    saved = {
        "epoch": 10,
        "arch": "resnet18",
        "state_dict": weights,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "version": 2,
        "args": argparse.Namespace(model="resnet18", lr=0.1),
        "metric": 77.5,
        "state_dict_ema": {f"module.{k}": v for k, v in ema.items()},
    }
    ckpt = fits(tmp_path, saved, "checkpoint-10.pth.tar")
    assert ckpt.nested_key == "state_dict"
    assert_same(ckpt.state, weights)
    assert "args" in ckpt.other_entries and "state_dict_ema" in ckpt.other_entries


@pytest.mark.parametrize("key", ["model_ema", "state_dict_ema", "ema"])
def test_ema_weights_are_used_when_they_are_the_only_ones(tmp_path, key) -> None:
    ema = state_of(tiny(seed=2))
    ckpt = fits(tmp_path, {"epoch": 4, key: {f"module.{k}": v for k, v in ema.items()}})
    assert ckpt.nested_key == key  # says where the weights came from
    assert ckpt.stripped_prefixes == ("module.",)
    assert_same(ckpt.state, ema)


def test_a_single_state_dict_under_another_name_is_found(tmp_path) -> None:
    src = state_of(tiny())
    ckpt = fits(tmp_path, {"student": src, "step": 100})
    assert (ckpt.nested_key, ckpt.other_entries) == ("student", ("step",))
    assert_same(ckpt.state, src)


def test_an_unusual_name_and_its_ema_copy_pick_the_weights(tmp_path) -> None:
    weights, ema = state_of(tiny(seed=0)), state_of(tiny(seed=1))
    ckpt = fits(tmp_path, {"student_ema": ema, "student": weights})
    assert (ckpt.nested_key, ckpt.other_entries) == ("student", ("student_ema",))
    assert_same(ckpt.state, weights)


def test_several_state_dicts_under_unusual_names_are_ambiguous(tmp_path) -> None:
    src = state_of(tiny())
    with pytest.raises(ArtefactError) as err:
        fits(tmp_path, {"generator": src, "discriminator": src})
    assert "several state dicts" in str(err.value)
    assert "'generator'" in str(err.value) and "'discriminator'" in str(err.value)


def test_several_state_dicts_deeper_down_do_not_hide_the_preferred_one(tmp_path) -> None:
    weights, other = state_of(tiny(seed=0)), state_of(tiny(seed=1))
    ckpt = fits(tmp_path, {"extras": {"a": other, "b": other}, "state_dict": weights})
    assert ckpt.nested_key == "state_dict"
    assert_same(ckpt.state, weights)
    with pytest.raises(ArtefactError, match="several state dicts \\('extras/a', 'extras/b'\\)"):
        fits(tmp_path, {"extras": {"a": other, "b": other}, "epoch": 1})


def test_a_mixed_top_level_is_the_state_dict_without_its_other_entries(tmp_path) -> None:
    src = state_of(tiny())
    ckpt = fits(tmp_path, {**src, "epoch": 3, "arch": "tiny"})
    assert ckpt.nested_key is None
    assert ckpt.other_entries == ("epoch", "arch")
    assert_same(ckpt.state, src)


@pytest.mark.parametrize(
    ("saved", "found"),
    [
        ([torch.ones(2), torch.zeros(2), 3], "found a list of 3 items"),
        ({"a": 1, "b": 2}, "found a dict with keys ['a', 'b'] and no tensors"),
        ({f"k{i}": i for i in range(7)}, "['k0', 'k1', 'k2', 'k3', 'k4' (+2 more)]"),
        ({"model": {"name": "resnet18"}, "epoch": 1}, "found a dict with keys ['model', 'epoch']"),
        (torch.ones(2, 3), "found a single tensor of shape (2, 3)"),
    ],
)
def test_not_a_state_dict(tmp_path, saved, found) -> None:
    with pytest.raises(ArtefactError) as err:
        fits(tmp_path, saved)
    message = str(err.value)
    assert "not a state dict" in message and found in message
    assert str(tmp_path / "ckpt.pt") in message
    assert 'torch.save(model.state_dict(), "weights.pt")' in message
    assert err.value.exit_code == 8


# --- prefixes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefixes",
    [("module.",), ("_orig_mod.",), ("_orig_mod.", "module."), ("module.", "_orig_mod.")],
)
def test_wrapper_prefixes_are_stripped(tmp_path, prefixes) -> None:
    src = state_of(tiny(seed=0))
    whole = "".join(prefixes)
    ckpt = fits(tmp_path, {"state_dict": {whole + k: v for k, v in src.items()}})
    assert ckpt.stripped_prefixes == prefixes
    assert_same(ckpt.state, src)
    target = tiny(seed=1)
    fit_checkpoint(target, ckpt, head="5")
    assert_loaded(target, src)


def test_data_parallel_state_dict(tmp_path) -> None:
    model = tiny(seed=0)
    ckpt = fits(tmp_path, nn.DataParallel(model).state_dict())
    assert ckpt.stripped_prefixes == ("module.",)
    assert_same(ckpt.state, state_of(model))


def test_a_prefix_only_some_keys_carry_is_kept(tmp_path) -> None:
    src = state_of(tiny())
    src["module.extra"] = torch.ones(1)
    ckpt = fits(tmp_path, src)
    assert ckpt.stripped_prefixes == ()
    assert set(ckpt.state) == set(src)


@pytest.mark.parametrize("inner", ["", "_orig_mod."])
def test_lightning_model_prefix_is_removed_when_fitting(tmp_path, inner) -> None:
    src = state_of(tiny(seed=0))
    saved = {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{inner}{k}": v for k, v in src.items()},
        "hyper_parameters": {"lr": 0.1},
    }
    ckpt = fits(tmp_path, saved, "epoch=2-step=40.ckpt")
    assert ckpt.nested_key == "state_dict"
    assert ckpt.stripped_prefixes == ()  # `model.` is left to fit_checkpoint
    kept = {k: v.clone() for k, v in ckpt.state.items()}
    target = tiny(seed=1)
    report = fit_checkpoint(target, ckpt, head="5")
    assert report.prefix_removed == "model."
    assert report.loaded == len(src)
    assert_loaded(target, src)
    assert_same(ckpt.state, kept)  # not changed
    assert all(k.startswith("model.") for k in ckpt.state)


def test_a_model_whose_own_keys_share_a_prefix_keeps_it(tmp_path) -> None:
    class Wrapped(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.model = tiny(seed=seed)

    src = state_of(Wrapped(0))
    assert all(k.startswith("model.") for k in src)
    target = Wrapped(1)
    report = fit_checkpoint(target, fits(tmp_path, src), head="model.5")
    assert report.prefix_removed is None
    assert_loaded(target, src)


# --- fitting ---------------------------------------------------------------------------------


def test_resnet_head_of_1000_classes_is_replaced_for_10(tmp_path) -> None:
    torch.manual_seed(0)
    source = resnet18(num_classes=1000)  # random weights, nothing downloaded
    src = state_of(source)
    ckpt = fits(tmp_path, {"state_dict": {f"module.{k}": v for k, v in src.items()}})
    kept = {k: v.clone() for k, v in ckpt.state.items()}
    torch.manual_seed(1)
    target = resnet18(num_classes=10)
    head_before = (target.fc.weight.detach().clone(), target.fc.bias.detach().clone())

    report = fit_checkpoint(target, ckpt, head="fc")

    assert report.head_replaced == "fc"
    assert report.head_classes == (1000, 10)
    assert report.loaded == len(src) - 2
    assert report.to_dict() == {
        "head_replaced": "fc",
        "head_classes": [1000, 10],
        "loaded": len(src) - 2,
        "prefix_removed": None,
    }
    after = state_of(target)
    body = [k for k in src if not k.startswith("fc.")]
    assert len(body) == len(src) - 2
    for k in body:
        assert torch.equal(after[k], src[k]), k
    assert torch.equal(target.fc.weight, head_before[0])  # the freshly built head stays
    assert torch.equal(target.fc.bias, head_before[1])
    assert target.fc.weight.shape == (10, 512)
    assert_same(ckpt.state, kept)


def test_head_in_a_nested_module_with_the_same_classes_is_loaded(tmp_path) -> None:
    def net(seed: int, classes: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(12, 6), nn.Sequential(nn.Dropout(), nn.Linear(6, classes))
        )

    src = state_of(net(0, 5))
    same = net(1, 5)
    assert fit_checkpoint(same, fits(tmp_path, src), head="2.1").head_replaced is None
    assert_loaded(same, src)
    other = net(1, 7)
    report = fit_checkpoint(other, fits(tmp_path, src), head="2.1")
    assert (report.head_replaced, report.head_classes) == ("2.1", (5, 7))
    assert torch.equal(other[1].weight, src["1.weight"])


def test_another_class_count_without_a_head_named_is_an_error(tmp_path) -> None:
    ckpt = fits(tmp_path, tiny(classes=1000).state_dict())
    with pytest.raises(ArtefactError) as err:
        fit_checkpoint(tiny(classes=10), ckpt, head=None)
    message = str(err.value)
    assert (
        "shape mismatches: 5.weight: file (1000, 4) vs model (10, 4); 5.bias: file (1000,) vs model (10,)"
        in message
    )


def test_a_head_with_other_input_features_is_not_replaced(tmp_path) -> None:
    src = state_of(tiny(classes=1000, channels=4))
    src["5.weight"] = torch.zeros(1000, 8)
    target = tiny(classes=10, seed=1)
    before = state_of(target)
    with pytest.raises(ArtefactError) as err:
        fit_checkpoint(target, fits(tmp_path, src), head="5")
    assert "5.weight: file (1000, 8) vs model (10, 4)" in str(err.value)
    assert_same(state_of(target), before)  # nothing loaded


def test_shape_mismatch_off_the_head_is_an_error_and_loads_nothing(tmp_path) -> None:
    ckpt = fits(tmp_path, tiny(channels=8, classes=10).state_dict())
    target = tiny(channels=4, classes=10, seed=1)
    before = state_of(target)
    with pytest.raises(ArtefactError) as err:
        fit_checkpoint(target, ckpt, head="5")
    message = str(err.value)
    assert str(tmp_path / "ckpt.pt") in message
    assert "0.weight: file (8, 3, 3, 3) vs model (4, 3, 3, 3)" in message
    assert "1.running_mean: file (8,) vs model (4,) (+2 more)" in message  # 7, the first 5 named
    assert "missing keys" not in message and "unexpected keys" not in message
    assert "model.width" in message and "another architecture" not in message
    assert err.value.exit_code == 8
    assert_same(state_of(target), before)


def test_wrong_architecture_lists_the_keys(tmp_path) -> None:
    torch.manual_seed(0)
    ckpt = fits(tmp_path, {"state_dict": resnet18(num_classes=10).state_dict()})
    target = tiny(seed=1)
    before = state_of(target)
    with pytest.raises(ArtefactError) as err:
        fit_checkpoint(target, ckpt, head="5")
    message = str(err.value)
    assert f"checkpoint {tmp_path / 'ckpt.pt'} (under `state_dict`) does not fit" in message
    assert (
        "missing keys (in the model, not in the file): 0.weight, 0.bias, 1.weight, 1.bias, "
        "1.running_mean (+3 more)"
    ) in message  # num_batches_tracked is not required: loading fills it in
    assert (
        "unexpected keys (in the file, not in the model): conv1.weight, bn1.weight, bn1.bias, "
        "bn1.running_mean, bn1.running_var (+"
    ) in message
    assert "another architecture" in message and "model.name" in message
    assert "model.source" in message
    assert_same(state_of(target), before)


def test_a_file_without_batchnorm_counters_still_loads(tmp_path) -> None:
    """Files saved before PyTorch 0.4.1 (torchvision's first ImageNet weights) lack them."""
    src = state_of(tiny(seed=0))
    del src["1.num_batches_tracked"]
    target = tiny(seed=1)
    target[1].num_batches_tracked.fill_(5)
    before = target[1].num_batches_tracked.clone()
    report = fit_checkpoint(target, fits(tmp_path, src), head="5")
    assert report.loaded == len(src)
    after = state_of(target)
    for k in src:
        assert torch.equal(after[k], src[k]), k
    assert torch.equal(after["1.num_batches_tracked"], before)  # the model's own


def test_an_unknown_head_name_is_a_config_error(tmp_path) -> None:
    ckpt = fits(tmp_path, tiny().state_dict())
    with pytest.raises(ConfigError) as err:
        fit_checkpoint(tiny(), ckpt, head="classifier")
    assert "`classifier`" in str(err.value) and "linear layers: 5" in str(err.value)


# --- refused and unreadable files ------------------------------------------------------------


def test_a_whole_pickled_module_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny(), path)
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message
    assert "pickled Python objects beyond tensors" in message
    listed = (  # the model's class first, then the rest sorted (the same on every run)
        "(torch.nn.modules.container.Sequential, torch.nn.modules.activation.ReLU, "
        "torch.nn.modules.batchnorm.BatchNorm2d, torch.nn.modules.conv.Conv2d, "
        "torch.nn.modules.flatten.Flatten (+2 more))"
    )
    assert listed in message
    assert "would run code from the file" in message
    assert 'torch.save(model.state_dict(), "weights.pt")' in message
    assert "safetensors" in message
    assert err.value.exit_code == 8


def _write_marker(marker: str) -> nn.Module:
    Path(marker).write_text("code from the checkpoint ran")
    return nn.Linear(2, 2)


class Payload(nn.Module):
    """Unpickling it calls `_write_marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.fc = nn.Linear(2, 2)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


@pytest.mark.parametrize("where", ["whole", "beside"])
def test_pickled_code_never_runs(tmp_path, where) -> None:
    marker = tmp_path / "ran.txt"
    payload = Payload(marker)
    saved = payload if where == "whole" else {"state_dict": state_of(tiny()), "extra": payload}
    path = tmp_path / "evil.pt"
    torch.save(saved, path)
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(path)
    assert "_write_marker" in str(err.value)
    assert not marker.exists()
    # the file really does run code when loaded the unsafe way: the check above can fail
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code from the checkpoint ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_a_plain_pickle_is_refused_unread(tmp_path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "model.pkl"
    with path.open("wb") as f:
        pickle.dump(Payload(marker), f, protocol=4)
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(path)
    assert "safe loader" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def _truncated_pt(tmp_path: Path) -> Path:
    path = tmp_path / "cut.pt"
    torch.save(state_of(tiny()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "cut.safetensors"
    save_file(state_of(tiny()), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    return path


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all\n" * 10)
    return path


def _bad_header(tmp_path: Path) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 16)
    return path


def _corrupt_zip_member(tmp_path: Path) -> Path:
    path = tmp_path / "flipped.pt"
    torch.save(state_of(tiny()), path)
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + 40
    data[start : start + 30] = b"\xff" * 30  # the pickle's bytes, not the zip directory
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make", [_truncated_pt, _truncated_safetensors, _garbage, _bad_header, _corrupt_zip_member]
)
def test_corrupt_or_truncated_file(tmp_path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert f"checkpoint {path}" in message
    assert "corrupt" in message or "damaged" in message
    assert err.value.exit_code == 8


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(ArtefactError, match=r"empty \(0 bytes\)"):
        read_checkpoint(path)


def test_missing_file_and_folder(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(missing)
    assert f"checkpoint {missing} does not exist" in str(err.value)
    folder = tmp_path / "run"
    folder.mkdir()
    save_file(state_of(tiny()), str(folder / "model.safetensors"))
    with pytest.raises(ArtefactError) as err:
        read_checkpoint(folder)
    assert f"checkpoint {folder} is a folder" in str(err.value)
    assert "model.safetensors" in str(err.value)


def test_ordered_dict_checkpoint_keeps_the_order(tmp_path) -> None:
    src = OrderedDict((k, v) for k, v in reversed(list(state_of(tiny()).items())))
    assert list(fits(tmp_path, src).state) == list(src)
