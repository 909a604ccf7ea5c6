"""What the report says: the data (`build_report`, saved as report.json) and its sections
(`build_document`, rendered to Markdown and HTML), all from the stages' manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import Manifest
from pipeline.config import PipelineConfig
from pipeline.report import format as f
from pipeline.report.document import Document, Figure, Section, Table


def build_report(
    cfg: PipelineConfig,
    train: Manifest | None,
    prune: Manifest,
    export: Manifest,
    val: Manifest,
    slim: Manifest | None = None,
) -> dict[str, Any]:
    """Everything the report shows, from the stages' manifests."""
    v = val.metrics
    made = train.config if train else {}  # what trained the model, not today's config file
    model = made.get("model", {})
    return {
        "run": cfg.name,
        "run_dir": str(prune.folder.parent),
        "passed": all(g["passed"] for g in v["gates"]),
        "consistent": _consistent(train, slim, prune, export, val),
        "data": (train.data if train else {})
        | {"name": made.get("data", {}).get("name", cfg.data.name)},
        "model": {
            "name": model.get("name", cfg.model.name),
            "source": cfg.model.source,
            "width": model.get("width", cfg.model.width),
            "method": made.get("train", {}).get("method", cfg.train.method),
        },
        "artefacts": v["artefacts"],
        "skipped": v.get("skipped", {}),
        "gates": v["gates"],
        "threads": v["threads"],
        "test_samples": v.get("test_samples"),
        "classes": v.get("classes", []),
        "timing": v.get("timing", ""),
        "environment": val.environment,
        "training": train.metrics if train else {},
        "slim": slim.metrics if slim else {},
        "prune": prune.metrics,
        "export": export.metrics,
        "stage_keys": {m.stage: m.key for m in (train, slim, prune, export, val) if m},
    }


def _consistent(train, slim, prune, export, val) -> bool:
    """Whether every stage was built from the one before it as found on disk (a stage re-run
    alone with other settings leaves the later ones describing an older model)."""
    links = [
        (prune.inputs.get("slim"), slim.key if slim else prune.inputs.get("slim")),
        ((slim.inputs.get("train") if slim else None), train.key if train and slim else None),
        (export.inputs.get("prune"), prune.key),
        (val.inputs.get("prune"), prune.key),
        (val.inputs.get("export"), export.key),
    ]
    return all(a == b for a, b in links)


def _model_label(m: dict[str, Any]) -> str:
    source = m.get("source", "builtin")
    if source == "builtin":
        return f"{m['name']} (width {m['width']})"
    if source == "python":
        return f"`{Path(m['name'].rpartition(':')[0]).name}:{m['name'].rpartition(':')[2]}`"
    return f"{source} `{m['name']}`"


def _summary(r: dict[str, Any]) -> list[str]:
    d, m = r["data"], r["model"]
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        f"**{verdict}**: {_model_label(m)}, method `{m['method']}`, data "
        f"`{d.get('name')}` ({d.get('num_classes', '?')} classes; "
        f"{f.splits(d.get('sizes', {}))} images).",
    ]
    ref = r["artefacts"]["torch"]
    name, fastest = min(r["artefacts"].items(), key=lambda kv: kv[1]["latency_ms"]["p50"])
    line = f"Test top-1 {f.pct(ref['top1'])} (torch FP32)."
    if name != "torch":
        line += (
            f" The fastest artefact, `{name}`, answers one image in "
            f"{f.ms(fastest['latency_ms']['p50'])} ms (p50) at top-1 {f.pct(fastest['top1'])}: "
            f"{f.speedup(ref['latency_ms']['p50'], fastest['latency_ms']['p50'])} the speed of "
            "torch FP32."
        )
    lines.append(line)
    serve = f"Serve it: `python -m pipeline serve {r.get('run_dir', 'runs/' + r['run'])}`"
    if "onnx_int8" in r["artefacts"]:
        serve += " (`--artefact onnx_int8` for the INT8 model)"
    engines = [n for n in r["artefacts"] if n.startswith("tensorrt_")]
    if engines:
        serve += f"; `--artefact {engines[0]}` serves the TensorRT engine on a GPU like this one"
    lines.append(serve + ". The resolved configuration is in `config.yaml` beside this report.")
    if not r.get("consistent", True):
        lines.insert(
            0,
            "**Warning**: these stages were not all built from one another (a stage was re-run "
            "alone with other settings); run `python -m pipeline run CONFIG` to bring them in line.",
        )
    return lines


