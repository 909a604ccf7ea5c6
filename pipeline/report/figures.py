"""The report's figures: training curves, and attention (image, classifier attention,
self-teacher attention, foreground mask) drawn with the run's own mask settings.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global backend switch
and no figure registry that leaks memory in a long run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def training_figure(metrics_path: Path, out: Path) -> Path | None:
    """Loss and accuracy per epoch from the train stage's metrics.jsonl."""
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    fig = _figure((9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [r["loss"] for r in rows], label="total loss")
    if "ce" in rows[0]:
        ax1.plot(ep, [r["ce"] for r in rows], label="classifier CE")
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss")
    ax1.legend()
    ax2.plot(ep, [r["train_top1"] for r in rows], label="train")
    if "val_top1" in rows[0]:
        ax2.plot(ep, [r["val_top1"] for r in rows], label="val")
    ax2.set_xlabel("epoch")
    ax2.set_title("top-1")
    ax2.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
