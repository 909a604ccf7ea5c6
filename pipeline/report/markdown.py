"""The run report as data (`build_report`) and as Markdown (`render_markdown`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import Manifest
from pipeline.config import PipelineConfig


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def build_report(
    cfg: PipelineConfig, train: Manifest | None, prune: Manifest, export: Manifest, val: dict
) -> dict[str, Any]:
    """Everything the report shows, from the stages' manifests (`val`: validate's metrics)."""
    return {
        "run": cfg.name,
        "passed": all(g["passed"] for g in val["gates"]),
        "data": (train.data if train else {}) | {"name": cfg.data.name},
        "model": {"name": cfg.model.name, "width": cfg.model.width, "method": cfg.train.method},
        "artefacts": val["artefacts"],
        "gates": val["gates"],
        "threads": val["threads"],
        "training": train.metrics if train else {},
        "prune": prune.metrics,
        "export": export.metrics,
        "stage_keys": {m.stage: m.key for m in (train, prune, export) if m},
    }


def render_markdown(r: dict[str, Any], figures: list[str]) -> str:
    t, p = r["training"], r["prune"]
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        f"# Run `{r['run']}`: {verdict}",
        "",
        f"{r['model']['name']} (width {r['model']['width']}), method `{r['model']['method']}`, "
        f"data `{r['data'].get('name')}` ({r['data'].get('num_classes', '?')} classes, "
        f"{r['data'].get('sizes', {})}).",
        "",
        "## Artefacts",
        "",
        f"Test split, {r['threads']} CPU threads. Latency at batch 1; throughput at the batch shown.",
        "",
        "| artefact | back end | top-1 | p50 ms | p90 ms | p99 ms | images/s (batch) | size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in r["artefacts"].items():
        lat, th = a["latency_ms"], a["throughput"]
        lines.append(
            f"| {name} | {a['backend']} | {_pct(a['top1'])} | {lat['p50']:.3f} | {lat['p90']:.3f} | "
            f"{lat['p99']:.3f} | {th['images_per_s']:.0f} ({th['batch']}) | {_mb(a['bytes'])} |"
        )
    lines += ["", "## Gates", "", "| gate | measured | limit | result |", "|---|---|---|---|"]
    for g in r["gates"]:
        lines.append(
            f"| {g['gate']} | {g['value']:.4f} | {g['limit']} | {'pass' if g['passed'] else '**FAIL**'} |"
        )
    if t:
        lines += [
            "",
            "## Training",
            "",
            f"{t['epochs']} epochs in {t['train_s']:.1f} s ({t['images_per_s']:.0f} images/s, {t['device']}, "
            f"{t['processes']} process(es)). Last epoch: train top-1 {_pct(t['train_top1'])}, "
            f"val top-1 {_pct(t.get('val_top1'))}, test top-1 {_pct(t['test_top1'])}"
            + (f" (self-teacher {_pct(t['test_aux_top1'])})" if "test_aux_top1" in t else "")
            + ".",
        ]
    par = p["parity"]
    lt, ld = p["latency_training_ms"]["p50"], p["latency_deployed_ms"]["p50"]
    lines += [
        "",
        "## Pruning",
        "",
        f"Deployed classifier vs training model on {par['samples']} test images: max |logit diff| "
        f"{par['max_abs_diff']:.3g}, top-1 agreement {_pct(par['top1_agreement'])}.",
        "",
        "| | parameters | MACs / image | torch p50 ms (batch 1) |",
        "|---|---|---|---|",
        f"| training model | {p['params_training']:,} | {p['macs_training']:,} | {lt:.3f} |",
        f"| deployed classifier | {p['params_deployed']:,} | {p['macs_deployed']:,} | {ld:.3f} |",
        f"| removed branches | {p['params_removed']:,} | {p['macs_removed']:,} | {lt - ld:.3f} |",
    ]
    if r["export"]:
        lines += [
            "",
            "## Export",
            "",
            "Each exported model against the torch classifier on the same test images.",
            "",
            "| artefact | max abs logit diff | top-1 agreement | images |",
            "|---|---|---|---|",
        ]
        for name, e in r["export"].items():
            par = e["parity"]
            lines.append(
                f"| {name} | {par['max_abs_diff']:.3g} | {_pct(par['top1_agreement'])} | {par['samples']} |"
            )
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