def _artefacts(r: dict[str, Any], figures: dict[str, str]) -> Section:
    ref = r["artefacts"]["torch"]["latency_ms"]["p50"]
    gpu = any(a.get("device") == "cuda" for a in r["artefacts"].values())
    rows = []
    for name, a in r["artefacts"].items():
        lat, th = a["latency_ms"], a["throughput"]
        rows.append(
            [
                name,
                a["backend"],
                f.pct(a["top1"]),
                f.ms(lat["p50"]),
                f.ms(lat["p90"]),
                f.ms(lat["p99"]),
                f"{f.per_s(th['images_per_s'])} (batch {th['batch']})",
                f.speedup(ref, lat["p50"]),
                f.size(a["bytes"]),
            ]
        )
    header = [
        "artefact",
        "back end",
        "top-1",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "images/s",
        "speed-up vs torch FP32 (p50)",
        "size",
    ]
    blocks: list = [
        f"Test split ({f.count(r.get('test_samples'))} images), {r['threads']} CPU threads"
        + (f", GPU {r.get('environment', {}).get('device', '?')} for the GPU rows" if gpu else "")
        + ". Latency is one image per call (batch 1); throughput at the batch shown.",
        Table(header, rows),
    ]
    skipped = r.get("skipped", {})
    if skipped:
        blocks += [
            "GPU back ends not measured on this machine:",
            Table(["back end", "skipped because"], [[k, v] for k, v in skipped.items()]),
        ]
    if "accuracy_latency" in figures:
        blocks.append(
            Figure(
                figures["accuracy_latency"],
                "Top-1 against batch-1 latency for "
                "every artefact; the dashed line joins the points no other beats "
                "on both.",
            )
        )
    gates = [
        [g["gate"], f"{g['value']:.4f}", str(g["limit"]), "pass" if g["passed"] else "**FAIL**"]
        for g in r["gates"]
    ]
    blocks += ["Gates:", Table(["gate", "measured", "limit", "result"], gates)]
    return Section("Artefacts and gates", blocks)


def _sweep(r: dict[str, Any], figures: dict[str, str]) -> Section | None:
    ref = {(p["threads"], p["batch"]): p for p in r["artefacts"]["torch"].get("sweep", [])}
    rows = []
    for name, a in r["artefacts"].items():
        for p in a.get("sweep", []):
            base = ref.get((p["threads"], p["batch"]))
            rows.append(
                [
                    name,
                    str(p["threads"]),
                    str(p["batch"]),
                    f.ms(p["p50"]),
                    f.ms(p["p90"]),
                    f.ms(p["p99"]),
                    f.per_s(p["images_per_s"]),
                    f.speedup(base["mean"], p["mean"]) if base else "n/a",
                    str(p["runs"]),
                ]
            )
    if not rows:
        return None
    header = [
        "artefact",
        "threads",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "images/s",
        "speed-up vs torch FP32",
        "timed calls",
    ]
    blocks: list = [r.get("timing", ""), Table(header, rows)]
    if "latency_batch" in figures:
        blocks.append(
            Figure(
                figures["latency_batch"],
                "Latency per call and images/s against batch size, per artefact and thread count.",
            )
        )
    return Section("Latency against batch size and threads", blocks)


def _classes(r: dict[str, Any], figures: dict[str, str]) -> Section | None:
    blocks: list = []
    if "confusion" in figures:
        blocks.append(
            Figure(
                figures["confusion"],
                "Confusion matrix and per-class top-1 of "
                "the torch FP32 classifier on the test split.",
            )
        )
    if "mistakes" in figures:
        blocks.append(
            Figure(
                figures["mistakes"],
                "The most confident mistakes (torch FP32): "
                "true label, predicted label and its probability.",
            )
        )
    return Section("Per class and mistakes", blocks) if blocks else None


