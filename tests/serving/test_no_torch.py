"""The serving runtimes import without torch: a server needs numpy, Pillow and a back end."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_serving_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "import serving.artefacts, serving.bench, serving.http, serving.predictor\n"
        "import serving.dtypes, serving.engine_record, serving.preprocess\n"
        "import pipeline.preprocessing, pipeline.timing\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
