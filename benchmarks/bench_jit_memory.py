"""Peak memory of a traced function's calls against the same function run eagerly, for code that
detaches values or updates parameters: the recording (first) call and a checked call of
``jit.trace`` (``symbolic`` False and True), each over eager's peak in the same process; and
what stays allocated once a call on inputs given once (fresh copies the caller drops at once)
has returned, eager's and a recording call's (the trace kept alive).

Memory is numpy's array buffers as ``tracemalloc`` traces them (numpy reports its allocations to
it): the peak during the call above what was allocated before it, after a ``gc.collect()``.
Cases (float32):

* ``detached_chain``: ``x = F.tanh(F.matmul(x, w)).detach()`` 32 times on a 256 x 256 value (an
  iterative refinement or a rollout without gradients), then a sum;
* ``tbptt``: truncated backpropagation through time: a 256-wide tanh RNN over 32 steps at batch
  128, its hidden state detached every 8 steps, a GradManager backward per chunk;
* ``sgd_step``: a training step with the optimizer inside the traced function: six 1024 x 1024
  ``M.Linear`` layers (24 MiB of weights) at batch 64, SGD with momentum;
* ``index_batch``: ``F.relu(table[idx]).sum()``, a 1 MiB int32 index batch into a 1024 x 16
  table (a sampler's indices, a mask).

Eager code lets go of each detached value once the next one is made; a trace that keeps them
to the end of its call holds every step's array. tracemalloc also counts the Python objects a
trace builds (the recording call's program, a checked call's bookkeeping), so a ratio a little
above 1 is that. Measured on 2 shared cores (tracemalloc's figures do not depend on load), the
recording / checked call over eager, symbolic False and True alike, before -> after the recorder
held detach() results weakly and checked calls let go of a detached value's source after the op
that first reads the detached value: ``detached_chain`` 16.3x / 16.0x -> 1.19x / 1.01x,
``tbptt`` 1.38x / 1.24x -> 1.25x / 1.11x (at width 1024, eager 16 MiB: 1.05x / 1.04x, the rest
being the trace's Python objects). ``sgd_step``'s recording call copied every parameter
before its update (the recorder held each external's array, so the update found it shared):
46.8x eager's peak (eager 0.5 MiB, the update allocating nothing: +23 MiB, the weights) ->
1.05x, symbolic False and True, once it held only the arrays of tensors made in the call
(2026-12-03); checked calls 1.01x before and after. What a recording call keeps: the
program (0.02-0.2 MiB here; ``tbptt`` also its 128 KiB ``F.zeros`` constant, and its
parameters' new ``.grad`` arrays, whose old ones went: tracemalloc shows both) and, until
2026-12-03, the array of every argument or computed value used as an index (``x[idx]``,
``x[mask]``, ``y[idx] = v`` put it into the recorded op): ``index_batch`` held 1.01 MiB (the
index batch) -> 0.01 MiB once the recorded op left it out (checked calls and replays take each
call's own from where the recording found it).

    python benchmarks/bench_jit_memory.py [--case NAME|all]
"""
import argparse
import gc
import tracemalloc

import numpy as np

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.jit import trace

from _timing import megengine_source

N = 256


def detached_chain():
    w = mge.tensor(np.random.RandomState(0).rand(N, N).astype("float32") / N)

    def fn(x):
        for _ in range(32):
            x = F.tanh(F.matmul(x, w)).detach()
        return x.sum()

    x = mge.tensor(np.random.RandomState(1).rand(N, N).astype("float32"))
    return fn, (x,)


def tbptt():
    rs = np.random.RandomState(0)
    wx = mge.Parameter(rs.rand(N, N).astype("float32") / N)
    wh = mge.Parameter(rs.rand(N, N).astype("float32") / N)
    gm = GradManager().attach([wx, wh])

    def fn(xs):
        h = F.zeros((xs.shape[1], N))
        total = 0.0
        for start in range(0, xs.shape[0], 8):
            h = h.detach()
            with gm:
                loss = 0.0
                for t in range(start, start + 8):
                    h = F.tanh(F.matmul(xs[t], wx) + F.matmul(h, wh))
                    loss = loss + h.mean()
                gm.backward(loss)
            total = total + loss.detach()
        return total

    xs = mge.tensor(rs.rand(32, 128, N).astype("float32"))
    return fn, (xs,)


def sgd_step():
    import megengine.module as M
    from megengine.optimizer import SGD

    mge.random.seed(0)
    net = M.Sequential(*[M.Linear(1024, 1024) for _ in range(6)])
    gm = GradManager().attach(net.parameters())
    opt = SGD(net.parameters(), lr=0.01, momentum=0.9)

    def fn(x):
        with gm:
            loss = (net(x) ** 2).mean()
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    x = mge.tensor(np.random.RandomState(1).rand(64, 1024).astype("float32"))
    return fn, (x,)


def index_batch():
    def fn(table, idx):
        return F.relu(table[idx]).sum()

    rs = np.random.RandomState(1)
    table = mge.tensor(rs.rand(1024, 16).astype("float32"))
    idx = mge.tensor(rs.randint(0, 1024, 1 << 18).astype("int32"))
    return fn, (table, idx)


CASES = {"detached_chain": detached_chain, "tbptt": tbptt, "sgd_step": sgd_step,
         "index_batch": index_batch}


def peak(call):
    """Peak traced memory during ``call()`` above what was allocated before it, in bytes."""
    gc.collect()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out = call()
    float(out)  # (its value read: the work done)
    high = tracemalloc.get_traced_memory()[1]
    del out
    return high - before


def held(call, inputs):
    """Memory still allocated once ``call`` has run on fresh copies of ``inputs``, which the
    caller drops at once (a batch given once), in bytes."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    out = call(*[mge.tensor(t.numpy()) for t in inputs])
    float(out)
    del out
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="all", choices=["all", *CASES])
    args = parser.parse_args()
    print(megengine_source())
    warm = trace(lambda x: (x * 2).detach().sum())  # (the modules a first call imports)
    for _ in range(2):
        warm(mge.tensor([1.0]))
    tracemalloc.start()
    for name in CASES if args.case == "all" else [args.case]:
        fn, inputs = CASES[name]()
        fn(*inputs)  # (warm: lazily built kernels and caches)
        eager = peak(lambda: fn(*inputs))
        row = [f"{name:15s} eager {eager / 2 ** 20:7.1f} MiB"]
        for symbolic in (False, True):
            traced = trace(fn, symbolic=symbolic)
            recording = peak(lambda: traced(*inputs))
            checked = peak(lambda: traced(*inputs))
            row.append(f"symbolic={symbolic}: recording {recording / eager:5.2f}x, "
                       f"checked {checked / eager:5.2f}x")
        print(" | ".join(row))
        kept = [f"{'':15s} held after a call on inputs given once: eager "
                f"{held(fn, inputs) / 2 ** 20:5.2f} MiB"]
        for symbolic in (False, True):
            kept.append(f"recording (symbolic={symbolic}) "
                        f"{held(trace(fn, symbolic=symbolic), inputs) / 2 ** 20:5.2f} MiB")
        print(" | ".join(kept))
    tracemalloc.stop()


if __name__ == "__main__":
    main()
