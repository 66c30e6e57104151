"""Step time of a traced training step against eager: MLP 784-256-10, batch 64 (and a tiny MLP,
where Python overhead dominates). Prints ms per step and ratios against eager, same process:
``trace(symbolic=False)`` and ``trace(symbolic=True)`` rerun the Python function and check each
op against the record (as upstream calls the function every time); ``trace(without_host=True)``
replays the record without running Python. Then the cost of a check per op: a chain of 200
tiny elemwise ops (on an external, and with a Python-scalar constant), extra us/op vs eager.

    python benchmarks/bench_jit_trace.py [--steps N] [--repeats R] [--quick]

Thread counts are pinned to 1 (OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before
numpy is imported). The figures are medians over repeats, the modes taking turns step by step
(see _timing.py); the fastest single step of each mode and its ratio follow in parentheses:
on a loaded machine (other processes on the cores) they are the steadier figure.
"""
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.jit import trace  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


def make_step(sizes, batch, mode, train=True):
    np.random.seed(0)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [M.Linear(a, b), M.ReLU()]
    net = M.Sequential(*layers[:-1])
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def train_step(x, label):
        with gm:
            loss = F.loss.cross_entropy(net(x), label)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    def infer(x, label):
        return net(x)

    fn = train_step if train else infer
    if mode == "without_host":
        fn = trace(fn, without_host=True)
    elif mode != "eager":
        fn = trace(fn, symbolic=(mode == "symbolic"))
    rng = np.random.RandomState(1)
    x = mge.tensor(rng.randn(batch, sizes[0]).astype("float32"))
    label = mge.tensor(rng.randint(0, sizes[-1], batch), dtype="int32")
    return lambda: fn(x, label)


def make_chain(kind, mode, n_ops=200):
    """``n_ops`` elemwise ops on 4 floats: what a check costs per op when the op is tiny.
    ``kind`` "external": ``x * w`` (a Parameter); "constant": ``x + 1.0`` (a Python scalar, a
    new constant tensor on every call)."""
    w = mge.Parameter(np.ones(4, dtype="float32"))

    def chain(x):
        for _ in range(n_ops):
            x = x * w if kind == "external" else x + 1.0
        return x

    fn = chain
    if mode == "without_host":
        fn = trace(chain, without_host=True, opt_level=0)
    elif mode != "eager":
        fn = trace(chain, symbolic=(mode == "symbolic"), opt_level=0)
    x = mge.tensor(np.ones(4, dtype="float32"))
    return lambda: fn(x)


LABELS = {"eager": "eager", "check": "trace(symbolic=False)", "symbolic": "trace(symbolic=True)",
          "without_host": "trace(without_host=True)"}


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=7, quick_steps=5, quick_repeats=2)
    print(_timing.machine_line())
    cases = [("MLP 784-256-10, batch 64", (784, 256, 10), 64, args.steps),
             ("MLP 32-32-32-10, batch 8", (32, 32, 32, 10), 8, args.steps * 10)]
    for title, sizes, batch, steps in cases:
        for train in (True, False):
            print(f"{title}, {'training step (SGD + GradManager)' if train else 'inference'}:")
            fns = {mode: make_step(sizes, batch, mode, train) for mode in LABELS}
            for step in fns.values():
                step()  # the first call records
            timings = _timing.time_steps(fns, steps, args.repeats)
            eager = timings["eager"]
            for mode, t in timings.items():
                print(f"  {LABELS[mode]:24s} {t.median:8.3f} ms/step   "
                      f"x{eager.median / t.median:5.2f} speed vs eager   "
                      f"(best step {t.best:7.3f} ms, x{eager.best / t.best:5.2f})")
    n_ops = 200
    for kind in ("external", "constant"):
        print(f"{n_ops} elemwise ops on 4 floats ({'x * w' if kind == 'external' else 'x + 1.0'}"
              "), extra us per op against eager:")
        fns = {mode: make_chain(kind, mode, n_ops) for mode in LABELS}
        for step in fns.values():
            step()
        timings = _timing.time_steps(fns, max(args.steps // 3, 1), args.repeats)
        eager = timings["eager"]
        for mode, t in timings.items():
            print(f"  {LABELS[mode]:24s} {(t.median - eager.median) * 1e3 / n_ops:+7.3f} us/op   "
                  f"(best steps: {(t.best - eager.best) * 1e3 / n_ops:+7.3f} us/op)")


if __name__ == "__main__":
    main()
