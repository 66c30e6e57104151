"""Fixed cost of one eval layer call on a tiny input (where Python, not the kernel, dominates),
this engine against PyTorch under ``no_grad``: Conv2d (1x1 and 3x3 depthwise), BatchNorm2d,
``F.clip`` (ReLU6 as upstream users write it), a binary ``+``, ``F.relu``, ``F.softmax``, a
full sum, an index, a reshape, a transpose and an empty ``Module`` call.

The input is (1, 8, 4, 4) float32, so the kernels take a few microseconds and what is measured is
the per-call bookkeeping that a MobileNet-style network at batch 1 pays on every layer
(`bench_inference.py`'s mobile_stack). One thread on both sides. Each round runs ``--steps``
pairs of blocks of ``--calls`` calls, megengine's block and torch's back to back (who goes first
alternating); a round's figure is the median of the pairs' ratios (`_timing.paired_ratio`), the
verdict the median over ``--repeats`` rounds with quartiles and range. The microseconds printed
are the medians over all blocks. No aim: the figures say where the remaining gap per layer is.

Compare two checkouts by running this file with each first on ``PYTHONPATH``, alternately.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402

torch.set_num_threads(1)


class _Empty(M.Module):
    def forward(self, x):
        return x


class _TorchEmpty(torch.nn.Module):
    def forward(self, x):
        return x


def cases():
    """{name: (megengine call, torch call)}, after checking that both give the same values."""
    rs = np.random.RandomState(0)
    a = rs.randn(1, 8, 4, 4).astype(np.float32) * 4
    x, xt = mge.tensor(a), torch.from_numpy(a)
    conv1, tconv1 = M.Conv2d(8, 8, 1, bias=False), torch.nn.Conv2d(8, 8, 1, bias=False)
    dw = M.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
    tdw = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
    for ours, theirs in ((conv1, tconv1), (dw, tdw)):
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(ours.weight.numpy().reshape(theirs.weight.shape)))
    bn, tbn = M.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    mean, var = rs.uniform(-0.2, 0.2, 8).astype(np.float32), rs.uniform(0.5, 1.5, 8).astype(
        np.float32)
    bn.running_mean._reset(mge.tensor(mean.reshape(1, 8, 1, 1)))
    bn.running_var._reset(mge.tensor(var.reshape(1, 8, 1, 1)))
    with torch.no_grad():
        tbn.running_mean.copy_(torch.from_numpy(mean))
        tbn.running_var.copy_(torch.from_numpy(var))
    for m in (conv1, dw, bn):
        m.eval()
    for m in (tconv1, tdw, tbn):
        m.eval()
    empty, tempty = _Empty(), _TorchEmpty()
    table = {
        "Conv2d 1x1": (lambda: conv1(x), lambda: tconv1(xt)),
        "Conv2d 3x3 depthwise": (lambda: dw(x), lambda: tdw(xt)),
        "BatchNorm2d (eval)": (lambda: bn(x), lambda: tbn(xt)),
        "F.clip(x, 0, 6)": (lambda: F.clip(x, 0, 6), lambda: torch.clamp(xt, 0, 6)),
        "x + x": (lambda: x + x, lambda: xt + xt),
        "F.relu(x)": (lambda: F.relu(x), lambda: torch.relu(xt)),
        "F.softmax(x, axis=3)": (lambda: F.softmax(x, axis=3), lambda: torch.softmax(xt, 3)),
        "x.sum()": (lambda: x.sum(), lambda: xt.sum()),
        "x[:, 3]": (lambda: x[:, 3], lambda: xt[:, 3]),
        "x.reshape(-1)": (lambda: x.reshape(-1), lambda: xt.reshape(-1)),
        "x.transpose(0, 2, 3, 1)": (lambda: x.transpose(0, 2, 3, 1),
                                    lambda: xt.permute(0, 2, 3, 1)),
        "empty Module call": (lambda: empty(x), lambda: tempty(xt)),
    }
    with torch.no_grad():
        for name, (fm, ft) in table.items():
            if not np.allclose(fm().numpy(), ft().numpy(), rtol=1e-5, atol=1e-5):
                sys.exit(f"{name}: megengine and torch differ: not the same work")
    return table


def paired_blocks(fm, ft, calls, steps, rounds):
    """Per round the median of megengine / torch over ``steps`` pairs of ``calls``-call blocks;
    also the median microseconds per call of each side."""
    def block(fn):
        t0 = clock()
        for _ in range(calls):
            fn()
        return (clock() - t0) / calls

    clock = time.perf_counter
    block(fm)
    block(ft)
    ratios, tm_all, tt_all = [], [], []
    for _ in range(rounds):
        tm, tt = [], []
        for i in range(steps):
            if i % 2 == 0:
                tm.append(block(fm))
                tt.append(block(ft))
            else:
                tt.append(block(ft))
                tm.append(block(fm))
        ratios.append(_timing.paired_ratio(tm, tt))
        tm_all += tm
        tt_all += tt
    return ratios, np.median(tm_all) * 1e6, np.median(tt_all) * 1e6


def main():
    def extra(parser):
        parser.add_argument("--calls", type=int, default=200, help="calls per timed block")

    args = _timing.parse_args(__doc__, steps=20, repeats=7, quick_steps=4, quick_repeats=2,
                              extra=extra)
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}")
    print(f"eval call on (1, 8, 4, 4) float32, megengine / torch no_grad, paired blocks of "
          f"{args.calls} calls, {args.steps} pairs x {args.repeats} rounds")
    with torch.no_grad():
        for name, (fm, ft) in cases().items():
            ratios, us_m, us_t = paired_blocks(fm, ft, args.calls, args.steps, args.repeats)
            print(f"{name:24s} megengine {us_m:6.2f} us  torch {us_t:6.2f} us  "
                  f"{_timing.describe_ratios(ratios)}")
            _timing.flush()


if __name__ == "__main__":
    main()
