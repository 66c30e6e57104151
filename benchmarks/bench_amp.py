"""What megengine.amp costs or gains on this machine: the guide's LeNet training step (torch
extractor in PyTorchModule + megengine classifier, batch 64) in float32, under
``amp.autocast()`` (float16) with a GradScaler, and under ``autocast(low_prec_dtype="bfloat16")``
on a torch-only LeNet (megengine's own ops have no bfloat16); the bare torch conv2d of LeNet's
two layers per dtype; and the engine's own networks' training steps in float32 and under
``autocast`` (a small ResNet, an MLP, a transformer block: on the CPU the engine computes
float16 in float32 or on ATen's vectorised loops, docs/api/amp.rst; aim: autocast within 1.5x
float32). Prints ms per step and ratios against float32, same process.

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
import megengine.module as M  # noqa: E402
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


class _Block(M.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = M.Conv2d(c, c, 3, padding=1, bias=False), M.BatchNorm2d(c)
        self.c2, self.b2 = M.Conv2d(c, c, 3, padding=1, bias=False), M.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class _ResNet(M.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.blocks = M.Conv2d(3, 32, 3, padding=1), M.Sequential(_Block(32), _Block(32))
        self.down, self.last, self.fc = M.Conv2d(32, 64, 3, stride=2, padding=1), _Block(64), \
            M.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = self.last(F.relu(self.down(self.blocks(x))))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _Attention(M.Module):
    """A pre-norm transformer block (attention written out, GELU MLP) and a mean-pool head."""

    def __init__(self, d=128, heads=4):
        super().__init__()
        self.heads, self.n1, self.n2 = heads, M.LayerNorm(d), M.LayerNorm(d)
        self.qkv, self.proj = M.Linear(d, 3 * d), M.Linear(d, d)
        self.fc1, self.fc2, self.head = M.Linear(d, 4 * d), M.Linear(4 * d, d), M.Linear(d, 10)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = F.split(self.qkv(self.n1(x)).reshape(n, t, 3, self.heads, -1)
                          .transpose(2, 0, 3, 1, 4), 3, axis=0)
        q, k, v = (a.reshape(n, self.heads, t, -1) for a in (q, k, v))
        a = F.softmax(F.matmul(q, k.transpose(0, 1, 3, 2)) * (d // self.heads) ** -0.5, -1)
        x = x + self.proj(F.matmul(a, v).transpose(0, 2, 1, 3).reshape(n, t, d))
        x = x + self.fc2(F.gelu(self.fc1(self.n2(x))))
        return self.head(x.mean(1))


def make_engine_step(net, x_shape, enabled):
    rng = np.random.RandomState(2)
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = amp.GradScaler()
    x = mge.tensor(rng.randn(*x_shape).astype("float32"))
    label = mge.tensor(rng.randint(0, 10, x_shape[0]), dtype="int32")

    def step():
        with gm:
            with amp.autocast(enabled=enabled):
                loss = F.loss.cross_entropy(net(x), label)
            scaler.backward(gm, loss) if enabled else gm.backward(loss)
        opt.step().clear_grad()

    return step


def engine_networks():
    """(title, {mode: step}) of the engine's own networks, float32 and autocast."""
    mlp = lambda: M.Sequential(M.Linear(512, 1024), M.ReLU(), M.Linear(1024, 1024),  # noqa: E731
                               M.ReLU(), M.Linear(1024, 10))
    for title, make, shape in (("small ResNet training step, batch 16, 32x32", _ResNet,
                                (16, 3, 32, 32)),
                               ("MLP 512-1024-1024-10 training step, batch 64", mlp, (64, 512)),
                               ("transformer block training step, batch 8, 64 tokens x 128",
                                _Attention, (8, 64, 128))):
        mge.random.seed(0)
        net = make()
        yield title, {"float32": make_engine_step(net, shape, False),
                      "float16": make_engine_step(net, shape, True)}


def main():
    args = _timing.parse_args(__doc__, steps=10, repeats=5, quick_steps=2, quick_repeats=1)
    print(_timing.machine_line())
    ex = _example()
    for title, fns in (
            ("LeNet training step, batch 64", {m: make_step(ex, m) for m in (
                "float32", "float16", "bfloat16 (torch part only)")}),
            ("torch conv2d of LeNet's two layers, batch 64", {
                "float32": make_conv(torch.float32), "float16": make_conv(torch.float16),
                "bfloat16": make_conv(torch.bfloat16)}), *engine_networks()):
        print(f"{title}:")
        ms = {m: t.median for m, t in _timing.time_steps(fns, args.steps, args.repeats).items()}
        for m, t in ms.items():
            print(f"  {m:28s} {t:8.3f} ms/step   x{ms['float32'] / t:5.2f} speed vs float32")


if __name__ == "__main__":
    main()
