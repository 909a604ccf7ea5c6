"""The slim stage's body: the trained model pruned through its training wrapper, then
recovered by fine-tuning through the training code.

1. `prune_trained`: the trained model is rebuilt with the recovery method's auxiliary branch
   (the run's own self-teacher, trained weights and all, when the methods agree) and pruned
   through Torch-Pruning's dependency graph (`channel_pruning`); the self-teacher's laterals
   lose the input channels the classifier lost. The pruned network is kept in a folder
   (safetensors plus a spec with every layer width: loading runs no code).
2. `recover`: fine-tunes it through `fit` with a start model, so it checkpoints and resumes
   like training: `slim.method` `auto` keeps the run's method (the self-teacher's knowledge
   is the recovery signal), `ce` is the control. `slim.teacher: unpruned` adds the frozen
   unpruned classifier (the train stage's, rebuilt from its files by every process and on
   resume) as a teacher beside the method (`training.teacher`). `slim.init: scratch` trains
   the pruned architecture from fresh weights instead, with its own epochs and learning rate
   and the train stage's schedule (the control for the value of the pruned weights).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.artifacts import write_json_atomic
from pipeline.config import PipelineConfig
from pipeline.data import DataBundle
from pipeline.distill import create_method
from pipeline.errors import StageError
from pipeline.models.channels import layer_shapes, parameter_shapes
from pipeline.models.io import read_spec, save_model
from pipeline.training import accel
from pipeline.training.channel_pruning import prune_channels
from pipeline.training.fit import fit
from pipeline.training.launch import run_launched
from pipeline.training.model import build_training_model, load_deployable
from pipeline.training.teacher import TeacherSource

log = logging.getLogger("pipeline.slim")

MODEL_FILES = ("model.safetensors", "model.json")

# (work folder, image size) -> the batch-1 latency (ms) of a classifier: a latency budget's probe
LatencyProbe = Callable[[Path, int], Callable[[torch.nn.Module], float]]


def link_model(src: Path, dst: Path) -> None:
    """The model files of folder `src` in folder `dst`: hard links, or copies where links fail."""
    for f in MODEL_FILES:
        (dst / f).unlink(missing_ok=True)
        try:
            os.link(src / f, dst / f)
        except OSError:
            shutil.copyfile(src / f, dst / f)


def recovery_method(cfg: PipelineConfig) -> str:
    return cfg.recovery_method()


def train_batches(data: DataBundle, n_batches: int, batch: int = 64):
    """Labelled train images with the deterministic evaluation transform, spread over the split."""
    view = data.spread_train(n_batches * batch)
    xs, ys = view.stack(), torch.as_tensor(view.labels)
    return [(xs[s : s + batch], ys[s : s + batch]) for s in range(0, len(view), batch)]


def start_model(cfg: PipelineConfig, train_dir: Path):
    """The trained model as the recovery method's training wrapper: trained tensors where the
    two agree, a fresh auxiliary branch where the run trained none (reported)."""
    method = recovery_method(cfg)
    spec = read_spec(train_dir, "model")
    options = cfg.recovery_options()
    needs = create_method(method, options, num_classes=spec.num_classes, epochs=1)
    spec = spec.replace(method=method, feature_taps=needs.needs_features)
    wrapper, _ = build_training_model(spec, options)
    trained = load_file(str(train_dir / "model.safetensors"))
    own = wrapper.state_dict()
    fresh = sorted(k for k in own if k not in trained)
    if any(k.startswith("backbone.") and not k.startswith("backbone.taps.") for k in fresh):
        raise StageError(f"the trained model in {train_dir} lacks classifier tensors: {fresh[:5]}")
    wrapper.load_state_dict({k: v for k, v in trained.items() if k in own}, strict=False)
    if fresh:
        log.warning(
            "recovery method %r: %d tensors start fresh (the run trained %r without them)",
            method,
            len(fresh),
            read_spec(train_dir, "model").method,
        )
    return wrapper.eval(), spec, len(fresh)


def prune_trained(
    cfg: PipelineConfig,
    data: DataBundle,
    train_dir: Path,
    pruned_dir: Path,
    latency_probe: LatencyProbe,
) -> dict[str, Any]:
    """Prune the trained model into `pruned_dir` (reused when already there: resume); a latency
    budget (`slim.latency_ms`) is measured with `latency_probe`. The pruning record."""
    record_path = pruned_dir / "pruning.json"
    if record_path.is_file() and all((pruned_dir / f).is_file() for f in MODEL_FILES):
        log.info("reusing the pruned network in %s", pruned_dir)
        return json.loads(record_path.read_text())
    s = cfg.slim
    wrapper, spec, fresh = start_model(cfg, train_dir)
    batches = train_batches(data, s.taylor_batches if s.importance == "taylor" else 1)
    example = batches[0][0][:2]
    with tempfile.TemporaryDirectory(dir=pruned_dir.parent) as tmp:
        probe = latency_probe(Path(tmp), int(example.shape[-1]))
        record = prune_channels(
            wrapper,
            example,
            s,
            batches=batches,
            latency_ms=probe if s.latency_ms is not None else None,
        )
    with torch.no_grad():  # the stage widths as they now are (the attribute is the built ones)
        widths = [int(f.shape[1]) for f in wrapper.backbone.forward_features(example)]
    wrapper.backbone.stage_channels = widths
    record["fresh_tensors"] = fresh
    record["stage_channels"] = widths
    pruned_spec = spec.replace(
        shapes=layer_shapes(wrapper),
        params=parameter_shapes(wrapper.backbone, "backbone.") or None,
        stage_channels=widths,
    )
    pruned_dir.mkdir(parents=True, exist_ok=True)
    save_model(wrapper, pruned_spec, pruned_dir, "model")
    write_json_atomic(record_path, record)
    return record


def recovery_config(cfg: PipelineConfig) -> PipelineConfig:
    """The train settings of the recovery: the method and its options
    (`PipelineConfig.recovery_options`), and the slim stage's schedule; from scratch
    (`slim.init: scratch`), slim.scratch_epochs and slim.scratch_lr with the train stage's
    schedule and warm-up."""
    s = cfg.slim
    distill = cfg.recovery_options()
    update: dict[str, Any] = {"method": recovery_method(cfg), "distill": distill}
    if s.init == "scratch":
        update |= {
            "epochs": s.recovery_epochs,
            "lr": s.scratch_lr if s.scratch_lr is not None else cfg.train.lr,
        }
    else:
        update |= {
            "epochs": s.epochs,
            "lr": s.lr,
            "schedule": s.schedule,
            "warmup_epochs": s.warmup_epochs,
        }
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def teacher_source(cfg: PipelineConfig, train_dir: Path) -> TeacherSource | None:
    """The unpruned teacher of `slim.teacher` (`unpruned`, or `auto` with a recovery): the
    train stage's classifier."""
    s = cfg.slim
    if s.distils_from == "none":
        return None
    return TeacherSource(train_dir, s.teacher_temperature, s.teacher_weight)


