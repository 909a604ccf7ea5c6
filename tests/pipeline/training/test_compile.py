"""`train.compile`: the compiled step computes what the eager one does, and checkpoints move
between the two.

torch.compile's default back end (inductor) generates and builds C++ for every graph, a minute
or more for this model on a 2-core CPU, so these tests compile with `aot_eager`: the same
dynamo capture and AOT-autograd graphs (forward, backward, the loss as one graph), run by eager
kernels. Inductor's reordered sums are measured by `benchmarks/step_time.py` (see
benchmarks/README.md for the figures).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.distill import create_method
from pipeline.models import SelfDistillModel, create_model
from pipeline.training import accel

BACKEND = "aot_eager"


def _trajectory(
    compiled: bool,
    steps: int = 3,
    device: str = "cpu",
    mode: str | None = None,
    backend: str = BACKEND,
) -> tuple[list[dict], list[torch.Tensor]]:
    """`steps` SGD steps of `ama` (L_mix from the first step) on one fixed batch; `mode` is
    torch.compile's (reduce-overhead: CUDA graphs, each step marked as the train stage does)."""
    torch.manual_seed(0)
    method = create_method("ama", {"mix_warmup_epochs": 1}, num_classes=10, epochs=4)
    backbone = create_model(
        "resnet18", num_classes=10, stem="cifar", width=0.125, feature_taps=True
    )
    model = SelfDistillModel(backbone, method.build_aux(backbone)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    forward = model
    if compiled:
        forward = torch.compile(model, backend=backend, mode=mode, dynamic=False)
        method.compile(backend=backend, mode=mode)
    x = torch.randn(8, 3, 32, 32).to(device)
    y = (torch.arange(8) % 10).to(device)
    rows = []
    for step in range(steps):
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        loss = method.loss(forward(x), y, epoch=min(step, 1))  # epoch 0: without L_mix
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        rows.append({"total": loss.total.item(), **{k: v.item() for k, v in loss.parts.items()}})
    return rows, [p.detach().clone() for p in model.parameters()]


def test_compiled_step_matches_eager_over_a_few_steps(one_thread):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, eager_w = _trajectory(False)
    compiled, compiled_w = _trajectory(True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # the model's graph and the loss's two (without L_mix, then with it): nothing recompiles
    assert counters["stats"]["unique_graphs"] == 3
    for e, c in zip(eager, compiled, strict=True):
        assert e.keys() == c.keys()
        for k in e:
            assert c[k] == pytest.approx(e[k], rel=1e-5, abs=1e-6), k
    for a, b in zip(eager_w, compiled_w, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_auto_compiles_a_gpu_step_without_a_self_teacher_only():
    cfg = load_config(None, []).train
    assert cfg.compile == "auto"
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert accel.use_compile(cfg, cuda, self_teacher=False) is True
    assert accel.use_compile(cfg, cuda, self_teacher=True) is False
    assert accel.use_compile(cfg, cpu, self_teacher=False) is False
    on = load_config(None, ["train.compile=true"]).train
    off = load_config(None, ["train.compile=false"]).train
    assert accel.use_compile(on, cpu, self_teacher=True) is True
    assert accel.use_compile(off, cuda, self_teacher=False) is False


SMALL = ["data.max_per_class=12", "train.batch_size=16", "train.method=ama"]


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("first,then", [("true", "false"), ("false", "true")])
def test_a_checkpoint_resumes_across_compile(tiny_overrides, tmp_path, monkeypatch, first, then):
    """One epoch with `train.compile=first`, then the same work folder trained on to two epochs
    with `then`: the second resumes from the first's checkpoint (same keys, no `_orig_mod.`)."""
    from accelerate.state import AcceleratorState, GradientState

    from pipeline.data import build_data
    from pipeline.training.fit import fit

    monkeypatch.setenv(accel.COMPILE_BACKEND_ENV, BACKEND)
    torch._dynamo.reset()
    base = [*tiny_overrides, *SMALL, "train.checkpoint_every_epochs=1"]
    # a CUDA-graph mode in the configuration compiles without CUDA graphs on a CPU
    mode = ["train.compile_mode=reduce-overhead"] if first == "true" else []
    cfg = load_config(None, [*base, "train.epochs=1", f"train.compile={first}", *mode])
    bundle = build_data(cfg.data)
    work = tmp_path / "work"
    work.mkdir()
    one = fit(cfg, bundle, work)
    assert one["compiled"] is (first == "true")
    assert one.get("cuda_graphs", False) is False  # a CPU has none, whatever the mode
    assert ("compile_s" in one) is (first == "true")
    saved = load_file(str(work / "model.safetensors"))
    assert not any("_orig_mod" in k for k in saved)
    # the checkpoint's model state holds the eager module's keys, whichever mode wrote it
    (ckpt,) = work.glob("checkpoints/*/model.safetensors")
    assert set(load_file(str(ckpt))) == set(saved)

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg2 = load_config(None, [*base, "train.epochs=2", f"train.compile={then}"])
    two = fit(cfg2, bundle, work)
    rows = [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert two["resumed_from"] is not None
    assert two["compiled"] is (then == "true")


def test_compile_mode_resolves_per_device():
    """CUDA-graph modes replay as CUDA graphs only on a CUDA device with inductor; elsewhere the
    same configuration compiles without them instead of failing."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert load_config(None, []).train.compile_mode == "default"

    def mode(name: str, device: torch.device, backend: str = "inductor") -> tuple[str, bool]:
        t = load_config(None, ["train.compile=true", f"train.compile_mode={name}"]).train
        return accel.compile_mode(t, device, backend)

    assert mode("default", cuda) == ("default", False)
    assert mode("reduce-overhead", cuda) == ("reduce-overhead", True)
    assert mode("max-autotune", cuda) == ("max-autotune", True)
    assert mode("max-autotune-no-cudagraphs", cuda) == ("max-autotune-no-cudagraphs", False)
    assert mode("reduce-overhead", cpu) == ("default", False)
    assert mode("max-autotune", cpu) == ("max-autotune-no-cudagraphs", False)
    assert mode("reduce-overhead", cuda, "aot_eager") == ("default", False)
    assert mode("max-autotune-no-cudagraphs", cpu, "aot_eager") == ("default", False)


def test_compile_mode_rejects_what_it_cannot_do():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="set train.compile to true"):
        load_config(None, ["train.compile=false", "train.compile_mode=reduce-overhead"])
    # CUDA graphs overwrite a gradient buffer that accumulation would still read
    with pytest.raises(ConfigError, match="use grad_accum_steps=1"):
        load_config(
            None,
            ["train.compile_mode=max-autotune", "train.grad_accum_steps=2", "train.batch_size=32"],
        )
    ok = load_config(
        None,
        [
            "train.compile_mode=max-autotune-no-cudagraphs",
            "train.grad_accum_steps=2",
            "train.batch_size=32",
        ],
    )
    assert ok.train.compile_mode == "max-autotune-no-cudagraphs"


def test_the_train_stage_compiles_model_and_loss_with_the_resolved_mode(monkeypatch):
    """`_compile_step` hands torch.compile the mode resolved for the device, for the model and
    for the method's loss alike, and marks the step for CUDA graphs only where they run."""
    from types import SimpleNamespace

    from pipeline.training.fit import _compile_step

    calls = []

    def spy(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.delenv(accel.COMPILE_BACKEND_ENV, raising=False)
    cases = [
        ("reduce-overhead", "cpu", None, False),
        ("reduce-overhead", "cuda", "reduce-overhead", True),
        ("max-autotune", "cpu", "max-autotune-no-cudagraphs", False),
        ("default", "cuda", None, False),
    ]
    for name, device, expected, graphs in cases:
        calls.clear()
        cfg = load_config(None, ["train.compile=true", f"train.compile_mode={name}"]).train
        method = create_method("ama", num_classes=10, epochs=4)
        tr = SimpleNamespace(
            compile_step=True,
            cfg=cfg,
            accelerator=SimpleNamespace(device=torch.device(device)),
            model=torch.nn.Identity(),
            method=method,
            train_forward=None,
            cuda_graphs=None,
        )
        _compile_step(tr)
        assert [c["mode"] for c in calls] == [expected, expected], (name, device)
        assert all(c["backend"] == "inductor" and c.get("dynamic", False) is False for c in calls)
        assert tr.cuda_graphs is graphs and method.compiled


@pytest.mark.gpu
def test_a_cuda_graph_step_matches_the_compiled_step_over_a_few_steps():
    """`train.compile_mode: reduce-overhead` on a GPU replays the same inductor kernels as CUDA
    graphs, so its steps compute what the plainly compiled step does. (Against eager, inductor's
    reordered sums move an `ama` step of a freshly initialised self-teacher by up to 5% in four
    steps, as eager float32 does against float64: benchmarks/README.md, "Numerics".)"""
    torch._dynamo.reset()
    compiled, compiled_w = _trajectory(True, device="cuda", backend="inductor")
    torch._dynamo.reset()
    graphs, graphs_w = _trajectory(True, device="cuda", mode="reduce-overhead", backend="inductor")
    for e, c in zip(compiled, graphs, strict=True):
        for k in e:
            assert c[k] == pytest.approx(e[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(compiled_w, graphs_w, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