def _training(r: dict[str, Any], figures: dict[str, str]) -> Section | None:
    t = r["training"]
    if not t:
        return None
    w = t.get("weights")
    loaded = (
        f"Started from `{w['path']}` (sha256 {w['sha256'][:12]}, {w['loaded']} tensors"
        + (f", under `{w['nested_key']}`" if w.get("nested_key") else "")
        + (
            f"; final layer `{w['head_replaced']}` replaced: {w['head_classes'][0]} -> "
            f"{w['head_classes'][1]} classes"
            if w.get("head_replaced")
            else ""
        )
        + "). "
        if w
        else ""
    )
    warm = t.get("teacher_warmup") or []
    if warm:
        loaded += (
            f"The self-teacher was first trained alone on the frozen classifier for "
            f"{len(warm)} epoch{'s' if len(warm) > 1 else ''} (its train top-1 "
            f"{f.pct(warm[-1]['aux_train_top1'])}). "
        )
    if not t["epochs"]:
        text = (
            f"{loaded}Not trained (train.epochs 0): the model as loaded has test top-1 "
            f"{f.pct(t['test_top1'])}"
            + (f" (self-teacher {f.pct(t['test_aux_top1'])})" if "test_aux_top1" in t else "")
            + "."
        )
        return Section("Training", [text])
    text = loaded + (
        f"{t['epochs']} epochs in {t['train_s']:.1f} s ({f.per_s(t['images_per_s'])} images/s, "
        f"{t['device']}, {t['processes']} process{'es' if t['processes'] > 1 else ''}). Last "
        f"epoch: train top-1 {f.pct(t['train_top1'])}, validation top-1 "
        f"{f.pct(t.get('val_top1'))}, test top-1 {f.pct(t['test_top1'])}"
        + (f" (self-teacher {f.pct(t['test_aux_top1'])})" if "test_aux_top1" in t else "")
        + "."
    )
    hs = t.get("head_stability")
    if hs:
        text += (
            f" At the first step the classifier head's sharpness was {hs['sharpness']:.1f}: "
            f"lr {hs['lr']:g} x sharpness = {hs['lr'] * hs['sharpness']:.2f} against SGD's "
            f"stability limit {hs['limit']:.2f} ({'past it' if hs['ratio'] > 1 else 'inside'})."
        )
    blocks: list = [text]
    blocks += [f"**Warning:** {w}." for w in t.get("warnings", [])]
    if "training" in figures:
        blocks.append(
            Figure(
                figures["training"],
                "Training loss and its terms, top-1 and the learning rate per epoch.",
            )
        )
    return Section("Training", blocks)


def _prune(r: dict[str, Any], figures: dict[str, str]) -> Section:
    p = r["prune"]
    par = p["parity"]
    removed = p["params_removed"] > 0
    saving = (
        f.latency_saving(p["latency_training_ms"], p["latency_deployed_ms"])
        if removed
        else "nothing removed"
    )
    rows = [
        [
            "training model",
            f.count(p["params_training"]),
            f.count(p["macs_training"]),
            f.ms(p["latency_training_ms"]["p50"]),
        ],
        [
            "deployed classifier",
            f.count(p["params_deployed"]),
            f.count(p["macs_deployed"]),
            f.ms(p["latency_deployed_ms"]["p50"]),
        ],
        ["removed branches", f.count(p["params_removed"]), f.count(p["macs_removed"]), saving],
    ]
    blocks: list = [
        f"The deployed classifier against the training model on {f.count(par['samples'])} test "
        f"images: max |logit difference| {par['max_abs_diff']:.3g}, top-1 agreement "
        f"{f.pct(par['top1_agreement'])}."
        + ("" if removed else " This method trains no auxiliary branch, so nothing is removed."),
        Table(["", "parameters", "MACs / image", "torch p50 ms (batch 1)"], rows),
    ]
    for key in sorted(k for k in figures if k.startswith("attention")):
        blocks.append(
            Figure(
                figures[key],
                f"What the self-teacher taught ({key.replace('_', ' ')}): "
                "image, classifier attention, self-teacher attention, foreground "
                "mask as trained.",
            )
        )
    branch = "shallow heads" if r["model"].get("method") == "byot" else "self-teacher"
    return Section(f"Removing the {branch}", blocks)


