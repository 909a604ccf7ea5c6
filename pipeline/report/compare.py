"""`python -m pipeline compare RUN [RUN ...]`: one table and one accuracy-latency figure across
finished runs (e.g. `ce` against `ama`, pruned against unpruned), as Markdown, HTML and JSON.

Every artefact of every run is set against the same artefact of the first run. A top-1
difference counts as measured only when it is outside its 95% interval: paired over the same
test images (from both runs' predictions) when they were judged on the same images, otherwise
as two independent proportions. A latency difference counts only when it is larger than the
spread (p90 - p50) of either measurement and the two deployed classifiers differ in cost
(parameters or MACs); between two runs of the same architecture the difference is the
machine's drift between the runs, not the models'. Anything else is marked "within noise".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import find_stage, write_json_atomic, write_text_atomic
from pipeline.errors import ConfigError
from pipeline.report import format as f
from pipeline.report.document import Document, Figure, Section, Table, to_html, to_markdown
from pipeline.report.figures import accuracy_latency_figure

WITHIN_NOISE = "within noise"


def _load(run: Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    path = run / "report.json"
    if not path.is_file():
        raise ConfigError(
            f"{run} has no report.json; pass finished run folders (or rebuild the report with "
            f"`python -m pipeline report {run}`)"
        )
    report = json.loads(path.read_text())
    val = find_stage(run, "validate", statuses=("complete", "gate_failed"))
    preds = None
    if val is not None and val.path("predictions.npz").is_file():
        with np.load(val.path("predictions.npz")) as p:
            preds = {k: p[k] for k in p.files}
    return report, preds


def top1_difference(
    a: float, b: float, n_a: int, n_b: int, paired: tuple[np.ndarray, np.ndarray] | None
) -> tuple[float, float]:
    """(b - a, half-width of its 95% interval). Paired: a and b judged on the same images,
    `paired` holding each one's per-image correctness."""
    diff = b - a
    if paired is not None:
        ca, cb = paired
        d = cb.astype(float) - ca.astype(float)  # +1, 0 or -1 per image
        half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
        return diff, half
    var = a * (1 - a) / max(n_a, 1) + b * (1 - b) / max(n_b, 1)
    return diff, 1.96 * math.sqrt(var)


def _correct(preds: dict | None, artefact: str) -> np.ndarray | None:
    if preds is None or f"pred_{artefact}" not in preds:
        return None
    return preds[f"pred_{artefact}"] == preds["labels"]


def _rows(runs: list[Path], loaded: list[tuple[dict, dict | None]]) -> list[dict[str, Any]]:
    base_report, base_preds = loaded[0]

    def cost(r: dict) -> tuple:
        p = r.get("prune", {})
        return p.get("params_deployed"), p.get("macs_deployed")

    rows = []
    for run, (r, preds) in zip(runs, loaded, strict=True):
        for name, a in r["artefacts"].items():
            row = {
                "run": r["run"],
                "folder": str(run),
                "method": r["model"]["method"],
                "artefact": name,
                "top1": a["top1"],
                "p50_ms": a["latency_ms"]["p50"],
                "p90_ms": a["latency_ms"]["p90"],
                "images_per_s": a["throughput"]["images_per_s"],
                "bytes": a.get("bytes"),
                "test_samples": r.get("test_samples"),
            }
            ref = base_report["artefacts"].get(name)
            if ref is not None and run != runs[0]:
                ca, cb = _correct(base_preds, name), _correct(preds, name)
                same_images = (
                    ca is not None
                    and cb is not None
                    and base_preds["labels"].shape == preds["labels"].shape
                    and bool((base_preds["labels"] == preds["labels"]).all())
                )
                diff, half = top1_difference(
                    ref["top1"],
                    a["top1"],
                    base_report.get("test_samples") or 0,
                    r.get("test_samples") or 0,
                    (ca, cb) if same_images else None,
                )
                lat = ref["latency_ms"]
                noise = max(lat["p90"] - lat["p50"], row["p90_ms"] - row["p50_ms"])
                row |= {
                    "top1_diff": diff,
                    "top1_diff_ci95": half,
                    "paired": same_images,
                    "top1_measured": abs(diff) > half,
                    "p50_diff_ms": row["p50_ms"] - lat["p50"],
                    "same_cost": cost(r) == cost(base_report) and None not in cost(r),
                    "p50_measured": abs(row["p50_ms"] - lat["p50"]) > noise
                    and cost(r) != cost(base_report),
                }
            rows.append(row)
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [
        row["run"],
        row["method"],
        row["artefact"],
        f.pct(row["top1"]),
        f.ms(row["p50_ms"]),
        f.per_s(row["images_per_s"]),
        f.size(row["bytes"]),
    ]
    if "top1_diff" not in row:
        return [*cells, "reference", "reference"]
    d = f"{100 * row['top1_diff']:+.2f} pts (±{100 * row['top1_diff_ci95']:.2f})"
    acc = d if row["top1_measured"] else f"{d}, {WITHIN_NOISE}"
    lat = f"{row['p50_diff_ms']:+.3f} ms"
    if row["p50_measured"]:
        return [*cells, acc, lat]
    why = " (same model cost: machine drift)" if row.get("same_cost") else ""
    return [*cells, acc, f"{lat}, {WITHIN_NOISE}{why}"]


def compare(runs: list[Path], out: Path) -> Path:
    """Write compare.md, compare.html and compare.json (and the figure) into `out`."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two run folders")
    loaded = [_load(Path(r)) for r in runs]
    rows = _rows([Path(r) for r in runs], loaded)
    out.mkdir(parents=True, exist_ok=True)
    points = [(f"{r['run']}:{r['artefact']}", r["p50_ms"], r["top1"]) for r in rows]
    fig = accuracy_latency_figure(
        points, out / "accuracy_latency.png", "top-1 against latency, all runs"
    )
    header = [
        "run",
        "method",
        "artefact",
        "top-1",
        "p50 ms",
        "images/s",
        "size",
        f"top-1 vs {rows[0]['run']} (95% interval)",
        "p50 vs the same",
    ]
    doc = Document(
        f"Comparison of {len(runs)} runs",
        [
            f"Reference: `{rows[0]['run']}`. Each artefact against the same artefact of the "
            "reference run; differences inside their 95% interval (top-1; paired over the same "
            "test images where both runs were judged on them) or inside the measurements' own "
            f'spread (latency, p90 - p50) are marked "{WITHIN_NOISE}".'
        ],
        [
            Section("Runs", [Table(header, [_cells(r) for r in rows])]),
            Section(
                "Accuracy against latency",
                [
                    Figure(
                        fig.name,
                        "Top-1 against batch-1 p50 "
                        "latency for every artefact of every run; the frontier dashed.",
                    )
                ],
            ),
        ],
    )
    write_json_atomic(out / "compare.json", {"runs": [str(r) for r in runs], "rows": rows})
    write_text_atomic(out / "compare.md", to_markdown(doc))
    write_text_atomic(out / "compare.html", to_html(doc, out))
    return out
