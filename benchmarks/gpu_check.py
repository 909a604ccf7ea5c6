"""One command for a machine with a CUDA GPU: the `gpu`-marked tests, a short training-step
benchmark (ce, ls, frskd, ama; bf16; channels_last; images/s and the ratio to ce), the same
step eager, compiled and compiled as CUDA graphs (`train.compile`, `train.compile_mode:
reduce-overhead`; ce, frskd, ama; step_time.py's figures), the train
stage with batches from the DataLoader against batches made on the GPU, torch CUDA inference
latency at batch 1 and 32, and whatever of ONNX Runtime's CUDA / TensorRT providers and
TensorRT itself is installed. Writes one JSON and prints what it skipped and why.

    python benchmarks/gpu_check.py --out gpu_check.json [--only eager_vs_compiled ...]

Needs only torch, torchvision, numpy and the project's pure-Python dependencies; every other
back end is optional. On a machine without a GPU it says so and still writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gpu_tests() -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = res.stdout.strip().splitlines()[-1:] if res.stdout.strip() else []
    return {"exit_code": res.returncode, "summary": tail[0] if tail else res.stderr[-500:]}


def _images_per_s(method: str, width: float, batch: int, steps: int) -> float:
    """bf16, channels_last training steps of one method on random CIFAR-sized batches."""
    import torch

    from pipeline.data.presets import PRESETS
    from pipeline.models.spec import ModelSpec
    from pipeline.training.model import build_training_model

    spec = ModelSpec(
        arch="resnet18",
        stem="cifar",
        width=width,
        num_classes=100,
        method=method,
        classes=[str(i) for i in range(100)],
        preset=PRESETS["cifar100"].to_dict(),
    )
    options = {"mix_warmup_epochs": 0} if method in ("frskd", "ama") else None
    model, m = build_training_model(spec, options)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m.loss(model(x), y, epoch=1).total
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def train_steps(width: float, batch: int, steps: int) -> dict:
    out = {
        m: {"images_per_s": _images_per_s(m, width, batch, steps)}
        for m in ("ce", "ls", "frskd", "ama")
    }
    for method in ("ls", "frskd", "ama"):
        out[method]["step_time_vs_ce"] = out["ce"]["images_per_s"] / out[method]["images_per_s"]
    return {"width": width, "batch": batch, "steps": steps, "precision": "bf16", "methods": out}


def eager_vs_compiled(width: float, batch: int, steps: int) -> dict:
    """benchmarks/step_time.py's comparison on the GPU: ce, frskd and ama, eager, with the
    whole step compiled (`train.compile`) and compiled as CUDA graphs (`train.compile_mode:
    reduce-overhead`), bf16, channels_last; medians, ratios to ce, compile time and graph
    breaks."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import step_time

    args = argparse.Namespace(
        model="resnet18",
        width=width,
        batch=batch,
        steps=steps,
        classes=100,
        channels_last=True,
        methods=["ce", "frskd", "ama"],
        modes=list(step_time.MODES),
        backend="inductor",
        bf16=True,
    )
    return step_time.compare(args, torch.device("cuda"))


