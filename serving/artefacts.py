"""Find a deployable ONNX file from what a user points at: the file, the export folder or the run.

    resolve_onnx("runs/digits-resnet18")                 # the run folder
    resolve_onnx("runs/digits-resnet18", "onnx_int8")   # an export variant
    resolve_onnx("model.onnx")                           # any ONNX file

The export stage's manifest names each artefact (`extra.artefacts`), and a run's export folder is
found by the stage name its manifest records, so the lookup never guesses from folder or file
names.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import Manifest, find_stage, verify_files
from pipeline.errors import ConfigError


def _export_manifest(p: Path) -> Manifest | None:
    here = Manifest.load(p)
    if here is not None and here.stage == "export" and here.complete:
        return here
    return find_stage(p, "export")


def resolve_onnx(path: str | Path, artefact: str = "onnx") -> Path:
    """The ONNX file to serve, checked against its export manifest's sha256 when it has one."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".onnx":
            raise ConfigError(f"{p} is not an .onnx file; pass a model.onnx, or a run folder")
        here = Manifest.load(p.parent)
        if here is not None and p.name in here.files:  # a file of a pipeline stage
            verify_files(here, only=[p.name])
        return p
    if not p.exists():
        raise ConfigError(
            f"{p} does not exist; pass a run folder, its export folder, or an .onnx file"
        )
    manifest = _export_manifest(p)
    if manifest is None:
        raise ConfigError(
            f"{p} holds no finished export stage (no manifest.json of a complete export); run "
            "`python -m pipeline run CONFIG` through the export stage first, or pass an .onnx file"
        )
    arts = manifest.extra.get("artefacts", {})
    if artefact not in arts:
        known = ", ".join(sorted(arts)) or "none"
        raise ConfigError(
            f"the export in {manifest.folder} has no {artefact!r} artefact (it has: {known}); pick "
            "one of those, or add it to export.formats and re-run the export stage"
        )
    verify_files(manifest, only=[arts[artefact]])  # missing or changed: ArtefactError
    return manifest.path(arts[artefact])
