"""A hand-written fused batch norm + ReLU for the CPU against ATen's two kernels, training mode.

    OMP_NUM_THREADS=1 python benchmarks/fused_bn_relu.py --threads 1 --json fused.json

Would fusing the self-teacher's batch norms with their ReLUs pay on a CPU? ATen runs a training
batch norm + ReLU in channels_last as about 14 passes over the map (statistics, normalise, the
ReLU in place; in backward the ReLU's mask, the norm's two reductions and its input gradient).
The C kernel here (compiled with the host's gcc, OpenMP over rows, float32, channels_last) does
it in 8: one pass for the statistics (per-chunk mean and M2 in cache, merged in float64), one
that normalises and clips, and in backward one reduction and one pass for the input gradient,
the ReLU mask recomputed from the saved input. It is timed forward + backward against
`relu(batch_norm(x))` at the self-teacher's map shapes (CIFAR ResNet-18, width 0.25 at batch 128
and width 1 at batch 64), interleaved, host memory reused as the train stage does; outputs,
gradients and running statistics are compared with ATen's. `--step-rounds N` also times the
`ama` training step with the fused kernel in the self-teacher's `DSConv` blocks against the step
as it is. Skips, saying why, without gcc.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.training.host_memory import reuse_freed_memory  # noqa: E402

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

/* rows of a chunk: about 64 KiB of one map, kept in cache for the chunk's two passes */
static int64_t chunk_rows(int64_t C) {
    int64_t r = (64 * 1024) / (C * (int64_t)sizeof(float));
    return r < 8 ? 8 : r;
}

/* x is (P, C), C contiguous: per-channel mean and M2 (sum of squared deviations) */
void bn_stats(const float *x, int64_t P, int64_t C, double *mean, double *m2, int nt) {
    int64_t R = chunk_rows(C), nchunks = (P + R - 1) / R;
    double *tm = calloc((size_t)(nt * C), sizeof(double));
    double *tv = calloc((size_t)(nt * C), sizeof(double));
    int64_t *tn = calloc((size_t)nt, sizeof(int64_t));
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *cm = malloc(C * sizeof(float)), *cv = malloc(C * sizeof(float));
        double *am = tm + t * C, *av = tv + t * C;
        int64_t n = 0;
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < nchunks; k++) {
            int64_t r0 = k * R, r1 = r0 + R < P ? r0 + R : P, nr = r1 - r0;
            for (int64_t c = 0; c < C; c++) { cm[c] = 0.f; cv[c] = 0.f; }
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = 0; c < C; c++) cm[c] += x[r * C + c];
            for (int64_t c = 0; c < C; c++) cm[c] /= (float)nr;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = 0; c < C; c++) { float d = x[r * C + c] - cm[c]; cv[c] += d * d; }
            double nn = (double)(n + nr);  /* merge (Chan et al.) */
            for (int64_t c = 0; c < C; c++) {
                double delta = (double)cm[c] - am[c];
                am[c] += delta * nr / nn;
                av[c] += cv[c] + delta * delta * (double)n * nr / nn;
            }
            n += nr;
        }
        tn[t] = n;
        free(cm); free(cv);
    }
    int64_t n = 0;
    for (int64_t c = 0; c < C; c++) { mean[c] = 0.0; m2[c] = 0.0; }
    for (int t = 0; t < nt; t++) {
        if (!tn[t]) continue;
        double nn = (double)(n + tn[t]);
        for (int64_t c = 0; c < C; c++) {
            double delta = tm[t * C + c] - mean[c];
            mean[c] += delta * tn[t] / nn;
            m2[c] += tv[t * C + c] + delta * delta * (double)n * tn[t] / nn;
        }
        n += tn[t];
    }
    free(tm); free(tv); free(tn);
}

/* y = max(0, x * a + b) */
void bn_relu_apply(const float *x, float *y, int64_t P, int64_t C, const float *a,
                   const float *b, int nt) {
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < P; r++)
        for (int64_t c = 0; c < C; c++) {
            float v = x[r * C + c] * a[c] + b[c];
            y[r * C + c] = v > 0.f ? v : 0.f;
        }
}

/* where x * a + b > 0: sg = sum g, sgx = sum g (x - mean) */
void bn_relu_reduce(const float *g, const float *x, int64_t P, int64_t C, const float *a,
                    const float *b, const float *mean, double *sg, double *sgx, int nt) {
    int64_t R = chunk_rows(C), nchunks = (P + R - 1) / R;
    double *ts = calloc((size_t)(nt * C), sizeof(double));
    double *tx = calloc((size_t)(nt * C), sizeof(double));
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *cs = malloc(C * sizeof(float)), *cx = malloc(C * sizeof(float));
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < nchunks; k++) {
            int64_t r0 = k * R, r1 = r0 + R < P ? r0 + R : P;
            for (int64_t c = 0; c < C; c++) { cs[c] = 0.f; cx[c] = 0.f; }
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = 0; c < C; c++) {
                    float xv = x[r * C + c];
                    float gm = xv * a[c] + b[c] > 0.f ? g[r * C + c] : 0.f;
                    cs[c] += gm;
                    cx[c] += gm * (xv - mean[c]);
                }
            for (int64_t c = 0; c < C; c++) { ts[t * C + c] += cs[c]; tx[t * C + c] += cx[c]; }
        }
        free(cs); free(cx);
    }
    for (int64_t c = 0; c < C; c++) { sg[c] = 0.0; sgx[c] = 0.0; }
    for (int t = 0; t < nt; t++)
        for (int64_t c = 0; c < C; c++) { sg[c] += ts[t * C + c]; sgx[c] += tx[t * C + c]; }
    free(ts); free(tx);
}

/* dx = mask g k1 - k2 - (x - mean) k3 */
void bn_relu_grad(const float *g, const float *x, float *dx, int64_t P, int64_t C,
                  const float *a, const float *b, const float *mean, const float *k1,
                  const float *k2, const float *k3, int nt) {
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < P; r++)
        for (int64_t c = 0; c < C; c++) {
            float xv = x[r * C + c];
            float gm = xv * a[c] + b[c] > 0.f ? g[r * C + c] : 0.f;
            dx[r * C + c] = gm * k1[c] - k2[c] - (xv - mean[c]) * k3[c];
        }
}
"""