def _synthetic_cifar10(folder: Path, n_train: int = 50_000, n_test: int = 1_000) -> Path:
    """Random images in CIFAR-10's pickle layout (the loader's work does not depend on them)."""
    import pickle

    import numpy as np

    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        obj = {
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (root / name).write_bytes(pickle.dumps(obj, protocol=2))

    for b in range(1, 6):
        dump(f"data_batch_{b}", n_train // 5)
    dump("test_batch", n_test)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    meta = {b"label_names": [n.encode() for n in names]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def loader_ab(
    width: float, batch: int, tmp: Path, epochs: int = 3, device: str = "cuda", n: int = 50_000
) -> dict:
    """The train stage on `n` CIFAR-sized images, batches from the DataLoader against batches
    made on the device (`data.on_device`): images/s of the last epoch, and the ratio."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    root = _synthetic_cifar10(tmp / "cifar", n_train=n)
    precision = "bf16" if device == "cuda" else "no"
    out: dict = {"width": width, "batch": batch, "epochs": epochs, "method": "ce", "images": n}
    for on_device in (False, True):
        cfg = load_config(
            None,
            [
                "data.name=cifar10",
                f"data.root={root}",
                "data.val_fraction=0.02",
                f"model.width={width}",
                f"train.epochs={epochs}",
                f"train.batch_size={batch}",
                f"train.device={device}",
                f"train.mixed_precision={precision}",
                f"train.channels_last={'true' if device == 'cuda' else 'auto'}",
                "train.val_every_epochs=null",
                "train.checkpoint_every_epochs=null",
                f"data.on_device={str(on_device).lower()}",
                f"run_dir={tmp / 'runs'}",
                f"name=loader-{'device' if on_device else 'dataloader'}",
            ],
        )
        run_pipeline(cfg, only="train")
        rows = (cfg.run_path / "01_train" / "metrics.jsonl").read_text().splitlines()
        last = json.loads(rows[-1])
        out["on_device" if on_device else "dataloader"] = {"images_per_s": last["images_per_s"]}
    out["speed_up"] = out["on_device"]["images_per_s"] / out["dataloader"]["images_per_s"]
    return out


def torch_inference(width: float) -> dict:
    import torch

    from pipeline.models import create_model

    model = create_model("resnet18", num_classes=100, width=width).cuda().eval()
    out = {}
    for b in (1, 32):
        x = torch.randn(b, 3, 32, 32, device="cuda")
        with torch.inference_mode():
            for _ in range(20):
                model(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(200):
                t0 = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        times.sort()
        out[f"batch_{b}"] = {"p50_ms": 1000 * times[100], "images_per_s": b / (sum(times) / 200)}
    return out


def onnxruntime_gpu(width: float, tmp: Path) -> dict:
    import numpy as np
    import torch

    from export.onnx import export_onnx
    from pipeline.models import create_model
    from serving.predictor import import_onnxruntime

    ort = import_onnxruntime()
    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        return {
            "skipped": f"onnxruntime has no GPU provider (available: {available}); pip install onnxruntime-gpu"
        }
    path = tmp / "r18.onnx"
    export_onnx(
        create_model("resnet18", num_classes=100, width=width).eval(),
        torch.randn(2, 3, 32, 32),
        path,
        18,
    )
    out = {}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for provider in wanted:
        sess = ort.InferenceSession(str(path), providers=[provider, "CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, {sess.get_inputs()[0].name: x})
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            sess.run(None, {sess.get_inputs()[0].name: x})
            times.append(time.perf_counter() - t0)
        times.sort()
        out[provider] = {"batch_1_p50_ms": 1000 * times[100]}
    return out


def tensorrt_engine(tmp: Path) -> dict:
    import torch

    from export.onnx import export_onnx
    from export.tensorrt import build_and_benchmark
    from pipeline.models import create_model

    path = tmp / "r18-trt.onnx"
    export_onnx(
        create_model("resnet18", num_classes=100).eval(), torch.randn(2, 3, 32, 32), path, 18
    )
    return build_and_benchmark(
        path, tmp / "r18.fp32.engine", precision="fp32", batches=[1, 32], iters=200
    )


# Every check, in the order they run: (arguments, a temporary folder) -> its JSON entry.
CHECKS = {
    "gpu_tests": lambda a, tmp: gpu_tests(),
    "train_steps": lambda a, tmp: train_steps(a.width, a.batch, a.steps),
    "eager_vs_compiled": lambda a, tmp: eager_vs_compiled(a.width, a.batch, a.steps),
    "torch_inference": lambda a, tmp: torch_inference(a.width),
    "loader_ab": lambda a, tmp: loader_ab(a.width, a.batch, tmp),
    "onnxruntime_gpu": lambda a, tmp: onnxruntime_gpu(a.width, tmp),
    "tensorrt": lambda a, tmp: tensorrt_engine(tmp),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--only",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="run these checks only (all by default); the JSON is rewritten after each check, "
        "so a run stopped by a time limit keeps what it finished",
    )
    args = p.parse_args()
    import tempfile

    import torch

    result: dict = {"python": platform.python_version(), "torch": torch.__version__, "skipped": {}}
    if not torch.cuda.is_available():
        result["skipped"]["everything"] = (
            "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        )
    else:
        result["gpu"] = torch.cuda.get_device_name(0)
        result["check_s"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in (c for c in CHECKS if c in args.only):
                t0 = time.perf_counter()
                try:
                    result[name] = CHECKS[name](args, Path(tmp))
                    if isinstance(result[name], dict) and "skipped" in result[name]:
                        result["skipped"][name] = result.pop(name)["skipped"]
                except Exception as exc:  # noqa: BLE001 - recorded: the other checks still run
                    result["skipped"][name] = f"{type(exc).__name__}: {exc}"
                result["check_s"][name] = round(time.perf_counter() - t0, 1)
                print(f"{name}: {result['check_s'][name]:.0f} s", flush=True)
                args.out.write_text(json.dumps(result, indent=2, default=str))
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
