"""Upstream's internal op layer (`apply(builtin.X(...), ...)`) against the public calls it lowers to.

What it prints, on cpu0: per variant pair the time of one call in microseconds (median over
repeats, the two variants taking turns call by call) and the ratio descriptor / public:

* ``add``: ``apply(Elemwise("add"), a, b)`` against ``a + b`` (small 32x32 tensors: the
  descriptor layer's own cost shows);
* ``sum``: ``apply(Reduce("sum", axis=1), x)`` against ``F.sum(x, axis=1, keepdims=True)``;
* ``lamb``: one step of a 4-parameter model written as upstream's LAMB optimizer is
  (``apply(LAMBUpdate(...), m, v, p, g)`` per parameter) against ``megengine.optimizer.LAMB``.

Before timing, each pair's results must agree (else it exits with an error).

    python benchmarks/bench_builtin_apply.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: one thread

import sys  # noqa: E402

import numpy as np  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
from megengine.core._imperative_rt.core2 import apply  # noqa: E402
from megengine.core.ops import builtin  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, parse_args, time_steps  # noqa: E402


def _lamb_pair():
    rng = np.random.RandomState(0)
    shapes = [(64, 32), (32,), (32, 10), (10,)]
    inits = [rng.randn(*s).astype(np.float32) for s in shapes]
    grads = [mge.tensor(rng.randn(*s).astype(np.float32)) for s in shapes]
    public = [mge.Parameter(w) for w in inits]
    opt = mge.optimizer.LAMB(public, lr=1e-3, weight_decay=0.01)
    mine = [mge.Parameter(w) for w in inits]
    state = {id(p): [mge.tensor(np.zeros_like(p.numpy())), mge.tensor(np.zeros_like(p.numpy())),
                     0] for p in mine}

    def step_public():
        for p, g in zip(public, grads):
            p.grad = g
        opt.step()

    def step_descriptor():
        for p, g in zip(mine, grads):
            s = state[id(p)]
            s[2] += 1
            op = builtin.LAMBUpdate(0.9, 0.999, s[2], 1e-3, 0.01, 1e-8, True, False)
            s[0], s[1], new = apply(op, s[0], s[1], p, g)
            p._reset(new)

    step_public()
    step_descriptor()
    for a, b in zip(public, mine):
        if not np.allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7):
            sys.exit("lamb: the descriptor's step differs from megengine.optimizer.LAMB")
    return step_descriptor, step_public


def main():
    args = parse_args(__doc__, steps=300, repeats=7, quick_steps=30, quick_repeats=3)
    print(machine_line())
    rng = np.random.RandomState(0)
    a = mge.tensor(rng.randn(32, 32).astype(np.float32))
    b = mge.tensor(rng.randn(32, 32).astype(np.float32))
    add_op, sum_op = builtin.Elemwise("add"), builtin.Reduce("sum", axis=1)
    pairs = {
        "add": (lambda: apply(add_op, a, b)[0], lambda: a + b),
        "sum": (lambda: apply(sum_op, a)[0], lambda: F.sum(a, axis=1, keepdims=True)),
        "lamb": _lamb_pair(),
    }
    for name in ("add", "sum"):
        desc, public = pairs[name]
        if not np.allclose(desc().numpy(), public().numpy()):
            sys.exit(f"{name}: the descriptor's result differs from the public call")
    print(f"{'op':6} {'descriptor us':>14} {'public us':>10} {'ratio':>6}")
    for name, (desc, public) in pairs.items():
        t = time_steps({"descriptor": desc, "public": public}, args.steps, args.repeats)
        d, p = t["descriptor"].median * 1e3, t["public"].median * 1e3
        print(f"{name:6} {d:14.1f} {p:10.1f} {d / p:6.2f}x")


if __name__ == "__main__":
    main()