def _compression(r: dict[str, Any]) -> Section | None:
    sl = r.get("slim") or {}
    if not sl.get("slimmed"):
        return None
    c, rec, pr = sl.get("compression") or {}, sl.get("recovery") or {}, sl["pruning"]
    ref = c["unpruned"]["fp32"]["latency_ms"]["p50"] if c else None
    rows = []
    for who, label in (("unpruned", "unpruned"), ("slim", "slim")) if c else ():
        m = c[who]
        for prec in ("fp32", "int8"):
            a = m[prec]
            rows.append(
                [
                    f"{label} {prec.upper()}",
                    f.count(m["params"]),
                    f.count(m["macs"]),
                    f.size(a["onnx_bytes"]),
                    f.pct(a["top1"]),
                    f.ms(a["latency_ms"]["p50"]),
                    f"{f.per_s(a['throughput']['images_per_s'])} (batch {a['throughput']['batch']})",
                    f.speedup(ref, a["latency_ms"]["p50"]),
                ]
            )
    header = [
        "classifier",
        "parameters",
        "MACs / image",
        "ONNX size",
        "top-1",
        "p50 ms (batch 1)",
        "images/s",
        "speed-up vs unpruned FP32",
    ]
    recipe = sl.get("recipe") or {}
    teacher = (
        f" with the frozen unpruned classifier as teacher (T {recipe['teacher_temperature']:g}, "
        f"weight {recipe['teacher_weight']:g})"
        if recipe.get("teacher") == "unpruned"
        else ""
    )
    how = (
        "trained from scratch (the pruned architecture, fresh weights) by"
        if recipe.get("init") == "scratch"
        else "recovered by"
    )
    recovered = (
        f"{how} `{sl['recovery_method']}`{teacher} for {rec['epochs']} epochs "
        f"({rec['train_s']:.0f} s)"
        if rec
        else "not fine-tuned (slim.epochs 0)"
    )
    q = c["slim"]["int8"].get("recipe") or {} if c else {}
    int8 = (
        f": {q['format']}, {q['calibration']} calibration, {q['weight_bits']}-bit weights"
        if q
        else ""
    )
    text = (
        f"Channel pruning removed {pr['ratio']:.0%} of the prunable channels "
        f"({f.count(pr['before']['params'])} -> {f.count(pr['after']['params'])} parameters, "
        f"{f.count(pr['before']['macs'])} -> {f.count(pr['after']['macs'])} MACs per image), "
        f"{recovered}. "
        + (
            "Both classifiers were exported to ONNX (FP32, and INT8 with the run's "
            f"`export.int8` recipe{int8}) and measured side by side in the slim stage with ONNX "
            "Runtime on the test split."
            if c
            else "They were not measured side by side (slim.compare: false)."
        )
    )
    kept = pr.get("kept_whole") or []
    if kept:
        text += (
            f" {len(kept)} group{'s' if len(kept) > 1 else ''} of layers "
            f"({sum(len(k['layers']) for k in kept)} layers) kept all their channels: removing "
            "one breaks the network (an operation the dependency graph cannot follow, such as a "
            "shape fixed inside a lambda or a custom module): "
            + "; ".join(f"`{k['root']}` ({k['why']})" for k in kept[:5])
            + (
                f"; and {len(kept) - 5} more (the slim stage's pruning.json)"
                if len(kept) > 5
                else ""
            )
            + "."
        )
    return Section("Compression", [text, Table(header, rows)] if c else [text])


def _export(r: dict[str, Any]) -> Section | None:
    if not r["export"]:
        return None
    made = {k: e for k, e in r["export"].items() if isinstance(e, dict) and "parity" in e}
    rows = [
        [
            name,
            f"{e['parity']['max_abs_diff']:.3g}",
            f.pct(e["parity"]["top1_agreement"]),
            f.count(e["parity"]["samples"]),
        ]
        for name, e in made.items()
    ]
    blocks: list = [
        "Each exported model against the torch classifier on the same test images.",
        Table(["artefact", "max abs logit diff", "top-1 agreement", "images"], rows),
    ]
    quant = [
        [k, f"{e['quantization']['weight_bits']}-bit", e["quantization"]["weight_bits_why"]]
        for k, e in made.items()
        if isinstance(e.get("quantization"), dict)
    ]
    if quant:
        blocks.append(Table(["INT8 model", "weights", "why"], quant))
    skipped = r["export"].get("skipped", {})
    if skipped:
        blocks.append(Table(["format", "skipped because"], [[k, v] for k, v in skipped.items()]))
    return Section("Export parity", blocks)


def _environment(r: dict[str, Any]) -> Section:
    env = r.get("environment", {})
    keys = [
        "cpu_model",
        "cpu_count",
        "device",
        "platform",
        "python",
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "accelerate",
        "tensorrt",
    ]
    rows = [[k, str(env[k])] for k in keys if k in env]
    keys_text = ", ".join(f"{s} `{k}`" for s, k in r["stage_keys"].items())
    return Section(
        "Environment and reproduction",
        [
            Table(["", "value"], rows),
            f"Stage keys: {keys_text}. Every file is listed with its sha256 in its stage's "
            "`manifest.json`; `python -m pipeline report RUN_DIR` rebuilds this report from them.",
        ],
    )


def build_document(r: dict[str, Any], figures: dict[str, str]) -> Document:
    sections = [
        _artefacts(r, figures),
        _sweep(r, figures),
        _classes(r, figures),
        _training(r, figures),
        _compression(r),
        _prune(r, figures),
        _export(r),
        _environment(r),
    ]
    return Document(f"Run `{r['run']}`", _summary(r), [s for s in sections if s is not None])


def figure_paths(figures: dict[str, Path], run_dir: Path) -> dict[str, str]:
    return {k: p.relative_to(run_dir).as_posix() for k, p in figures.items() if p is not None}
