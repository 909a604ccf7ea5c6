"""Attention figures: image, classifier attention, self-teacher attention, foreground mask.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global backend switch
and no figure registry that leaks memory in a long run.
"""

from __future__ import annotations

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
    kind: str = "soft",
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
    mask = adaptive_mask(t_att, kind=kind, kappa=kappa)
    return {
        COLUMNS[1]: _upsampled(s_att, hw, size),
        COLUMNS[2]: _upsampled(t_att, hw, size),
        COLUMNS[3]: F.interpolate(mask.view(-1, 1, *hw), size=size, mode="nearest").view(-1, *size),
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
) -> Path:
    """One PNG, a row per image: (image, classifier attention, self-teacher attention, mask).

    `images` is the normalised batch the model reads; `raw_images` (uint8 or floats in [0, 1],
    (B, 3, H, W)) is what is shown, or None to de-normalise `images` with `mean` and `std`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = attention_panels(model, images, stage)
    shown = _display_images(images, raw_images, mean, std)
    rows = images.shape[0]
    fig = Figure(figsize=(2.2 * len(COLUMNS), 2.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
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
