"""Accelerator, loaders and batch arithmetic: the same code for 1 CPU, N CPU processes or N GPUs."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import accelerate.utils
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch.utils.data import DataLoader, Dataset

from pipeline.config import TrainConfig
from pipeline.config.train import CUDA_GRAPH_MODES
from pipeline.data import SampleExtras, make_loader
from pipeline.data.device import DeviceBatches, unsupported_reason
from pipeline.errors import ConfigError, StageError


def world_size() -> int:
    """Processes of the launcher that started us (torchrun / accelerate launch), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_secondary_rank() -> bool:
    """True on every launched process but the global rank 0: they train, nothing else."""
    return int(os.environ.get("RANK", "0")) != 0


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    processes: int
    accum: int

    @property
    def per_process(self) -> int:
        return self.global_batch // (self.processes * self.accum)


def batch_plan(t: TrainConfig, processes: int) -> BatchPlan:
    parts = processes * t.grad_accum_steps
    if t.batch_size % parts:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) is the global batch; with {processes} processes x "
            f"{t.grad_accum_steps} accumulation steps it must be a multiple of {parts}"
        )
    return BatchPlan(t.batch_size, processes, t.grad_accum_steps)


# Accelerate's tracker name -> the package that provides it (pip name).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet-ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def _check_tracker(tracker: str) -> None:
    if tracker == "none":
        return
    is_available = getattr(accelerate.utils, f"is_{tracker}_available", None)
    if is_available is None or not is_available():
        package = TRACKER_PACKAGES.get(tracker, tracker)
        raise ConfigError(
            f"train.tracker is {tracker!r} but its package is not installed; run "
            f"`pip install {package}`, or set train.tracker=none"
        )


def _flat(tree: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as the flat scalar dict every tracker's hyper-parameter log accepts."""
    out: dict[str, int | float | str | bool] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def start_tracking(acc, cfg) -> None:
    """Open the configured tracker's run (Accelerate logs nothing before `init_trackers`)."""
    if cfg.train.tracker == "none":
        return
    dump = cfg.model_dump(mode="json", by_alias=True)
    hparams = _flat({k: dump[k] for k in ("data", "model", "train")})
    acc.init_trackers(cfg.name, config=hparams)


def set_determinism(on: bool) -> None:
    if not on:
        return
    # cuBLAS needs a fixed workspace for deterministic GEMMs; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def make_accelerator(t: TrainConfig, work: Path):
    if t.device == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    _check_tracker(t.tracker)
    set_determinism(t.deterministic)
    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    # The seedable sampler reshuffles from (seed, epoch) alone, so a resumed epoch sees the
    # same order as an uninterrupted one, and every rank agrees on it.
    loaders = DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=t.seed, non_blocking=not cpu
    )
    return Accelerator(
        cpu=cpu,
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        dataloader_config=loaders,
        log_with=None if t.tracker == "none" else t.tracker,
        project_config=ProjectConfiguration(
            project_dir=str(work), logging_dir=str(work / "tensorboard")
        ),
    )


# oneDNN in torch 2.14's CPU build corrupts the heap in the weight gradient of a stride-2 1x1
# convolution with 8 input channels in channels_last when the batch size is odd (ResNet-18 at
# width 0.125 with a ragged last batch aborts with "double free or corruption"); 16 and wider
# are fine, as are 1-6 and 10-12.
_CPU_NHWC_MIN_CHANNELS = 16


def use_channels_last(t: TrainConfig, device: torch.device, narrowest: int) -> bool:
    """Resolve `train.channels_last`: NHWC is faster on CPUs (oneDNN) and for mixed precision
    on GPUs (tensor cores); fp32 on a GPU keeps NCHW. `narrowest` is the backbone's narrowest
    stage width: on a CPU, auto keeps NCHW below 16 channels (see above)."""
    cpu = device.type == "cpu"
    if t.channels_last is True and cpu and narrowest < _CPU_NHWC_MIN_CHANNELS:
        raise ConfigError(
            f"train.channels_last=true on a CPU with a {narrowest}-channel stage: this torch "
            "build's oneDNN corrupts memory in such narrow channels_last convolutions; use "
            "train.channels_last=auto (or false), or a model.width giving 16+ channels"
        )
    if t.channels_last != "auto":
        return bool(t.channels_last)
    if cpu:
        return narrowest >= _CPU_NHWC_MIN_CHANNELS
    return t.mixed_precision != "no"


# The torch.compile backend of a compiled training step; "aot_eager" (the same graphs, run by
# eager kernels) lets a test exercise the compiled path without a C++ toolchain's compile time.
COMPILE_BACKEND_ENV = "PIPELINE_COMPILE_BACKEND"


