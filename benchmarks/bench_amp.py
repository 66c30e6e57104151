"""What megengine.amp costs or gains on this machine: the guide's LeNet training step (torch
extractor in PyTorchModule + megengine classifier, batch 64) in float32, under
``amp.autocast()`` (float16) with a GradScaler, and under ``autocast(low_prec_dtype="bfloat16")``
on a torch-only LeNet (megengine's own ops have no bfloat16); plus the bare torch conv2d of
LeNet's two layers per dtype. Prints ms per step and ratios against float32, same process.

    python benchmarks/bench_amp.py [--steps N] [--repeats R] [--quick]

On CPUs, float16 is a storage format for torch's conv kernels (no fast path), bfloat16 has one
where the CPU has AVX512-BF16/AMX; on GPUs float16 is the fast path amp exists for.
"""
import importlib.util
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402
import torch  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.amp as amp  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.module.pytorch import PyTorchModule  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location(
        "lenet_example", os.path.join(ROOT, "examples", "lenet_pytorch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_step(ex, mode):
    torch.manual_seed(0)
    if mode == "bfloat16 (torch part only)":
        net = PyTorchModule(torch.nn.Sequential(ex.LeNet_Extract(), torch.nn.Linear(84, 10)))
    else:
        net = ex.LeNet(ex.LeNet_Extract())
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = amp.GradScaler()
    ctx = {"float32": amp.autocast(enabled=False), "float16": amp.autocast(),
           "bfloat16 (torch part only)": amp.autocast(low_prec_dtype="bfloat16")}[mode]
    rng = np.random.RandomState(1)
    x = mge.tensor(rng.randn(64, 1, 32, 32).astype("float32"))
    label = mge.tensor(rng.randint(0, 10, 64), dtype="int32")

    def step():
        with ctx:
            with gm:
                loss = F.loss.cross_entropy(net(x).astype("float32"), label)
                if mode == "float32":
                    gm.backward(loss)
                else:
                    scaler.backward(gm, loss)
        opt.step().clear_grad()

    return step


def make_conv(dtype):
    x1 = torch.randn(64, 1, 32, 32, dtype=dtype)
    w1 = torch.randn(6, 1, 5, 5, dtype=dtype)
    x2 = torch.randn(64, 6, 14, 14, dtype=dtype)
    w2 = torch.randn(16, 6, 5, 5, dtype=dtype)
    return lambda: (torch.conv2d(x1, w1), torch.conv2d(x2, w2))


def main():
    args = _timing.parse_args(__doc__, steps=10, repeats=5, quick_steps=2, quick_repeats=1)
    print(_timing.machine_line())
    ex = _example()
    for title, fns in (
            ("LeNet training step, batch 64", {m: make_step(ex, m) for m in (
                "float32", "float16", "bfloat16 (torch part only)")}),
            ("torch conv2d of LeNet's two layers, batch 64", {
                "float32": make_conv(torch.float32), "float16": make_conv(torch.float16),
                "bfloat16": make_conv(torch.bfloat16)})):
        print(f"{title}:")
        ms = {m: t.median for m, t in _timing.time_steps(fns, args.steps, args.repeats).items()}
        for m, t in ms.items():
            print(f"  {m:28s} {t:8.3f} ms/step   x{ms['float32'] / t:5.2f} speed vs float32")


if __name__ == "__main__":
    main()
