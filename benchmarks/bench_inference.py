"""Eval-mode forward of convnets (no gradient) in this engine against PyTorch under ``no_grad``.

Networks: `bench_models.py`'s ResNet-18 and ShuffleNetV2 1.0x, and a MobileNetV2-style stack
(inverted residual blocks: 1x1 expand, 3x3 depthwise, 1x1 project, BatchNorm, ReLU6 written
``F.clip(x, 0, 6)`` as upstream users write it), at batch 1 and 8, 224x224 (the stack: 112x112).

- Same work: torch takes megengine's parameters *and* random running statistics (so that eval
  batch norm does not reduce to the identity), both modules in eval mode; the outputs must agree
  to 1e-4 relative to their scale, else the script exits with an error.
- Time: one thread on both sides (OMP/MKL/OpenBLAS = 1, ``torch.set_num_threads(1)``). Each
  round runs ``--steps`` pairs of calls, the megengine call and the torch call back to back
  (who goes first alternating); the round's figure is the median of the pairs' ratios
  (`_timing.paired_ratio`); the verdict is the median over ``--repeats`` rounds, with
  quartiles and range (`_timing.describe_ratios`). Aim: <= 1.10x.

``--size 8`` (or 16, 32) shrinks the input so that the kernels take little time and what is
left is the per-layer Python cost of the same layers (the stack at 8x8: ~1.3 ms a call).

Compare two checkouts by running this file with each checkout first on ``PYTHONPATH``
(``PYTHONPATH=/path/to/base python benchmarks/bench_inference.py``), alternately.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import bench_models  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402

torch.set_num_threads(1)
AIM = 1.10
# (expansion, out channels, repeats, stride) of a shortened MobileNetV2 (its first 4 stages)
MOBILE_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2))


class MgeInvertedResidual(M.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [M.Conv2d(cin, mid, 1, bias=False), M.BatchNorm2d(mid)]
        self.expand = M.Sequential(*layers) if layers else None
        self.dw = M.Sequential(M.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                               M.BatchNorm2d(mid))
        self.project = M.Sequential(M.Conv2d(mid, cout, 1, bias=False), M.BatchNorm2d(cout))

    def forward(self, x):
        y = x if self.expand is None else F.clip(self.expand(x), 0, 6)
        y = self.project(F.clip(self.dw(y), 0, 6))
        return x + y if self.residual else y


class TorchInvertedResidual(tnn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [tnn.Conv2d(cin, mid, 1, bias=False), tnn.BatchNorm2d(mid)]
        self.expand = tnn.Sequential(*layers) if layers else None
        self.dw = tnn.Sequential(tnn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                 tnn.BatchNorm2d(mid))
        self.project = tnn.Sequential(tnn.Conv2d(mid, cout, 1, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        y = x if self.expand is None else torch.clamp(self.expand(x), 0, 6)
        y = self.project(torch.clamp(self.dw(y), 0, 6))
        return x + y if self.residual else y


def _mobile_blocks(block_cls):
    blocks, cin = [], 32
    for expand, cout, repeats, stride in MOBILE_STAGES:
        for j in range(repeats):
            blocks.append(block_cls(cin, cout, stride if j == 0 else 1, expand))
            cin = cout
    return blocks


class MgeMobileStack(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Sequential(M.Conv2d(3, 32, 3, 2, 1, bias=False), M.BatchNorm2d(32))
        self.blocks = M.Sequential(*_mobile_blocks(MgeInvertedResidual))

    def forward(self, x):
        return self.blocks(F.minimum(F.relu(self.stem(x)), 6))


class TorchMobileStack(tnn.Module):
    def __init__(self):
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(3, 32, 3, 2, 1, bias=False), tnn.BatchNorm2d(32))
        self.blocks = tnn.Sequential(*_mobile_blocks(TorchInvertedResidual))

    def forward(self, x):
        return self.blocks(torch.clamp(self.stem(x), 0, 6))


NETWORKS = {
    "resnet18": (bench_models.MgeResNet18, bench_models.TorchResNet18, 224),
    "shufflenet_v2": (bench_models.MgeShuffleNetV2, bench_models.TorchShuffleNetV2, 224),
    "mobile_stack": (MgeMobileStack, TorchMobileStack, 112),
}


def copy_state(mge_net, torch_net, seed=0):
    """torch_net takes mge_net's parameters; both take the same random running statistics."""
    rng = np.random.RandomState(seed)
    bench_models.copy_weights(mge_net, torch_net)
    ours = {k: m for k, m in mge_net.named_modules() if isinstance(m, M.BatchNorm2d)}
    theirs = dict(torch_net.named_modules())
    for name in sorted(ours):
        a, b = ours[name], theirs[name]
        c = a.num_features
        mean = rng.uniform(-0.2, 0.2, c).astype("float32")
        var = rng.uniform(0.5, 1.5, c).astype("float32")
        a.running_mean._reset(mge.tensor(mean.reshape(1, c, 1, 1)))
        a.running_var._reset(mge.tensor(var.reshape(1, c, 1, 1)))
        with torch.no_grad():
            b.running_mean.copy_(torch.from_numpy(mean))
            b.running_var.copy_(torch.from_numpy(var))


