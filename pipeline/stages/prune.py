"""The prune stage: drop the self-teacher and every attention branch, and prove nothing changed.

The proof is on real test images: the saved deployable classifier, reloaded from disk, gives
logits equal (bit for bit by default) to the training wrapper's classifier logits; its weights
are the wrapper's own backbone's, less only the layers that fed the self-teacher; and the
removed branches' cost is measured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts import Manifest, StageContext, StageResult
from pipeline.errors import StageError
from pipeline.gates import at_most, show

if TYPE_CHECKING:
    import torch

    from pipeline.models.spec import ModelSpec

log = logging.getLogger("pipeline.prune")


def logit_parity(
    a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor, chunk: int = 128
) -> dict:
    import torch

    diffs, agree = [], 0
    with torch.inference_mode():
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk]
            la = a(x)
            la = la.logits if hasattr(la, "logits") else la
            lb = b(x)
            diffs.append((la - lb).abs().max().item())
            agree += int((la.argmax(1) == lb.argmax(1)).sum())
    return {
        "max_abs_diff": max(diffs),
        "top1_agreement": agree / len(images),
        "samples": len(images),
    }


def check_deployed(backbone: torch.nn.Module, deployed: torch.nn.Module) -> dict:
    """The deployed classifier is the training wrapper's own backbone less its feature taps:
    every deployed tensor equals the backbone's, and only tap tensors were left out."""
    import torch

    from pipeline.models import count_parameters

    ours, theirs = backbone.state_dict(), deployed.state_dict()
    extra = sorted(set(theirs) - set(ours))
    dropped = sorted(set(ours) - set(theirs))
    changed = [k for k in theirs if k in ours and not torch.equal(ours[k], theirs[k])]
    not_taps = [k for k in dropped if not k.startswith("taps.")]
    if extra or changed or not_taps:
        raise StageError(
            "the deployed classifier is not the trained backbone: "
            + "; ".join(
                f"{what}: {', '.join(keys[:5])}"
                for what, keys in (
                    ("tensors not in the backbone", extra),
                    ("tensors that differ", changed),
                    ("backbone tensors left out", not_taps),
                )
                if keys
            )
        )
    taps = getattr(backbone, "taps", None)
    params_taps = count_parameters(taps)
    if count_parameters(deployed) != count_parameters(backbone) - params_taps:
        raise StageError(
            f"deployed classifier has {count_parameters(deployed):,} parameters; the trained "
            f"backbone has {count_parameters(backbone):,} of which {params_taps:,} feed only the "
            "self-teacher"
        )
    return {"params_backbone": count_parameters(backbone), "params_feature_taps": params_taps}


def attention_figures(
    wrapper, images: torch.Tensor, spec: ModelSpec, distill, out_dir: Path
) -> None:
    """What the self-teacher taught, before it is removed: an early and the last stage, drawn
    with the run's own mask settings."""
    from pipeline.report.figures import save_attention_figure

    n_stages = len(wrapper.backbone.stage_channels)
    preset = spec.preset
    for stage in sorted({1, n_stages - 1}):
        save_attention_figure(
            wrapper,
            images,
            None,
            out_dir / f"attention_stage{stage + 1}.png",
            preset.mean,
            preset.std,
            stage=stage,
            mask=distill.mask,
            kappa=distill.kappa,
        )


def run(cfg, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext) -> StageResult:
    from pipeline.models import count_macs, count_parameters, torch_latency
    from pipeline.models.channels import layer_shapes, parameter_shapes
    from pipeline.models.io import build_backbone, load_weights, read_spec, save_model
    from pipeline.models.self_teacher import SelfTeacher
    from pipeline.training.model import build_training_model

    model_dir = inputs["slim"].folder  # the trained model, channel-pruned or passed through
    spec = read_spec(model_dir, "model")
    wrapper, _ = build_training_model(spec)  # the network only: no options needed
    load_weights(wrapper, model_dir, "model")
    classifier = wrapper.deployable()
    deploy_spec = spec.replace(
        feature_taps=None,
        aux_removed=wrapper.aux is not None,
        # a pruned classifier's own widths, without the self-teacher's
        shapes=layer_shapes(classifier) if spec.shapes is not None else None,
        params=(parameter_shapes(classifier) or None) if spec.shapes is not None else None,
    )
    save_model(classifier, deploy_spec, out_dir, "classifier")
    deployed = load_weights(build_backbone(deploy_spec), out_dir, "classifier")

    images = ctx.data.test.stack(cfg.prune.parity_samples)
    parity = logit_parity(wrapper, deployed, images)
    if not at_most(parity["max_abs_diff"], cfg.prune.atol):  # NaN fails too
        raise StageError(
            f"deployed classifier logits differ from the training model's by "
            f"{show(parity['max_abs_diff'], 3)} "
            f"(limit prune.atol={cfg.prune.atol}) on {parity['samples']} test images; "
            "the auxiliary branch must not feed the classifier"
        )
    same = check_deployed(wrapper.backbone, deployed)
    one = images[:1]
    cost = {
        "params_training": count_parameters(wrapper),
        "params_deployed": count_parameters(deployed),
        "params_removed": count_parameters(wrapper) - count_parameters(deployed),
        "macs_training": count_macs(wrapper, one),
        "macs_deployed": count_macs(deployed, one),
        "latency_training_ms": torch_latency(wrapper, one),
        "latency_deployed_ms": torch_latency(deployed, one),
    }
    cost["macs_removed"] = cost["macs_training"] - cost["macs_deployed"]
    # A self-teacher (frskd, ama: their options hold the mask settings); byot's shallow heads
    # and the methods without an auxiliary branch draw no attention.
    if isinstance(wrapper.aux, SelfTeacher):
        images_shown = images[: min(6, len(images))]
        attention_figures(wrapper, images_shown, spec, cfg.final_options(), out_dir)
    log.info(
        "pruned %d -> %d parameters; logits max |diff| %.3g on %d test images",
        cost["params_training"],
        cost["params_deployed"],
        parity["max_abs_diff"],
        parity["samples"],
    )
    bare = same["params_backbone"] - same["params_feature_taps"]
    metrics = {"parity": parity, "params_bare_backbone": bare, **cost}
    metrics["params_feature_taps"] = same["params_feature_taps"]
    return StageResult(metrics=metrics)
