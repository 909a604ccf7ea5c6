"""The report's figures: training curves, and attention (image, classifier attention,
self-teacher attention, foreground mask) drawn with the run's own mask settings.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global backend switch
and no figure registry that leaks memory in a long run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from pipeline.artifacts import read_jsonl
from pipeline.distill.attention import adaptive_mask, attention_map, minmax
from pipeline.models.wrapper import SelfDistillModel

COLUMNS = ("image", "classifier attention", "self-teacher attention", "foreground mask")


def _display_images(
    images: torch.Tensor,
    raw_images: torch.Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """(B, H, W, 3) floats in [0, 1]: the raw images if given, else the de-normalised batch."""
    if raw_images is None:
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        shown = images.detach().float().cpu() * s + m
    elif raw_images.dtype == torch.uint8:
        shown = raw_images.float() / 255.0
    else:
        shown = raw_images.detach().float().cpu()
    return shown.clamp(0, 1).permute(0, 2, 3, 1)


def _upsampled(att: torch.Tensor, hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) -> (B, H, W), bilinear to the image size, min-max scaled for display."""
    maps = att.view(-1, 1, *hw)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return minmax(maps.flatten(1)).view(-1, *size)


@torch.no_grad()
def attention_panels(
    model: SelfDistillModel,
    images: torch.Tensor,
    stage: int = -1,
    mask: str = "soft",
    kappa: float = 20.0,
) -> dict[str, torch.Tensor]:
    """The three attention panels of one stage, each (B, H, W) in [0, 1] at the image size."""
    if model.aux is None:
        raise ValueError("attention figures need a model with a self-teacher (method frskd or ama)")
    was_training = model.training
    model.eval()
    try:
        out = model(images)
    finally:
        model.train(was_training)
    f, r = out.features[stage], out.aux_features[stage]
    hw, size = tuple(f.shape[-2:]), tuple(images.shape[-2:])
    s_att, t_att = attention_map(f), attention_map(r)
    m = adaptive_mask(t_att, kind=mask, kappa=kappa)
    return {
        COLUMNS[1]: _upsampled(s_att, hw, size),
        COLUMNS[2]: _upsampled(t_att, hw, size),
        COLUMNS[3]: F.interpolate(m.view(-1, 1, *hw), size=size, mode="nearest").view(-1, *size),
    }


def save_attention_figure(
    model: SelfDistillModel,
    images: torch.Tensor,
    raw_images: torch.Tensor | None,
    path: Path,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    stage: int = -1,
    mask: str = "soft",
    kappa: float = 20.0,
) -> Path:
    """One PNG, a row per image: (image, classifier attention, self-teacher attention, mask).

    `images` is the normalised batch the model reads; `raw_images` (uint8 or floats in [0, 1],
    (B, 3, H, W)) is what is shown, or None to de-normalise `images` with `mean` and `std`.
    `mask` and `kappa` are the run's `train.distill` settings, so the mask shown is the one
    that was trained with.
    """
    panels = attention_panels(model, images, stage, mask=mask, kappa=kappa)
    shown = _display_images(images, raw_images, mean, std)
    rows = images.shape[0]
    fig = _figure((2.2 * len(COLUMNS), 2.2 * rows), dpi=100)
    axes = fig.subplots(rows, len(COLUMNS), squeeze=False)
    for i in range(rows):
        axes[i][0].imshow(shown[i].numpy())
        for j, name in enumerate(COLUMNS[1:], start=1):
            axes[i][j].imshow(shown[i].numpy())
            cmap, alpha = ("gray", 1.0) if j == 3 else ("jet", 0.5)
            axes[i][j].imshow(panels[name][i].numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        for j, ax in enumerate(axes[i]):
            ax.set_axis_off()
            if i == 0:
                ax.set_title(COLUMNS[j], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _figure(size: tuple[float, float], dpi: int = 110):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global state)."""
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


LOSS_TERMS = {
    "ce": "classifier CE",
    "ce_aux": "self-teacher CE",
    "kd": "KD (alpha T^2 KL)",
    "at": "attention transfer",
    "mix": "mixed attention",
    "cls": "class-wise KL (lambda T^2 KL)",
}


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def training_figure(metrics_path: Path, out: Path) -> Path | None:
    """Per epoch: the total loss and each of its terms, train and validation top-1, and the
    learning rate, from the train stage's metrics.jsonl."""
    if not metrics_path.is_file():
        return None
    rows = read_jsonl(metrics_path)
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    fig = _figure((12, 3.4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(ep, [r["loss"] for r in rows], label="total", color="black", linewidth=2)
    terms = [k for k in LOSS_TERMS if k in rows[0]]
    if len(terms) > 1:  # with CE alone the one term is the total
        for key in terms:
            ax1.plot(ep, [r.get(key, float("nan")) for r in rows], label=LOSS_TERMS[key])
    ax1.set(xlabel="epoch", ylabel="loss (weighted term)", title="training loss")
    ax1.legend(fontsize=7)
    ax2.plot(ep, [r["train_top1"] for r in rows], label="train (classifier)")
    for key, label in (
        ("val_top1", "validation (classifier)"),
        ("val_aux_top1", "validation (self-teacher)"),
    ):
        shown = [r for r in rows if key in r]  # validation may run every few epochs only
        if shown:
            ax2.plot([r["epoch"] for r in shown], [r[key] for r in shown], label=label, marker=".")
    ax2.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(0, 1.02))
    ax2.legend(fontsize=7)
    ax3.plot(ep, [r["lr"] for r in rows], color="tab:purple")
    ax3.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
    return _save(fig, out)


def confusion_figure(labels, preds, classes: list[str], out: Path) -> Path:
    """Confusion matrix (rows: true class, normalised per row) and per-class top-1."""
    from sklearn.metrics import ConfusionMatrixDisplay  # keeps scikit-learn out of `compare`

    k = len(classes)
    side = min(12.0, 3.0 + 0.35 * k)
    fig = _figure((side + 4.5, side))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [side, 4]})
    disp = ConfusionMatrixDisplay.from_predictions(
        labels,
        preds,
        labels=list(range(k)),
        normalize="true",
        ax=ax1,
        colorbar=False,
        include_values=k <= 20,
        values_format=".2f",
        cmap="Blues",
        display_labels=classes if k <= 40 else None,
    )
    disp.ax_.set_title("confusion matrix (rows sum to 1)")
    if k > 40:
        ax1.set_xticks([])
        ax1.set_yticks([])
    per_class = [
        float((preds[labels == c] == c).mean()) if (labels == c).any() else float("nan")
        for c in range(k)
    ]
    ax2.barh(np.arange(k), per_class, color="tab:blue")
    ax2.set(xlim=(0, 1), xlabel="top-1", title="per-class top-1")
    ax2.set_yticks(np.arange(k), classes if k <= 40 else [""] * k, fontsize=7)
    ax2.invert_yaxis()
    return _save(fig, out)