def build(folder: Path) -> ctypes.CDLL:
    """Compile SOURCE with the host's gcc into `folder`; SystemExit naming what is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("skipped: no gcc on PATH to build the fused kernel (apt install gcc)")
    lib = folder / f"bn_relu_{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so"
    src = lib.with_suffix(".c")
    src.write_text(SOURCE)
    # -ffp-contract=off: the ReLU mask is recomputed in backward by the same arithmetic
    cmd = [gcc, "-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    res = subprocess.run([*cmd, "-o", str(lib), str(src)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"skipped: gcc could not build the fused kernel:\n{res.stderr[-2000:]}")
    return ctypes.CDLL(str(lib))


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def fused_bn_relu(lib: ctypes.CDLL, threads: int):
    """relu(batch_norm(x, training=True)) for channels_last float32 x, as an autograd Function."""
    i64, nt = ctypes.c_int64, ctypes.c_int(threads)

    class BNReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
            if x.dtype != torch.float32 or not x.is_contiguous(memory_format=torch.channels_last):
                raise ValueError("the fused kernel takes float32 maps in channels_last")
            n, c, h, w = x.shape
            rows = n * h * w
            mean = torch.empty(c, dtype=torch.float64)
            m2 = torch.empty(c, dtype=torch.float64)
            lib.bn_stats(_p(x), i64(rows), i64(c), _p(mean), _p(m2), nt)
            invstd = (m2 / rows + eps).rsqrt()
            with torch.no_grad():
                running_mean.lerp_(mean.float(), momentum)
                running_var.lerp_((m2 / max(rows - 1, 1)).float(), momentum)
            a = weight.detach().double() * invstd
            a32, b32 = a.float(), (bias.detach().double() - mean * a).float()
            y = torch.empty_like(x)
            lib.bn_relu_apply(_p(x), _p(y), i64(rows), i64(c), _p(a32), _p(b32), nt)
            ctx.save_for_backward(x, weight)
            ctx.consts = (a32, b32, mean.float(), invstd)
            return y

        @staticmethod
        def backward(ctx, g):
            x, weight = ctx.saved_tensors
            a32, b32, mean32, invstd = ctx.consts
            g = g.contiguous(memory_format=torch.channels_last)
            n, c, h, w = x.shape
            rows = n * h * w
            sg = torch.empty(c, dtype=torch.float64)
            sgx = torch.empty(c, dtype=torch.float64)
            lib.bn_relu_reduce(
                _p(g), _p(x), i64(rows), i64(c), _p(a32), _p(b32), _p(mean32), _p(sg), _p(sgx), nt
            )
            gi = weight.detach().double() * invstd
            k1, k2 = gi.float(), (gi * sg / rows).float()
            k3 = (gi * invstd * invstd * sgx / rows).float()
            dx = torch.empty_like(x)
            lib.bn_relu_grad(
                _p(g), _p(x), _p(dx), i64(rows), i64(c), _p(a32), _p(b32), _p(mean32),
                _p(k1), _p(k2), _p(k3), nt,
            )  # fmt: skip
            return dx, (invstd * sgx).to(weight.dtype), sg.to(weight.dtype), *[None] * 4

    return lambda x, w, b, rm, rv: BNReLU.apply(x, w, b, rm, rv, 0.1, 1e-5)


def aten_bn_relu(x, w, b, rm, rv):
    return F.relu(F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5), inplace=True)


# (batch, channels, size): the self-teacher's maps, width 0.25 at batch 128, width 1 at batch 64
SHAPES = [(128, 32, 32), (128, 64, 16), (128, 128, 8), (128, 256, 4), (64, 128, 32), (64, 256, 16)]


def compare(fused, shape: tuple[int, int, int], repeats: int) -> dict:
    n, c, s = shape
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(n, c, s, s, generator=gen) * 2 + 0.5).contiguous(
        memory_format=torch.channels_last
    )
    g = torch.randn(n, c, s, s, generator=gen).contiguous(memory_format=torch.channels_last)
    w0, b0 = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen) * 0.1

    def run(fn):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        rm, rv = torch.zeros(c), torch.ones(c)
        t0 = time.perf_counter()
        y = fn(x, w, b, rm, rv)
        y.backward(g)
        return time.perf_counter() - t0, (y.detach(), x.grad, w.grad, b.grad, rm, rv)

    _, ref = run(aten_bn_relu)
    _, got = run(fused)
    # inputs within rounding of the ReLU's threshold may take the other side; the input gradient
    # then differs there by the whole upstream gradient, so it is compared where both agree
    agree = (ref[0] > 0) == (got[0] > 0)
    flips = int((~agree).sum())
    names = ("output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")
    errors = {}
    for k, r, f in zip(names, ref, got, strict=True):
        if k == "grad_input":
            r, f = r[agree], f[agree]
        errors[k] = float((r - f).abs().max() / r.abs().max().clamp_min(1e-12))
    times: dict[str, list[float]] = {"aten": [], "fused": []}
    for _ in range(repeats):
        for name, fn in (("aten", aten_bn_relu), ("fused", fused)):
            times[name].append(run(fn)[0])
    aten_ms = 1000 * statistics.median(times["aten"])
    fused_ms = 1000 * statistics.median(times["fused"])
    return {
        "shape": [n, c, s, s],
        "aten_ms": aten_ms,
        "fused_ms": fused_ms,
        "speedup": aten_ms / fused_ms,
        "max_rel_error": errors,
        "relu_mask_flips": flips,
    }


def in_step(fused, width: float, batch: int, rounds: int) -> dict:
    """The `ama` training step (benchmarks/step_time.py's) with ATen's batch norms in the
    self-teacher's `DSConv` blocks against the same step with the fused kernel in their place
    (both of a block's batch norms then include the ReLU that follows them: the self-teacher's
    own ReLU after the block finds nothing left to clip), interleaved; the paired ratio."""
    import types

    from benchmarks.step_time import Run
    from pipeline.models.self_teacher import DSConv

    def dsconv_fused(block, x):
        dw1, pw1, bn1, _, dw2, pw2, bn2 = block
        x = fused(pw1(dw1(x)), bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var)
        return fused(pw2(dw2(x)), bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var)

    cpu = torch.device("cpu")
    spec = argparse.Namespace(
        model="resnet18", width=width, classes=10, channels_last=True, bf16=False
    )
    runs = {}
    for name in ("aten", "fused"):
        torch.manual_seed(0)
        runs[name] = Run("ama", "eager", spec, cpu)
        if name == "fused":
            for m in runs[name].model.modules():
                if isinstance(m, DSConv):
                    m.forward = types.MethodType(dsconv_fused, m)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for run in runs.values():
        run.step(x, y)
    for _ in range(rounds):
        for run in runs.values():
            run.times.append(run.step(x, y))
    aten, fused_t = runs["aten"].times, runs["fused"].times
    return {
        "width": width,
        "batch": batch,
        "rounds": rounds,
        "aten_ms": 1000 * statistics.median(aten),
        "fused_ms": 1000 * statistics.median(fused_t),
        "fused_over_aten_paired": statistics.median(
            [f / a for f, a in zip(fused_t, aten, strict=True)]
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=8, help="timed calls of each, interleaved")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--step-rounds",
        type=int,
        default=0,
        help="also time the ama training step (width 0.25, batch 128) with ATen's and with the "
        "fused batch norms in the self-teacher's DSConv blocks, this many rounds interleaved",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp, reuse_freed_memory():
        fused = fused_bn_relu(build(Path(tmp)), threads)
        rows = [compare(fused, shape, args.repeats) for shape in SHAPES]
        step = in_step(fused, 0.25, 128, args.step_rounds) if args.step_rounds else None
    print(f"threads={threads}; forward + backward, median of {args.repeats}")
    for r in rows:
        worst = max(r["max_rel_error"].values())
        print(
            f"{'x'.join(map(str, r['shape'])):>14}: aten {r['aten_ms']:7.2f} ms  fused "
            f"{r['fused_ms']:7.2f} ms  {r['speedup']:.2f}x  worst rel. error {worst:.1e} "
            f"({r['relu_mask_flips']} of {math.prod(r['shape'])} on the other side of the ReLU)"
        )
    if step:
        print(
            f"ama step, width 0.25, batch 128: ATen {step['aten_ms']:.1f} ms, fused "
            f"{step['fused_ms']:.1f} ms; fused / ATen, paired over {step['rounds']} rounds: "
            f"{step['fused_over_aten_paired']:.3f}"
        )
    if args.json:
        out = {"threads": threads, "shapes": rows, "step": step}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