def use_compile(t: TrainConfig, device: torch.device, self_teacher: bool) -> bool:
    """Resolve `train.compile`: auto compiles a GPU step of a method without a self-teacher.
    Self-distillation stays eager under auto: no measurement shows its compiled step faster
    (on a GPU it is not yet measured; inductor's gradients are as close to float64 as eager
    float32's are); on a CPU the compiled step measured no faster and its compile time (1-2
    minutes) exceeds a short run's training (benchmarks/README.md)."""
    if t.compile != "auto":
        return bool(t.compile)
    return device.type == "cuda" and not self_teacher


def compile_backend() -> str:
    return os.environ.get(COMPILE_BACKEND_ENV, "inductor")


def compile_mode(t: TrainConfig, device: torch.device, backend: str) -> tuple[str, bool]:
    """`train.compile_mode` for this device: (torch.compile's mode, whether the step replays as
    CUDA graphs). Modes are inductor's (another back end ignores them), and CUDA graphs need a
    CUDA device; elsewhere a CUDA-graph mode compiles without them rather than failing, so one
    configuration runs on a GPU and on a laptop."""
    mode = t.compile_mode
    if backend != "inductor":
        return "default", False
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        return CUDA_GRAPH_MODES[mode], False
    return mode, mode in CUDA_GRAPH_MODES


def seed_worker(worker_id: int) -> None:
    """Data workers get torch seeds from the loader; numpy and random need the same."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SeededSamples(Dataset):
    """Each sample's augmentation drawn from its own seed (run seed, epoch, index).

    Accelerate's loader fetches one batch ahead, so at a checkpoint the global RNG has already
    paid for the next batch's augmentation; a resumed run would draw different crops. Seeding
    per sample makes augmentation independent of where the stream stood, of data workers and
    of the number of processes. Set `epoch` before each epoch's iteration.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**63)
            return self.base[i]


def train_on_device(setting: bool | str, bundle, device: torch.device) -> bool:
    """Resolve `data.on_device`: auto holds the training set on a GPU when it can (in memory,
    at the input size, crop/flip augmentation); true demands it, on any device."""
    if setting is False:
        return False
    why = unsupported_reason(bundle.train, bundle.preset)
    if setting is True and why is not None:
        raise ConfigError(f"data.on_device=true: {why}")
    if setting is True:
        return True
    if why is not None or device.type != "cuda":
        return False
    # auto leaves the GPU's memory to the model: at most a quarter of it for the images
    images = bundle.train.base.images
    size = images.element_size() * images[0].numel() * len(bundle.train)
    return size <= ON_DEVICE_MAX_SHARE * torch.cuda.get_device_properties(device).total_memory


ON_DEVICE_MAX_SHARE = 0.25


def loaders(
    bundle,
    t: TrainConfig,
    plan: BatchPlan,
    workers: int | str,
    on_gpu: bool,
    *,
    index: bool = False,
    pair: bool = False,
    device: torch.device | None = None,
    rank: int = 0,
    drop_last: bool = False,
) -> tuple:
    """Train, validation and test loaders. `index` / `pair`: the training batches carry the
    extras a method asks for (`SampleExtras`), as a third element. `device`: the training
    batches are made on that device (`DeviceBatches`, this process being `rank` of
    `plan.processes`) instead of by a DataLoader. `drop_last`: the training loader drops a ragged
    last batch (a compiled step keeps one shape; batches made on the device always do)."""

    def one(ds: Dataset, shuffle: bool, drop: bool = False) -> DataLoader:
        return make_loader(
            ds,
            plan.per_process,
            shuffle=shuffle,
            workers=workers,
            seed=t.seed,
            pin_memory=on_gpu,
            # Persistent workers pay off on GPU; in deterministic mode fresh workers each epoch
            # are seeded from the loader's generator, which a resume restores.
            persistent_workers=on_gpu and not t.deterministic,
            worker_init_fn=seed_worker,
            drop_last=drop,
        )

    evals = one(bundle.val, False), one(bundle.test, False)
    if device is not None:
        train = DeviceBatches(
            bundle.train,
            bundle.preset,
            plan.per_process,
            device,
            seed=t.seed,
            rank=rank,
            world=plan.processes,
            index=index,
            pair=pair,
        )
        return train, *evals
    train_set = bundle.train
    if index or pair:
        train_set = SampleExtras(train_set, index=index, pair=pair)
    if t.deterministic:
        train_set = SeededSamples(train_set, t.seed)
    return one(train_set, True, drop_last), *evals
