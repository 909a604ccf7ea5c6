"""Find a deployable model file from what a user points at: the file, the export folder or the run.

    resolve_onnx("runs/digits-resnet18")                      # the run folder
    resolve_onnx("runs/digits-resnet18", "onnx_int8")        # an export variant
    resolve_onnx("model.onnx")                                # any ONNX file
    resolve_model("runs/digits-resnet18", "tensorrt_fp16")   # a TensorRT engine of the export
    resolve_model("runs/digits-resnet18/tensorrt/model.fp16.engine")

The export stage's manifest names each artefact (`extra.artefacts`), and a run's export folder is
found by the stage name its manifest records, so the lookup never guesses from folder or file
names. Whatever is returned was checked against its sha256: the export manifest's, or for an
engine outside any stage folder (built by `python -m pipeline tensorrt`) the one its JSON
record holds.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import Manifest, find_stage, verify_files
from pipeline.errors import ConfigError
from serving.engine_record import (
    ENGINE_SUFFIXES,
    engine_record_path,
    is_engine,
    read_engine_record,
    verify_engine_hash,
)

ONNX = (".onnx",)
ANY_MODEL = (".onnx", *ENGINE_SUFFIXES)


def _export_manifest(p: Path) -> Manifest | None:
    here = Manifest.load(p)
    if here is not None and here.stage == "export" and here.complete:
        return here
    return find_stage(p, "export")


def _verify(manifest: Manifest | None, path: Path) -> None:
    """The file's sha256 against its stage's manifest, and an engine's record with it; an
    engine outside a stage folder against the sha256 in its record."""
    listed = manifest is not None and path.name in manifest.files
    if listed:
        record = engine_record_path(path).name if is_engine(path) else None
        extra = [record] if record and record in manifest.files else []
        verify_files(manifest, only=[path.name, *extra])  # missing or changed: ArtefactError
    if is_engine(path):
        verify_engine_hash(path, read_engine_record(path))


def _what(kinds: tuple[str, ...]) -> str:
    return "an .onnx file" if kinds == ONNX else "an .onnx file or a TensorRT .engine"


def resolve_model(path: str | Path, artefact: str = "onnx", kinds=ANY_MODEL) -> Path:
    """The model file to serve, of one of `kinds` (suffixes), hash-checked; see the module
    docstring."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in kinds:
            raise ConfigError(
                f"{p} is not {_what(kinds)}; pass a model file of that kind, or a run folder"
            )
        _verify(Manifest.load(p.parent), p)
        return p
    if not p.exists():
        raise ConfigError(
            f"{p} does not exist; pass a run folder, its export folder, or {_what(kinds)}"
        )
    manifest = _export_manifest(p)
    if manifest is None:
        raise ConfigError(
            f"{p} holds no finished export stage (no manifest.json of a complete export); run "
            "`python -m pipeline run CONFIG` through the export stage first, or pass "
            f"{_what(kinds)}"
        )
    arts = manifest.extra.get("artefacts", {})
    if artefact not in arts:
        known = ", ".join(sorted(arts)) or "none"
        skipped = manifest.metrics.get("skipped", {}).get(artefact)
        why = f" (the export skipped it: {skipped})" if skipped else ""
        raise ConfigError(
            f"the export in {manifest.folder} has no {artefact!r} artefact{why} (it has: "
            f"{known}); pick one of those, or add it to export.formats and re-run the export stage"
        )
    found = manifest.path(arts[artefact])
    if found.suffix not in kinds:
        raise ConfigError(
            f"{artefact!r} is {found.name}, and this command takes {_what(kinds)}; pick an ONNX "
            "artefact (onnx, onnx_fp16, onnx_int8)"
        )
    _verify(manifest, found)
    return found


def resolve_onnx(path: str | Path, artefact: str = "onnx") -> Path:
    """The ONNX file to serve, checked against its export manifest's sha256 when it has one."""
    return resolve_model(path, artefact, kinds=ONNX)
