"""Find a deployable ONNX file from what a user points at: the file, the export folder or the run.

    resolve_onnx("runs/digits-resnet18")                 # the run folder
    resolve_onnx("runs/digits-resnet18/03_export", "onnx_int8")
    resolve_onnx("model.onnx")                           # any ONNX file

The export stage's manifest names each artefact (`extra.artefacts`), so the lookup never
guesses from file names.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigError

EXPORT_FOLDER = "03_export"


def resolve_onnx(path: str | Path, artefact: str = "onnx") -> Path:
    p = Path(path)
    if p.is_file():
        if p.suffix != ".onnx":
            raise ConfigError(f"{p} is not an .onnx file; pass a model.onnx, or a run folder")
        return p
    if not p.exists():
        raise ConfigError(f"{p} does not exist; pass a run folder, its 03_export, or an .onnx file")
    folder = p / EXPORT_FOLDER if (p / EXPORT_FOLDER).is_dir() else p
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(
            f"{p} holds no finished export ({manifest} is missing); run "
            "`python -m pipeline run CONFIG` through the export stage first, or pass an .onnx file"
        )
    arts = json.loads(manifest.read_text()).get("extra", {}).get("artefacts", {})
    if artefact not in arts:
        known = ", ".join(sorted(arts)) or "none"
        raise ConfigError(
            f"the export in {folder} has no {artefact!r} artefact (it has: {known}); pick one of "
            "those, or add it to export.formats and re-run the export stage"
        )
    out = folder / arts[artefact]
    if not out.is_file():
        raise ConfigError(f"{out} is listed in {manifest} but missing; re-run the export stage")
    return out
