"""Every supported layout loads through build_data; bad files and bad layouts give clear errors."""

# ruff: noqa: F811  (pytest fixtures imported from tests/fake_datasets.py arrive as arguments)

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data import SOURCES, build_data, make_loader
from pipeline.data.base import FileImages, TensorImages
from pipeline.errors import DataError
from tests.conftest import REPO
from tests.fake_datasets import (  # noqa: F401  (fake_* are fixtures, used as arguments)
    MAKERS,
    class_red,
    corrupt,
    fake_cub200,
    fake_imagefolder,
    fake_tiny_imagenet,
    make_cifar10,
    make_stanford_dogs,
    write_image,
)


def cfg(name: str, root: Path, **kw) -> DataConfig:
    return DataConfig(name=name, root=root, **kw)


def named_counts(labels: list[int], classes: list[str]) -> Counter:
    return Counter(classes[i] for i in labels)


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("point_at", ["own", "parent"])
def test_layout_loads(tmp_path: Path, name: str, point_at: str) -> None:
    fake = MAKERS[name](tmp_path / "data")
    root = fake.folder if point_at == "own" else fake.folder.parent
    bundle = build_data(cfg(name, root, val_fraction=0.3))
    assert bundle.classes == fake.classes
    train_val = bundle.train.labels + bundle.val.labels
    assert named_counts(train_val, bundle.classes) == fake.train
    assert named_counts(bundle.test.labels, bundle.classes) == fake.test
    assert bundle.summary()["skipped_images"] == 0
    # Images and labels agree: the fakes paint each class's red channel.
    for ds in (bundle.train.base, bundle.test.base):
        for i in range(0, len(ds), max(1, len(ds) // 4)):
            red = ds.load(i)[0].float().mean().item()
            assert abs(red - class_red(ds.labels[i])) < 6, (name, i)
    x, y = next(iter(make_loader(bundle.train, 4, shuffle=True, workers=0)))
    size = bundle.preset.input_size
    assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32 and len(y) == len(x)


def test_every_source_has_a_fake_and_a_preset() -> None:
    from pipeline.data import PRESETS

    assert set(SOURCES) - {"digits"} == set(MAKERS)
    assert set(SOURCES) <= set(PRESETS)


def test_stanford_dogs_text_lists(tmp_path: Path) -> None:
    fake = make_stanford_dogs(tmp_path, lists="txt")
    bundle = build_data(cfg("stanford_dogs", fake.folder, val_fraction=0.0))
    assert named_counts(bundle.train.labels, bundle.classes) == fake.train
    assert bundle.summary()["class_ids"][0] == "n02085620-Chihuahua"


def test_val_split_is_stratified_deterministic_and_from_train_only(fake_imagefolder) -> None:
    c = cfg("imagefolder", fake_imagefolder.folder, val_fraction=0.4, split_seed=3)
    a, b = build_data(c), build_data(c)
    assert a.val.indices == b.val.indices and a.fingerprint == b.fingerprint
    assert not set(a.val.indices) & set(a.train.indices)
    assert a.val.base is a.train.base and a.test.base is not a.train.base
    assert set(Counter(a.val.labels).values()) == {2}  # 40% of 5 per class
    assert len(a.test) == sum(fake_imagefolder.test.values())
    other = build_data(cfg("imagefolder", fake_imagefolder.folder, val_fraction=0.4, split_seed=4))
    assert other.val.indices != a.val.indices


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_corrupt_image_fail_and_skip(fake_imagefolder, cache: str) -> None:
    bad = corrupt(fake_imagefolder.folder / "train" / "dog" / "0002.jpg")
    c = cfg("imagefolder", fake_imagefolder.folder, cache=cache)
    if cache == "memory":
        with pytest.raises(DataError, match=r"0002\.jpg.*on_bad_image=skip"):
            build_data(c)
    else:
        # Without a cache, fail mode reports the file when the loader reaches it.
        bundle = build_data(c)
        with pytest.raises(DataError, match=str(bad)):
            [bundle.train.base.load(i) for i in range(len(bundle.train.base))]
    skipped = build_data(
        cfg("imagefolder", fake_imagefolder.folder, cache=cache, on_bad_image="skip")
    )
    summary = skipped.summary()
    assert summary["skipped_images"] == 1
    assert summary["skipped_examples"][0].startswith("train/dog/0002.jpg")
    assert len(skipped.train) + len(skipped.val) == sum(fake_imagefolder.train.values()) - 1
    assert bad not in getattr(skipped.train.base, "paths", [])


def test_listed_file_missing(fake_cub200) -> None:
    victim = next((fake_cub200.folder / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DataError, match=r"images\.txt lists 1 file\(s\) that are not on disk"):
        build_data(cfg("cub200", fake_cub200.folder))
    bundle = build_data(cfg("cub200", fake_cub200.folder, on_bad_image="skip"))
    assert bundle.summary()["skipped_images"] == 1


def test_cache_choice(fake_imagefolder, fake_cub200) -> None:
    small = build_data(cfg("imagefolder", fake_imagefolder.folder))
    assert isinstance(small.train.base, TensorImages) and small.summary()["cache"] == "memory"
    tight = build_data(cfg("imagefolder", fake_imagefolder.folder, cache_max_gib=1e-6))
    assert isinstance(tight.train.base, FileImages)
    assert torch.equal(small.test.base.load(1), tight.test.base.load(1))
    mixed = build_data(cfg("cub200", fake_cub200.folder))  # differing sizes stay on disk
    assert isinstance(mixed.train.base, FileImages)
    with pytest.raises(DataError, match="cache=memory needs images of one size"):
        build_data(cfg("cub200", fake_cub200.folder, cache="memory"))


# --- wrong layouts ------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data: root .*nowhere' does not exist"):
        load_config(None, ["data.name=cub200", f"data.root={tmp_path / 'nowhere'}"])
    # A folder that disappears after the config was checked is still a clear data error.
    unchecked = DataConfig.model_construct(
        **{**DataConfig().model_dump(), "name": "cub200", "root": tmp_path / "nowhere"}
    )
    with pytest.raises(DataError, match=r"data.root .*nowhere does not exist"):
        build_data(unchecked)


def test_wrong_layout_names_expected_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    with pytest.raises(DataError) as err:
        build_data(cfg("tiny_imagenet", tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "wnids.txt") in msg and "tiny-imagenet-200/wnids.txt" in msg


def test_cub_index_file_missing(fake_cub200) -> None:
    (fake_cub200.folder / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match=r"expected an index file .* at .*image_class_labels\.txt"):
        build_data(cfg("cub200", fake_cub200.folder.parent))


def test_bad_index_line(fake_tiny_imagenet) -> None:
    ann = fake_tiny_imagenet.folder / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_99.JPEG n01443537 0 0 1 1\n")  # spaces, not tabs
    with pytest.raises(DataError, match=r"val_annotations\.txt line 7: expected 2 fields"):
        build_data(cfg("tiny_imagenet", fake_tiny_imagenet.folder))


def test_empty_class_folder(fake_imagefolder) -> None:
    (fake_imagefolder.folder / "train" / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/emu holds no images"):
        build_data(cfg("imagefolder", fake_imagefolder.folder))


def test_cifar_pickle_missing_key(tmp_path: Path) -> None:
    import pickle

    fake = make_cifar10(tmp_path)
    with (fake.folder / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": b""}, f)
    with pytest.raises(DataError, match=r"data_batch_3: key 'labels' missing"):
        build_data(cfg("cifar10", tmp_path))


def test_mit67_list_names_unknown_class(tmp_path: Path) -> None:
    fake = MAKERS["mit67"](tmp_path)
    (fake.folder / "TestImages.txt").write_text("garage/int1.jpg\n")
    with pytest.raises(
        DataError, match=r"TestImages\.txt line 1: 'garage/int1\.jpg' does not start"
    ):
        build_data(cfg("mit67", fake.folder))


def test_stanford_dogs_lists_missing(tmp_path: Path) -> None:
    fake = make_stanford_dogs(tmp_path)
    (fake.folder / "lists" / "test_list.mat").unlink()
    with pytest.raises(
        DataError, match=r"expected the official Stanford Dogs list .*lists/test_list\.mat"
    ):
        build_data(cfg("stanford_dogs", fake.folder))


def test_not_an_image_named_jpg(fake_imagefolder) -> None:
    write_image(fake_imagefolder.folder / "train" / "cat" / "x.jpg", 0).write_bytes(b"not an image")
    bundle = build_data(cfg("imagefolder", fake_imagefolder.folder, on_bad_image="skip"))
    assert bundle.summary()["skipped_images"] == 1


def test_auto_workers_follow_the_machine(fake_imagefolder, monkeypatch) -> None:
    import pipeline.data.base as base

    mem = build_data(cfg("imagefolder", fake_imagefolder.folder)).train
    files = build_data(cfg("imagefolder", fake_imagefolder.folder, cache="none")).train
    monkeypatch.setattr(base, "available_cpus", lambda: 2)
    assert base.resolve_workers("auto", mem) == 0 and base.resolve_workers("auto", files) == 0
    monkeypatch.setattr(base, "available_cpus", lambda: 16)
    assert base.resolve_workers("auto", mem) == 4 and base.resolve_workers("auto", files) == 8
    assert base.resolve_workers(3, files) == 3


REAL_CIFAR10_SMALL = REPO / ".." / "shared" / "datasets" / "cifar10-small"


@pytest.mark.skipif(
    not REAL_CIFAR10_SMALL.is_dir(), reason="../shared/datasets/cifar10-small absent"
)
def test_real_cifar10_small_loads_into_memory() -> None:
    bundle = build_data(cfg("imagefolder", REAL_CIFAR10_SMALL.resolve()))
    assert bundle.num_classes == 10 and bundle.classes[0] == "airplane"
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4500, 500, 1000)
    assert isinstance(bundle.train.base, TensorImages) and bundle.train.base.images.shape[1:] == (
        3,
        32,
        32,
    )


def test_digits_are_scikit_learns_whether_read_from_its_file_or_loaded(monkeypatch) -> None:
    """The digits are read from the CSV file scikit-learn ships, without importing it (seconds
    in every process); the arrays, and so the data fingerprint, are `load_digits`' own, and
    `load_digits` itself serves where the file is not found."""
    import importlib.util

    from sklearn.datasets import load_digits

    from pipeline.data.sources import basic

    bunch = load_digits()
    images, labels = basic._digits_arrays()
    assert images.dtype == bunch.images.dtype and images.tobytes() == bunch.images.tobytes()
    assert labels.tolist() == bunch.target.tolist()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, labels = basic._digits_arrays()
    assert images.tobytes() == bunch.images.tobytes() and labels.tolist() == bunch.target.tolist()


def test_building_the_digits_does_not_import_scikit_learn() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipeline.config import DataConfig\n"
        "from pipeline.data import build_data\n"
        "bundle = build_data(DataConfig(name='digits'))\n"
        "assert len(bundle.classes) == 10 and len(bundle.test) > 300\n"
        "print('sklearn' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
