"""Fine-grained sets with official splits: CUB-200-2011 and Stanford Dogs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.data.base import SourceData
from pipeline.data.files import FileList
from pipeline.data.sources.common import (
    check_listed,
    file_source,
    locate,
    read_rows,
    require_dir,
    require_every_class,
    require_listed_files,
    to_int,
)
from pipeline.data.sources.folders import class_folders, listed_files
from pipeline.data.sources.registry import register_source
from pipeline.errors import DataError


def _id_table(path: Path, fmt: str) -> dict[int, str]:
    """'<id> <value>' lines -> {id: value}; duplicate ids are a malformed file."""
    table: dict[int, str] = {}
    for n, parts in read_rows(path, 2, fmt):
        key = to_int(parts[0], path, n, fmt)
        if key in table:
            raise DataError(f"{path} line {n}: id {key} appears twice; expected one line per id")
        table[key] = " ".join(parts[1:])
    return table


def _lookup(table: dict[int, str], key: int, path: Path, source: Path) -> str:
    if key not in table:
        raise DataError(
            f"{path} has no line for id {key}, which {source} lists; the index files disagree"
        )
    return table[key]


@register_source("cub200")
def cub200(cfg) -> SourceData:
    """CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}."""
    layout = (
        "CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}"
    )
    root = locate(cfg, "CUB-200-2011", "images.txt", ("CUB_200_2011",), layout)
    images_dir = require_dir(root / "images", "the CUB image folder images/<class>/")
    class_rows = _id_table(root / "classes.txt", "1 001.Black_footed_Albatross")
    class_ids = sorted(class_rows)
    index = {cid: i for i, cid in enumerate(class_ids)}
    classes = [re.sub(r"^\d+\.", "", class_rows[c]) for c in class_ids]
    images = _id_table(
        root / "images.txt", "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    )
    label_file, split_file = root / "image_class_labels.txt", root / "train_test_split.txt"
    labels = _id_table(label_file, "1 1")
    split = _id_table(split_file, "1 0")
    train, test = FileList([], []), FileList([], [])
    for img_id, rel in sorted(images.items()):
        cid = to_int(
            _lookup(labels, img_id, label_file, root / "images.txt"), label_file, None, "1 1"
        )
        if cid not in index:
            raise DataError(
                f"{label_file}: image {img_id} has class {cid}, which {root / 'classes.txt'} lacks"
            )
        flag = _lookup(split, img_id, split_file, root / "images.txt")
        if flag not in ("0", "1"):
            raise DataError(
                f"{split_file}: image {img_id} has split {flag!r}; expected 1 (train) or 0 (test)"
            )
        part = train if flag == "1" else test
        part.paths.append(images_dir / rel)
        part.labels.append(index[cid])
    require_listed_files(train, root / "images.txt", cfg)
    require_listed_files(test, root / "images.txt", cfg)
    require_every_class(train, classes, split_file)
    return file_source("cub200", root, train, test, classes, cfg)


def _find_list(root: Path, split: str) -> Path:
    for folder in (root / "lists", root):
        for ext in (".mat", ".txt"):
            if (folder / f"{split}_list{ext}").is_file():
                return folder / f"{split}_list{ext}"
    raise DataError(
        f"expected the official Stanford Dogs list {root / 'lists' / f'{split}_list.mat'} "
        f"(or {root / f'{split}_list.mat'}, or a text {split}_list.txt with one Images/-relative path "
        "per line); extract lists.tar next to Images/"
    )


def _mat_paths(path: Path) -> list[tuple[int, str]]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            f"reading {path} needs scipy (pip install scipy), or supply {path.with_suffix('.txt')}"
        ) from None
    try:
        mat = loadmat(str(path))
    except (ValueError, OSError, TypeError) as exc:
        raise DataError(
            f"{path} is not a readable MATLAB file ({exc}); re-extract lists.tar"
        ) from None
    if "file_list" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(
            f"{path}: key 'file_list' missing (found {keys}); expected the official list file"
        )
    return [(i + 1, _mat_string(entry)) for i, entry in enumerate(mat["file_list"].ravel())]


def _mat_string(entry: object) -> str:
    # A MATLAB cell of strings arrives as nested object arrays: unwrap to the one string inside.
    while isinstance(entry, np.ndarray):
        entry = entry.ravel()[0] if entry.size else ""
    return str(entry).replace("\\", "/")


def _dogs_split(root: Path, images: Path, classes: list[str], split: str) -> tuple[FileList, Path]:
    list_file = _find_list(root, split)
    fmt = "n02085620-Chihuahua/n02085620_10074.jpg"
    if list_file.suffix == ".txt":
        return listed_files(list_file, images, classes, fmt), list_file
    index = {c: i for i, c in enumerate(classes)}
    fl = FileList([], [])
    for n, rel in _mat_paths(list_file):
        cls = rel.split("/", 1)[0]
        if cls not in index or "/" not in rel:
            raise DataError(
                f"{list_file} entry {n}: {rel!r} does not start with a breed folder of {images}"
            )
        fl.paths.append(images / rel)
        fl.labels.append(index[cls])
    return fl, list_file


@register_source("stanford_dogs")
def stanford_dogs(cfg) -> SourceData:
    """Images/<breed>/*.jpg with train_list.mat / test_list.mat (in lists/ or beside Images/)."""
    layout = "{Images/<breed>/*.jpg, lists/train_list.mat, lists/test_list.mat}"
    root = locate(
        cfg, "Stanford Dogs", "Images", ("stanford_dogs", "StanfordDogs", "Stanford_Dogs"), layout
    )
    images = require_dir(root / "Images", "the breed folders Images/<breed>/")
    folders = class_folders(images)
    train, train_list = _dogs_split(root, images, folders, "train")
    test, test_list = _dogs_split(root, images, folders, "test")
    check_listed(train, train_list, test, test_list, folders, cfg)
    # 'n02085620-Chihuahua' -> 'Chihuahua'; the WordNet ids stay in the manifest.
    classes = [f.split("-", 1)[1] if "-" in f else f for f in folders]
    return file_source("stanford_dogs", root, train, test, classes, cfg, class_ids=folders)
