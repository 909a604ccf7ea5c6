"""Folder-per-class data sets with official lists: Tiny-ImageNet and MIT Indoor-67."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.base import SourceData
from pipeline.data.files import IMAGE_EXTENSIONS, FileList
from pipeline.data.sources.common import (
    check_listed,
    file_source,
    locate,
    read_rows,
    require_dir,
    require_listed_files,
    scan_class_folder,
)
from pipeline.data.sources.registry import register_source
from pipeline.errors import DataError


def class_names_from_words(words_file: Path, wnids: list[str]) -> list[str]:
    """The first synonym of each WordNet id ('n01443537\\tgoldfish, Carassius auratus' -> 'goldfish')."""
    rows = read_rows(words_file, 2, "n01443537\tgoldfish, Carassius auratus", sep="\t")
    words = {parts[0].strip(): parts[1] for _, parts in rows}
    names = [words.get(w, w).split(",")[0].strip() or w for w in wnids]
    # WordNet reuses words across senses (two 'crane's in ImageNet); labels must stay unique.
    dupes = {n for n in names if names.count(n) > 1}
    return [f"{n} ({w})" if n in dupes else n for n, w in zip(names, wnids, strict=True)]


def read_relative_list(path: Path, fmt: str) -> list[tuple[int, str]]:
    """Lines naming one image each, relative to the images folder; Windows separators tolerated."""
    out = []
    for n, parts in read_rows(path, 1, fmt):
        rel = " ".join(parts).replace("\\", "/").removeprefix("./").removeprefix("Images/")
        out.append((n, rel))
    return out


def listed_files(list_file: Path, images: Path, classes: list[str], fmt: str) -> FileList:
    """Each line's first path component is its class folder."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for n, rel in read_relative_list(list_file, fmt):
        cls = rel.split("/", 1)[0]
        if cls not in index or "/" not in rel:
            raise DataError(
                f"{list_file} line {n}: {rel!r} does not start with a class folder of {images}; "
                f"expected lines like {fmt!r}"
            )
        paths.append(images / rel)
        labels.append(index[cls])
    return FileList(paths, labels)


def class_folders(images: Path) -> list[str]:
    names = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{images} has no class folders; expected {images}/<class>/<image files>")
    for name in names:
        folder = images / name
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*")):
            raise DataError(
                f"class folder {folder} holds no images; add its images or remove the folder"
            )
    return names


@register_source("tiny_imagenet")
def tiny_imagenet(cfg) -> SourceData:
    """train/<wnid>/images/*.JPEG; val/images/* labelled by val/val_annotations.txt serves as test."""
    layout = "tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,val/images,val/val_annotations.txt}"
    root = locate(cfg, "Tiny-ImageNet", "wnids.txt", ("tiny-imagenet-200",), layout)
    wnids = sorted({parts[0] for _, parts in read_rows(root / "wnids.txt", 1, "n01443537")})
    classes = class_names_from_words(root / "words.txt", wnids)
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for wnid in wnids:
        files = scan_class_folder(
            require_dir(root / "train" / wnid / "images", f"the images of class {wnid}")
        )
        paths.extend(files)
        labels.extend([index[wnid]] * len(files))
    train = FileList(paths, labels)
    test = _tiny_val(root, index)
    require_listed_files(test, root / "val" / "val_annotations.txt", cfg)
    return file_source("tiny_imagenet", root, train, test, classes, cfg, class_ids=wnids)


def _tiny_val(root: Path, index: dict[str, int]) -> FileList:
    ann = root / "val" / "val_annotations.txt"
    images = require_dir(root / "val" / "images", "the validation images (used as the test split)")
    fmt = "val_0.JPEG\tn03444034\t0\t32\t44\t62"
    paths, labels = [], []
    for n, parts in read_rows(ann, 2, fmt, sep="\t"):
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DataError(f"{ann} line {n}: class {wnid!r} is not listed in {root / 'wnids.txt'}")
        paths.append(images / name)
        labels.append(index[wnid])
    return FileList(paths, labels)


@register_source("mit67")
def mit67(cfg) -> SourceData:
    """Images/<class>/*.jpg with the official TrainImages.txt and TestImages.txt beside Images/."""
    layout = "{Images/<class>/*.jpg, TrainImages.txt, TestImages.txt}"
    root = locate(
        cfg, "MIT Indoor-67", "TrainImages.txt", ("indoorCVPR_09", "mit67", "MIT67"), layout
    )
    images = require_dir(root / "Images", "the MIT67 image folder Images/<class>/")
    classes = class_folders(images)
    fmt = "kitchen/int474.jpg"
    train = listed_files(root / "TrainImages.txt", images, classes, fmt)
    test = listed_files(root / "TestImages.txt", images, classes, fmt)
    check_listed(train, root / "TrainImages.txt", test, root / "TestImages.txt", classes, cfg)
    return file_source("mit67", root, train, test, classes, cfg)
