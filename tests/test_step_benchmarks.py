"""The training-step benchmarks: bf16 on a CPU, CUDA graphs refused there, the self-teacher's
blocks, the per-operator split and the fused batch norm."""

import argparse

import pytest
import torch
from torch import nn

from tests.conftest import load_benchmark


def test_step_time_bf16_autocasts_on_a_cpu(one_thread):
    step_time = load_benchmark("step_time")
    args = argparse.Namespace(
        model="resnet18", width=0.125, classes=10, channels_last=False, bf16=True
    )
    run = step_time.Run("ce", "eager", args, torch.device("cpu"))
    dtypes = []
    conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    run.step(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
    assert dtypes == [torch.bfloat16]


def test_teacher_blocks_time_every_level_and_the_whole_self_teacher(one_thread):
    blocks = load_benchmark("teacher_blocks")
    args = argparse.Namespace(width=0.125, batch=2, backend="eager")
    cases = blocks.cases(args)
    # CIFAR ResNet-18 at width 0.125: stages of 8-64 channels, self-teacher levels twice as wide
    levels = [(16, 32), (32, 16), (64, 8), (128, 4)]
    expected = [
        name
        for d, h in levels
        for name in (f"BN + ReLU, {d} ch at {h}x{h}", f"DSConv, {d} ch at {h}x{h}")
    ]
    assert list(cases) == [*expected, "self-teacher (all levels)"]
    for modes in cases.values():
        assert set(modes) == {"eager", "compiled"}
        for fn in modes.values():
            fn()  # forward and backward, no error


def _compare_args(**overrides) -> argparse.Namespace:
    """step_time.compare's arguments for a tiny CPU run."""
    base = dict(model="resnet18", width=0.125, batch=2, steps=1, classes=10, backend="eager")
    return argparse.Namespace(**{**base, "channels_last": False, "bf16": False, **overrides})


def test_step_time_refuses_cuda_graphs_on_a_cpu():
    step_time = load_benchmark("step_time")
    args = _compare_args(methods=["ce"], modes=["eager", "cudagraphs"], backend="inductor")
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        step_time.compare(args, torch.device("cpu"))


def test_fused_bn_relu_computes_what_aten_does(tmp_path, one_thread):
    """The hand-written kernel the fusion benchmark times is a correct training batch norm +
    ReLU: outputs, all three gradients and the running statistics match ATen's."""
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the kernel")
    bench = load_benchmark("fused_bn_relu")
    fused = bench.fused_bn_relu(bench.build(tmp_path), threads=1)
    for shape in [(4, 16, 8), (3, 24, 5)]:  # 24 channels: not a multiple of a vector width
        row = bench.compare(fused, shape, repeats=1)
        err = row["max_rel_error"]
        for k in ("output", "grad_input", "running_mean", "running_var"):
            assert err[k] < 1e-4, row
        # an input within rounding of the threshold may fall on the ReLU's other side under
        # another summation order; it moves the parameter gradients' sums by its own gradient
        tol = 1e-4 if row["relu_mask_flips"] == 0 else 1e-2
        assert err["grad_weight"] < tol and err["grad_bias"] < tol, row
        assert row["relu_mask_flips"] <= 2, row
    step = bench.in_step(fused, width=0.125, batch=2, rounds=1)
    assert step["aten_ms"] > 0 and step["fused_ms"] > 0


def test_step_ops_splits_what_a_self_teacher_adds_by_operator(one_thread):
    ops = load_benchmark("step_ops")
    args = argparse.Namespace(model="resnet18", width=0.125, batch=2, classes=10, steps=1)
    ce, ama = ops.profile("ce", args), ops.profile("ama", args)
    assert "convolution (depthwise)" not in ce  # the classifier has none
    for name in ("convolution (depthwise)", "convolution_backward (depthwise)"):
        assert ama[name] > 0
    assert ama["convolution (1x1)"] > ce.get("convolution (1x1)", 0.0)
    assert all(v >= 0 for v in ama.values())


def test_step_ops_times_the_added_convolutions_parts_and_checks_their_matrix_products(one_thread):
    ops = load_benchmark("step_ops")
    args = argparse.Namespace(
        model="resnet18", width=0.125, batch=2, classes=10, methods=["ce", "ama"], reps=1
    )
    table = ops.conv_parts_table(args)
    rows = table["rows"]
    depthwise = [r for r in rows if r["groups"] > 1]
    pointwise = [r for r in rows if "mm_ms" in r]
    # only the self-teacher's: depthwise (never a matrix product) and 1x1 convolutions
    assert depthwise and pointwise and all(r["weight"][2:] in ([1, 1], [3, 3]) for r in rows)
    assert all("mm_ms" not in r for r in depthwise)
    assert sum(r["count"] for r in depthwise) == 2 * 6  # two in each of the 6 DSConvs
    for r in pointwise:
        assert r["mm_max_rel_err"] < 1e-4, r
        assert len(r["aten_ms"]) == len(r["mm_ms"]) == 3
    t = table["totals"]
    assert 0 < t["best_ms"] <= min(t["aten_ms"], t["mm_ms"]) + 1e-9


def test_step_time_pairs_rounds_and_reports_speedups_in_any_mode_order(one_thread):
    step_time = load_benchmark("step_time")
    # backend "eager": dynamo's capture without code generation, seconds rather than minutes
    args = _compare_args(methods=["ce", "ama"], modes=["compiled", "eager"], steps=2)
    row = step_time.compare(args)["methods"]["ama"]
    for mode in ("eager", "compiled"):
        assert len(row[f"{mode}_steps_ms"]) == 2
        assert row[f"ratio_{mode}_paired"] > 0
    assert row["compiled_speedup"] == row["eager_ms"] / row["compiled_ms"]
    assert row["graph_breaks"] == 0
