"""What the on-disk readers share: finding the data set's folder, reading index files, assembling.

Every reader accepts `data.root` pointing at the data set's own folder or at the folder that
holds it, and every layout problem is a DataError naming the file expected and where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.data.base import SourceData, hash_parts
from pipeline.data.files import FileList, build_image_sets, files_fingerprint, list_images
from pipeline.errors import DataError


def require_root(cfg, dataset: str) -> Path:
    if cfg.root is None:
        raise DataError(f"data.root is not set; point it at the {dataset} folder")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} does not exist or is not a folder; point it at the {dataset} folder"
        )
    return root


def locate(cfg, dataset: str, marker: str, folder_names: Sequence[str], layout: str) -> Path:
    """The folder holding `marker`: root itself, a known sub-folder, or the only sub-folder that has it."""
    root = require_root(cfg, dataset)
    if (root / marker).exists():
        return root
    for name in folder_names:
        if (root / name / marker).exists():
            return root / name
    hits = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / marker).exists()]
    if len(hits) == 1:
        return hits[0]
    where = root / folder_names[0] / marker if folder_names else root / "<folder>" / marker
    raise DataError(
        f"{root} does not hold the {dataset} layout: expected {root / marker} or {where}. "
        f"Point data.root at the folder laid out as {layout}, or at the folder that holds it"
    )


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"expected {what} at {path}, but it is missing; restore it from the official archive"
        )
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(
            f"expected {what} at {path}, but it is missing; restore it from the official archive"
        )
    return path


def read_rows(
    path: Path, fields: int, fmt: str, sep: str | None = None
) -> list[tuple[int, list[str]]]:
    """Non-blank lines split into at least `fields` fields, with their line numbers, for error messages."""
    require_file(path, f"an index file with lines like {fmt!r}")
    rows = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(sep) if sep else line.split()
        if len(parts) < fields:
            raise DataError(f"{path} line {n}: expected {fields} fields like {fmt!r}, got {line!r}")
        rows.append((n, parts))
    if not rows:
        raise DataError(f"{path} is empty; expected lines like {fmt!r}")
    return rows


def to_int(value: str, path: Path, line: int | None, fmt: str) -> int:
    try:
        return int(value)
    except ValueError:
        where = f"{path} line {line}" if line else str(path)
        raise DataError(
            f"{where}: {value!r} is not an integer; expected lines like {fmt!r}"
        ) from None


def scan_class_folder(folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise DataError(
            f"class folder {folder} holds no images (expected .jpg/.jpeg/.png files); "
            "add its images or remove the folder"
        )
    return files


def require_listed_files(fl: FileList, list_file: Path, cfg) -> None:
    """With on_bad_image=fail a listed file that is absent stops the run; skip counts it instead."""
    if cfg.on_bad_image == "skip":
        return
    missing = [p for p in fl.paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{list_file} lists {len(missing)} file(s) that are not on disk, e.g. {missing[0]}; "
            "restore them, or set data.on_bad_image=skip to drop and count them"
        )


def require_every_class(fl: FileList, classes: list[str], where: Path) -> None:
    present = set(fl.labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataError(
            f"{len(empty)} class(es) have no training images in {where}, e.g. {empty[0]!r}; "
            "every class needs at least one training image"
        )


def check_listed(
    train: FileList, train_list: Path, test: FileList, test_list: Path, classes: list[str], cfg
) -> None:
    """Files named by official train/test lists exist, and every class has training images."""
    require_listed_files(train, train_list, cfg)
    require_listed_files(test, test_list, cfg)
    require_every_class(train, classes, train_list)


def file_source(
    name: str,
    root: Path,
    train: FileList,
    test: FileList,
    classes: list[str],
    cfg,
    class_ids: list[str] | None = None,
) -> SourceData:
    """Fingerprint the listing, then hold the images as configured (cache, on_bad_image).

    `class_ids` (e.g. WordNet ids) go into the manifest beside the readable class names."""
    fp = hash_parts(name, files_fingerprint(train, root), files_fingerprint(test, root), classes)
    sets, info = build_image_sets({"train": train, "test": test}, cfg, root)
    if info["skipped_images"]:
        # Which files were dropped follows from the listing; the count guards against decoder changes.
        fp = hash_parts(fp, info["skipped_images"])
    if class_ids is not None:
        info["class_ids"] = class_ids
    return SourceData(
        train=sets["train"], test=sets["test"], classes=classes, fingerprint=fp, info=info
    )
