"""Quantization-aware training's cost: a small CNN's training step with fake quantization
(``quantize_qat`` with ``ema_fakequant_qconfig``) against the same network in float, and against
PyTorch's eager QAT (``torch.ao.quantization.prepare_qat`` with its default QAT qconfig) and float.

What it prints: ms per training step (forward, backward, SGD step; median over repeats, the
variants taking turns step by step), and the ratios QAT / float within each framework and
megengine QAT / torch QAT. The network (conv-bn-relu, conv-relu, linear, batch 32 of 1x16x16
inputs) is the shape of the QAT test's, larger.

    python benchmarks/bench_qat.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.optimizer import SGD  # noqa: E402
from megengine.quantization import ema_fakequant_qconfig, quantize_qat  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

BATCH, SIZE = 32, 16


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.quant = M.QuantStub()
        self.conv1 = M.ConvBnRelu2d(1, 8, 3, padding=1)
        self.conv2 = M.ConvRelu2d(8, 8, 3, stride=2, padding=1)
        self.fc = M.Linear(8 * (SIZE // 2) ** 2, 10)
        self.dequant = M.DequantStub()

    def forward(self, x):
        x = self.conv2(self.conv1(self.quant(x)))
        return self.dequant(self.fc(F.flatten(x, 1)))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1 = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1),
                                         torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.conv2 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                         torch.nn.ReLU())
        self.fc = torch.nn.Linear(8 * (SIZE // 2) ** 2, 10)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.conv2(self.conv1(self.quant(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def _mge_step(net, x, y):
    gm = GradManager().attach(net.parameters())
    opt = SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        with gm:
            gm.backward(F.nn.cross_entropy(net(x), y))
        opt.step().clear_grad()

    return step


def _torch_step(net, x, y):
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def _torch_qat():
    net = TorchNet().train()
    torch.ao.quantization.fuse_modules_qat(net, [["conv1.0", "conv1.1", "conv1.2"],
                                                 ["conv2.0", "conv2.1"]], inplace=True)
    net.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    return torch.ao.quantization.prepare_qat(net)


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=5, quick_steps=3, quick_repeats=1)
    torch.set_num_threads(1)
    rng = np.random.RandomState(0)
    x_np = rng.randn(BATCH, 1, SIZE, SIZE).astype(np.float32)
    y_np = rng.randint(0, 10, BATCH).astype(np.int32)
    x, y = mge.tensor(x_np), mge.tensor(y_np)
    tx, ty = torch.tensor(x_np), torch.tensor(y_np, dtype=torch.long)
    variants = {
        "megengine float": _mge_step(Net(), x, y),
        "megengine QAT": _mge_step(quantize_qat(Net(), qconfig=ema_fakequant_qconfig), x, y),
        "torch float": _torch_step(TorchNet(), tx, ty),
        "torch QAT": _torch_step(_torch_qat(), tx, ty),
    }
    print(_timing.machine_line())
    t = _timing.time_steps(variants, args.steps, args.repeats)
    for name, timing in t.items():
        print(f"{name:16s} {timing.median:8.3f} ms/step (best {timing.best:.3f})")
    print(f"QAT / float: megengine {t['megengine QAT'].median / t['megengine float'].median:.2f}x,"
          f" torch {t['torch QAT'].median / t['torch float'].median:.2f}x")
    print(f"megengine QAT / torch QAT: {t['megengine QAT'].median / t['torch QAT'].median:.2f}x")


if __name__ == "__main__":
    main()
