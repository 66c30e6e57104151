"""Fused paths (ATen softmax / cross entropy, relu's CUDA kernel) against the array code, per device.

What it prints, per device (cpu0 always; gpu0 too when CUDA and CuPy are usable): one forward +
backward (under a GradManager) of each op, in microseconds per call (median over repeats, the
variants taking turns call by call), for

* ``arrays``: the ops' array code (numpy on the CPU, a chain of CuPy kernels on a GPU);
* ``fused``: what CUDA arrays take: ATen's kernels for softmax / log_softmax / cross entropy (on
  the CPU forced onto numpy arrays, as the tests do), the one CuPy kernel of relu's backward (GPU
  only: it has no CPU form);
* ``torch``: the same forward + backward in PyTorch on the same device,

with the ratios fused / arrays and fused / torch. On a GPU each call ends with a synchronisation
of both frameworks, so a figure is the latency of the whole call, kernels included. Before timing,
the variants' losses and gradients must agree (else it exits with an error).

The CPU figures are why the CPU keeps the array code (numpy is faster for the engine's small
batches); the GPU figures are the case for the fused paths (issue 12 item 4).

    python benchmarks/bench_fused_kernels.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import contextlib  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.functional import _aten  # noqa: E402
from megengine.functional import activation as _act  # noqa: E402  (relu's home)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

# (name, shape, megengine op, torch op, the op family whose path is switched)
CASES = [
    ("cross_entropy", (64, 10), lambda x, y: F.nn.cross_entropy(x, y),
     lambda x, y: TF.cross_entropy(x, y), "cross_entropy"),
    ("cross_entropy", (1024, 1000), lambda x, y: F.nn.cross_entropy(x, y),
     lambda x, y: TF.cross_entropy(x, y), "cross_entropy"),
    ("cross_entropy ls=0.1", (64, 10), lambda x, y: F.nn.cross_entropy(x, y, label_smooth=0.1),
     lambda x, y: TF.cross_entropy(x, y, label_smoothing=0.1), "cross_entropy"),
    ("softmax", (64, 1000), lambda x, y: F.softmax(x, 1), lambda x, y: torch.softmax(x, 1),
     "softmax"),
    ("log_softmax", (64, 1000), lambda x, y: F.logsoftmax(x, 1),
     lambda x, y: torch.log_softmax(x, 1), "softmax"),
    ("relu", (64, 256), lambda x, y: F.relu(x), lambda x, y: torch.relu(x), "relu"),
    ("relu", (4096, 4096), lambda x, y: F.relu(x), lambda x, y: torch.relu(x), "relu"),
]


@contextlib.contextmanager
def _path(family, fused):
    """Pick the op family's path for one call: ``fused`` or its array code."""
    if family == "relu":
        saved = _act._use_relu_kernel
        if not fused:
            _act._use_relu_kernel = lambda y, g: False
        try:
            yield
        finally:
            _act._use_relu_kernel = saved
    elif fused:
        with _aten.forced(family):  # a no-op for CUDA arrays, which take ATen anyway
            yield
    else:
        with _aten.avoided(family):  # the array code, also for CuPy arrays
            yield


def _sync(on_gpu):
    if on_gpu:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()


def _variants(device, shape, fn, torch_fn, family):
    on_gpu = device.startswith("gpu")
    rng = np.random.RandomState(0)
    x0 = rng.randn(*shape).astype(np.float32)
    label = rng.randint(0, shape[1], shape[0]).astype(np.int32)
    w0 = rng.randn(*shape).astype(np.float32)  # a weighting, so element-wise outputs have a loss
    x = mge.Parameter(x0, device=device)
    y, w = mge.tensor(label, device=device), mge.tensor(w0, device=device)
    gm = GradManager().attach(x)
    elementwise = not family.startswith("cross")

    def engine(fused):
        def step():
            x.grad = None  # GradManager accumulates into .grad
            with _path(family, fused), gm:
                out = fn(x, y)
                gm.backward((out * w).sum() if elementwise else out)
            _sync(on_gpu)
            return out, x.grad
        return step

    tdev = "cuda:" + device[3:] if on_gpu else "cpu"
    tx = torch.tensor(x0, device=tdev, requires_grad=True)
    ty, tw = torch.tensor(label, device=tdev).long(), torch.tensor(w0, device=tdev)

    def torch_step():
        tx.grad = None
        out = torch_fn(tx, ty)
        ((out * tw).sum() if elementwise else out).backward()
        _sync(on_gpu)
        return out, tx.grad

    variants = {"arrays": engine(False), "torch": torch_step}
    if on_gpu or family != "relu":  # relu's kernel has no CPU form
        variants["fused"] = engine(True)
    return variants


def _check(variants, what):
    """Each variant's loss and input gradient must match the others' (the same work)."""
    results = {}
    for name, fn in variants.items():
        out, grad = fn()
        results[name] = [out.numpy() if isinstance(out, mge.Tensor) else out.detach().cpu().numpy(),
                         grad.numpy() if isinstance(grad, mge.Tensor) else grad.cpu().numpy()]
    ref = results["torch"]
    for name, (out, grad) in results.items():
        for got, want, part in ((out, ref[0], "output"), (grad, ref[1], "gradient")):
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                sys.exit(f"{what}: the {name} variant's {part} differs from torch's by "
                         f"{np.abs(got - want).max():.3g}: not the same work")


def main():
    args = _timing.parse_args(__doc__, steps=200, repeats=5, quick_steps=20, quick_repeats=2)
    torch.set_num_threads(1)
    print(_timing.machine_line())
    devices = ["cpu0"] + (["gpu0"] if mge.is_cuda_available() and torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no usable CUDA (CuPy and a CUDA torch): the GPU rows are not measured here")
    print(f"forward + backward per call, us: median of {args.repeats} repeats of {args.steps} "
          f"calls (variants taking turns); ratios of medians")
    for device in devices:
        print(f"{device}:")
        print(f"  {'op':22s} {'shape':>12s} {'arrays':>9s} {'fused':>9s} {'torch':>9s}"
              f"   fused/arrays  fused/torch")
        for name, shape, fn, torch_fn, family in CASES:
            variants = _variants(device, shape, fn, torch_fn, family)
            _check(variants, f"{name} {shape} on {device}")
            steps = max(1, args.steps // 20) if np.prod(shape) > 1e6 and device == "cpu0" \
                else args.steps
            t = _timing.time_steps(variants, steps, args.repeats)
            us = {k: v.median * 1e3 for k, v in t.items()}
            fused = us.get("fused")
            cols = f"{us['arrays']:9.1f} " + (f"{fused:9.1f}" if fused else f"{'-':>9s}") + \
                f" {us['torch']:9.1f}"
            ratios = (f"   x{fused / us['arrays']:10.2f}  x{fused / us['torch']:10.2f}" if fused
                      else "   (no CPU kernel)")
            print(f"  {name:22s} {str(shape):>12s} {cols}{ratios}")


if __name__ == "__main__":
    main()