def mistakes_figure(images, true, pred, conf, classes: list[str], out: Path) -> Path | None:
    """The most confident mistakes as thumbnails, each with its true and predicted label."""
    n = len(images)
    if n == 0:
        return None
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig = _figure((1.6 * cols, 1.9 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(
                f"true {classes[true[i]]}\npred {classes[pred[i]]} ({conf[i]:.0%})", fontsize=7
            )
    return _save(fig, out)


def latency_batch_figure(artefacts: dict[str, dict], out: Path) -> Path | None:
    """Batch-call latency (p50) and images/s against batch size, per artefact and thread count."""
    swept = {n: a["sweep"] for n, a in artefacts.items() if a.get("sweep")}
    if not swept:
        return None
    fig = _figure((10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    threads = sorted({p["threads"] for pts in swept.values() for p in pts})
    styles = ["--", "-", ":", "-."]
    for i, (name, pts) in enumerate(swept.items()):
        color = f"C{i}"
        for j, t in enumerate(threads):
            row = sorted((p for p in pts if p["threads"] == t), key=lambda p: p["batch"])
            if not row:  # a GPU row is swept at one thread count only
                continue
            b = [p["batch"] for p in row]
            label = f"{name}, {t} thread{'s' if t > 1 else ''}"
            ax1.plot(
                b, [p["p50"] for p in row], styles[j % 4], marker="o", color=color, label=label
            )
            ax2.plot(
                b,
                [p["images_per_s"] for p in row],
                styles[j % 4],
                marker="o",
                color=color,
                label=label,
            )
    ax1.set(
        xscale="log", yscale="log", xlabel="batch size", ylabel="p50 ms per call", title="latency"
    )
    ax2.set(xscale="log", xlabel="batch size", ylabel="images/s", title="throughput")
    ax1.legend(fontsize=7)
    return _save(fig, out)


def pareto(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The (label, latency, top-1) points no other point beats on both (lower latency, higher
    top-1), by increasing latency."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def accuracy_latency_figure(
    points: list[tuple[str, float, float]], out: Path, title: str = "top-1 against latency"
) -> Path | None:
    """Top-1 against batch-1 p50 latency for every artefact, the frontier drawn."""
    if not points:
        return None
    fig = _figure((6.4, 4.2))
    ax = fig.subplots()
    for i, (label, lat, acc) in enumerate(points):
        ax.scatter([lat], [acc], color=f"C{i % 10}", zorder=3)
        ax.annotate(label, (lat, acc), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto(points)
    ax.plot(
        [p[1] for p in front],
        [p[2] for p in front],
        "--o",
        color="gray",
        mfc="none",
        markersize=11,
        label="frontier",
    )
    ax.set(xscale="log", xlabel="batch-1 p50 latency, ms (log)", ylabel="top-1 (test)", title=title)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.legend(fontsize=7)
    return _save(fig, out)
