"""Tiny fake copies of every supported on-disk layout, in the official index-file formats.

Each `make_*` writes a data set under `parent` in its official folder name and returns a
`FakeSet` (the data set's own folder, class names, per-class counts). Pixel values encode the
class (red channel = CLASS_RED[i]), so tests can check that images and labels agree after loading.
Fixtures with the same names minus `make_` wrap them over `tmp_path`.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


def class_red(i: int) -> int:
    return 30 + 40 * i


@dataclass
class FakeSet:
    folder: Path  # the data set's own folder; its parent is the "folder that holds it"
    classes: list[str]
    train: Counter  # class name -> number of train images
    test: Counter


def write_image(path: Path, cls: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """A real JPEG/PNG (by suffix) whose red channel is class_red(cls) and the rest noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    arr[..., 0] = class_red(cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(arr).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def corrupt(path: Path) -> Path:
    """Keep the first bytes only: a truncated file that Pillow cannot fully decode."""
    data = path.read_bytes()
    path.write_bytes(data[: max(20, len(data) // 3)])
    return path


# --- CIFAR ---------------------------------------------------------------------------------------


def _cifar_images(labels: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    x[:, 0] = np.asarray([class_red(c) for c in labels], dtype=np.uint8)[:, None, None]
    return x.reshape(len(labels), 3072)


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(parent: Path, per_batch: int = 6, n_test: int = 6) -> FakeSet:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird"]  # a well-formed subset: three of the ten classes
    train = Counter()
    for b in range(1, 6):
        labels = [(b + i) % 3 for i in range(per_batch)]
        train.update(names[c] for c in labels)
        data = _cifar_images(labels, seed=b)
        _dump(
            folder / f"data_batch_{b}",
            {b"batch_label": b"training batch", b"labels": labels, b"data": data},
        )
    test_labels = [i % 3 for i in range(n_test)]
    _dump(folder / "test_batch", {b"labels": test_labels, b"data": _cifar_images(test_labels, 9)})
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return FakeSet(folder, names, train, Counter(names[c] for c in test_labels))


def make_cifar100(parent: Path, n_train: int = 20, n_test: int = 8) -> FakeSet:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby", "bear"]
    sets = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        labels = [i % len(names) for i in range(n)]
        sets[split] = Counter(names[c] for c in labels)
        _dump(
            folder / split,
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": split.encode(),
                b"fine_labels": labels,
                b"coarse_labels": [0] * n,
                b"data": _cifar_images(labels, seed),
            },
        )
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"fruit"]}
    _dump(folder / "meta", meta)
    return FakeSet(folder, names, sets["train"], sets["test"])


# --- Folder layouts -------------------------------------------------------------------------------


def make_imagefolder(parent: Path, n_train: int = 5, n_test: int = 2, size=(32, 32)) -> FakeSet:
    folder = parent / "images"
    names = ["cat", "dog", "frog"]
    for c, name in enumerate(names):
        for i in range(n_train):
            write_image(folder / "train" / name / f"{i:04d}.jpg", c, size, seed=100 * c + i)
        for i in range(n_test):
            write_image(folder / "test" / name / f"{i:04d}.png", c, size, seed=1000 + 100 * c + i)
    return FakeSet(
        folder, names, Counter({n: n_train for n in names}), Counter({n: n_test for n in names})
    )


def make_tiny_imagenet(parent: Path, n_train: int = 4, n_val: int = 2) -> FakeSet:
    folder = parent / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    words = [
        "goldfish, Carassius auratus",
        "European fire salamander, Salamandra salamandra",
        "bullfrog",
    ]
    folder.mkdir(parents=True)
    # wnids.txt is not sorted in the official file; the class order must not depend on it.
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    extra = "n00001740\tentity\n"  # words.txt covers all of WordNet, not just the 200 classes
    (folder / "words.txt").write_text(
        extra + "".join(f"{w}\t{d}\n" for w, d in zip(wnids, words, strict=True))
    )
    ann = []
    for c, wnid in enumerate(wnids):
        for i in range(n_train):
            write_image(
                folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                c,
                (64, 64),
                seed=10 * c + i,
            )
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        for i in range(n_val):
            name = f"val_{c * n_val + i}.JPEG"
            write_image(folder / "val" / "images" / name, c, (64, 64), seed=500 + 10 * c + i)
            ann.append(f"{name}\t{wnid}\t1\t2\t60\t61\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(ann))
    write_image(folder / "test" / "images" / "test_0.JPEG", 0, (64, 64))  # unlabelled: ignored
    names = ["goldfish", "European fire salamander", "bullfrog"]
    return FakeSet(
        folder, names, Counter({n: n_train for n in names}), Counter({n: n_val for n in names})
    )


def make_cub200(parent: Path, per_class: int = 4) -> FakeSet:
    folder = parent / "CUB_200_2011"
    dirs = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split, train, test = [], [], [], Counter(), Counter()
    img_id = 0
    for c, d in enumerate(dirs):
        name = d.split(".", 1)[1]
        for i in range(per_class):
            img_id += 1
            rel = f"{d}/{name}_{i:04d}_{img_id}.jpg"
            # Fine-grained photos differ in size; the loader must cope.
            write_image(folder / "images" / rel, c, (40 + 4 * i, 30 + 2 * c), seed=img_id)
            is_train = i % 2 == 0
            (train if is_train else test)[name] += 1
            images.append(f"{img_id} {rel}\n")
            labels.append(f"{img_id} {c + 1}\n")
            split.append(f"{img_id} {int(is_train)}\n")
    (folder / "images.txt").write_text("".join(images))
    (folder / "image_class_labels.txt").write_text("".join(labels))
    (folder / "train_test_split.txt").write_text("".join(split))
    (folder / "classes.txt").write_text("".join(f"{c + 1} {d}\n" for c, d in enumerate(dirs)))
    return FakeSet(folder, [d.split(".", 1)[1] for d in dirs], train, test)


def make_mit67(parent: Path, per_class: int = 4) -> FakeSet:
    folder = parent / "indoorCVPR_09"
    names = ["bar", "bedroom", "kitchen"]
    train_lines, test_lines = [], []
    for c, name in enumerate(names):
        for i in range(per_class):
            rel = f"{name}/int{c}{i:03d}.jpg"
            write_image(folder / "Images" / rel, c, (48, 36), seed=20 * c + i)
            (train_lines if i < per_class - 1 else test_lines).append(rel)
    # The official lists use Windows line endings.
    (folder / "TrainImages.txt").write_text("\r\n".join(train_lines) + "\r\n")
    (folder / "TestImages.txt").write_text("\r\n".join(test_lines) + "\r\n")
    return FakeSet(
        folder, names, Counter({n: per_class - 1 for n in names}), Counter({n: 1 for n in names})
    )


def make_stanford_dogs(parent: Path, per_class: int = 3, lists: str = "mat") -> FakeSet:
    from scipy.io import savemat

    folder = parent / "stanford_dogs"
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    split: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for c, breed in enumerate(breeds):
        wnid = breed.split("-")[0]
        for i in range(per_class):
            rel = f"{breed}/{wnid}_{i}.jpg"
            write_image(folder / "Images" / rel, c, (50, 40), seed=30 * c + i)
            split["train" if i < per_class - 1 else "test"].append((rel, c + 1))
    (folder / "lists").mkdir()
    for name, rows in split.items():
        if lists == "txt":
            (folder / "lists" / f"{name}_list.txt").write_text("".join(r + "\n" for r, _ in rows))
            continue
        # MATLAB cell arrays: an (N, 1) object array whose entries are 1-element string arrays.
        cells = np.empty((len(rows), 1), dtype=object)
        for i, (rel, _) in enumerate(rows):
            cells[i, 0] = np.array([rel])
        labels = np.array([[lab] for _, lab in rows], dtype=np.float64)
        savemat(
            folder / "lists" / f"{name}_list.mat",
            {"file_list": cells, "annotation_list": cells, "labels": labels},
        )
    names = [b.split("-", 1)[1] for b in breeds]
    return FakeSet(
        folder, names, Counter({n: per_class - 1 for n in names}), Counter({n: 1 for n in names})
    )


MAKERS = {
    "cifar10": make_cifar10,
    "cifar100": make_cifar100,
    "imagefolder": make_imagefolder,
    "tiny_imagenet": make_tiny_imagenet,
    "cub200": make_cub200,
    "mit67": make_mit67,
    "stanford_dogs": make_stanford_dogs,
}


@pytest.fixture
def fake_imagefolder(tmp_path: Path) -> FakeSet:
    return make_imagefolder(tmp_path)


@pytest.fixture
def fake_cub200(tmp_path: Path) -> FakeSet:
    return make_cub200(tmp_path)


@pytest.fixture
def fake_tiny_imagenet(tmp_path: Path) -> FakeSet:
    return make_tiny_imagenet(tmp_path)