def recipe(cfg: PipelineConfig) -> dict[str, Any]:
    """What recovery does, for the stage's metrics: start, method, teacher, schedule."""
    s, t = cfg.slim, recovery_config(cfg).train
    return {
        "init": s.init,
        "method": t.method,
        "teacher": s.distils_from,
        **(
            {"teacher_temperature": s.teacher_temperature, "teacher_weight": s.teacher_weight}
            if s.distils_from != "none"
            else {}
        ),
        "epochs": t.epochs,
        "lr": t.lr,
        "schedule": t.schedule,
        "warmup_epochs": t.warmup_epochs,
    }


def recover(
    cfg: PipelineConfig, data: DataBundle, pruned_dir: Path, out_dir: Path, train_dir: Path
) -> dict[str, Any]:
    """Recover the pruned network in `out_dir` (checkpoints and resume as in training): its
    weights fine-tuned, or (`slim.init: scratch`) its architecture trained from fresh weights;
    with `slim.teacher: unpruned`, distilled from the classifier in `train_dir` too."""
    if cfg.slim.recovery_epochs == 0:
        link_model(pruned_dir, out_dir)
        return {}
    rcfg = recovery_config(cfg)
    teacher = teacher_source(cfg, train_dir)
    fresh = cfg.slim.init == "scratch"
    t = rcfg.train
    log.info(
        "recovery: %s, %s for %d epochs at lr %g (%s schedule, %d warm-up)%s",
        "the pruned architecture from fresh weights" if fresh else "the pruned weights",
        t.method,
        t.epochs,
        t.lr,
        t.schedule,
        t.warmup_epochs,
        f", with the unpruned teacher (T {teacher.temperature:g}, weight {teacher.weight:g})"
        if teacher
        else "",
    )
    if rcfg.train.processes > 1 and accel.world_size() == 1:
        return run_launched(rcfg, out_dir, start=pruned_dir, teacher=teacher, fresh=fresh)
    return fit(rcfg, data, out_dir, start=pruned_dir, teacher=teacher, fresh=fresh)


def deployable(folder: Path) -> torch.nn.Module:
    """The classifier of the training model saved in `folder`, less its auxiliary branch."""
    return load_deployable(folder)
