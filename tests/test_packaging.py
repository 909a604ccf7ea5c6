"""Installation: the CPU and GPU builds of ONNX Runtime are alternatives, never both."""

from __future__ import annotations

import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from the dev extra
    import tomli as tomllib

from tests.conftest import REPO

# Distributions that install the same `onnxruntime` module: two of them break each other.
ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_onnxruntime_builds_are_alternative_extras() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & ORT_BUILDS, "a build in the core dependencies"
    assert _names(extras["cpu"]) & ORT_BUILDS == {"onnxruntime"}
    assert _names(extras["gpu"]) & ORT_BUILDS == {"onnxruntime-gpu"}
    for name, reqs in extras.items():
        assert len(_names(reqs) & ORT_BUILDS) <= 1, f"extra {name!r} installs two ORT builds"


def test_setup_script_installs_exactly_one_build() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    extras = re.search(r'-e "\.\[([^\]]+)\]"', setup).group(1).split(",")
    assert "cpu" in extras and "gpu" not in extras