def build(name, batch, size=None):
    """(megengine call, torch call) of network ``name`` at ``batch`` (and input ``size``, else
    the network's own), after the same-output check."""
    mge_cls, torch_cls, own_size = NETWORKS[name]
    size = size or own_size
    ours, theirs = mge_cls(), torch_cls()
    copy_state(ours, theirs)
    ours.eval()
    theirs.eval()
    x = np.random.RandomState(1).randn(batch, 3, size, size).astype("float32")
    xm, xt = mge.tensor(x), torch.from_numpy(x)

    def run_mge():
        return ours(xm).numpy()

    def run_torch():
        with torch.no_grad():
            return theirs(xt).numpy()

    a, b = run_mge(), run_torch()
    scale = float(np.abs(b).max()) or 1.0
    err = float(np.abs(a - b).max()) / scale
    if a.shape != b.shape or not err < 1e-4:
        sys.exit(f"{name} batch {batch}: outputs differ (shapes {a.shape} / {b.shape}, max "
                 f"relative difference {err:.2e}): not the same work")
    return run_mge, run_torch


def main():
    def extra(parser):
        parser.add_argument("--model", choices=sorted(NETWORKS), action="append",
                            help="network(s) to run (default: all)")
        parser.add_argument("--batch", type=int, action="append",
                            help="batch size(s) (default: 1 and 8)")
        parser.add_argument("--size", type=int, default=None,
                            help="input height and width (default: 224, the stack 112); a small "
                                 "one (32) leaves mostly the per-layer Python cost")

    args = _timing.parse_args(__doc__, steps=8, repeats=7, quick_steps=3, quick_repeats=2,
                              extra=extra)
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}")
    print(f"eval forward, megengine / torch no_grad, paired per call, {args.steps} pairs x "
          f"{args.repeats} rounds")
    for name in args.model or list(NETWORKS):
        for batch in args.batch or (1, 8):
            fm, ft = build(name, batch, args.size)
            rounds = _timing.paired_rounds(fm, ft, args.steps, args.repeats)
            ratios = [r for r, _, _ in rounds]
            ms_m = np.median([t for _, mt, _ in rounds for t in mt]) * 1e3
            ms_t = np.median([t for _, _, tt in rounds for t in tt]) * 1e3
            size = f" {args.size}x{args.size}" if args.size else ""
            print(f"{name:14s} batch {batch}{size}: megengine {ms_m:7.2f} ms  torch {ms_t:7.2f} ms  "
                  f"{_timing.describe_ratios(ratios)}  {_timing.ratio_verdict(ratios, AIM)}")
            _timing.flush()


if __name__ == "__main__":
    main()
