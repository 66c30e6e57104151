"""Call time of a TracedModule (its graph interpreted) against the module it was traced from,
eager, same process: a small CNN (conv-bn-relu blocks, inference and a training step) and a tiny
MLP (where per-step Python overhead dominates); also the time trace_module itself takes.

    python benchmarks/bench_traced_module.py [--steps N] [--repeats R] [--quick]

Thread counts are pinned to 1 (OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before
numpy is imported). The figures are medians over repeats, the variants taking turns call by call
(see _timing.py). Before timing, the traced module's outputs are checked equal to the
original's.
"""
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.traced_module import trace_module  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


class Block(M.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = M.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = M.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CNN(M.Module):
    def __init__(self):
        super().__init__()
        self.blocks = [Block(3, 16), Block(16, 16), Block(16, 32)]
        self.fc = M.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        for b in self.blocks:
            x = F.max_pool2d(b(x), 2)
        return self.fc(x.reshape(x.shape[0], -1))


class TinyMLP(M.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = M.Linear(32, 32), M.Linear(32, 32), M.Linear(32, 10)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def _train_step(net, x):
    gm = GradManager().attach(net.parameters())

    def step():
        with gm:
            gm.backward((net(x) ** 2).mean())
    return step


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=7, quick_steps=5, quick_repeats=2)
    print(_timing.machine_line())
    rng = np.random.RandomState(0)
    cases = [("CNN 3 conv-bn-relu blocks, batch 8, 32x32", CNN(),
              mge.tensor(rng.randn(8, 3, 32, 32).astype("float32")), args.steps),
             ("MLP 32-32-32-10, batch 8", TinyMLP(),
              mge.tensor(rng.randn(8, 32).astype("float32")), args.steps * 10)]
    for title, net, x, steps in cases:
        net.eval()
        t0 = time.perf_counter()
        tm = trace_module(net, x)
        trace_ms = (time.perf_counter() - t0) * 1e3
        np.testing.assert_allclose(tm(x).numpy(), net(x).numpy(), rtol=1e-6, atol=1e-6)
        print(f"{title}: trace_module {trace_ms:.1f} ms, {len(tm.graph.exprs().as_list())} exprs")
        for train in (False, True):
            if train:
                net.train()
                fns = {"module": _train_step(net, x), "traced": _train_step(tm, x)}
            else:
                fns = {"module": lambda: net(x), "traced": lambda: tm(x)}
            ms = {k: t.median for k, t in _timing.time_steps(fns, steps, args.repeats).items()}
            kind = "training step (GradManager)" if train else "inference"
            print(f"  {kind:28s} module {ms['module']:8.3f} ms   traced {ms['traced']:8.3f} ms"
                  f"   traced/module x{ms['traced'] / ms['module']:5.2f}")


if __name__ == "__main__":
    main()
