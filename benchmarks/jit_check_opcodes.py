"""Python bytecode a checked ``jit.trace`` call runs beyond eager, per function: a count that
other processes on the cores cannot disturb, for the small steps where the checker's Python is
what a checked call adds (timings of those move by more than the few percent at stake on a
shared machine; see benchmarks/HISTORY.md, "jit.trace: a checked call's bytecode").

Two training steps (``trace(symbolic=False)``, calls after the first, against the same step
eagerly, each from the same initial weights): the 20 conv + batch norm + ReLU layers on
(2, 4, 4, 4) images of ``bench_jit_trace.py --micro`` and the MLP 784-256-10 at batch 64 of
``bench_engine.py``, SGD with momentum inside the step. Prints the opcodes (``sys.settrace``
opcode events) and Python frames of one call in each mode and, with ``--top N``, the N
functions whose opcodes grew most.

    python benchmarks/jit_check_opcodes.py [--top 15]
"""
import argparse
import collections
import os
import sys

import numpy as np

import megengine as mge
import megengine.module as M
import megengine.optimizer as optim
from megengine.jit import trace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import bench_jit_trace  # noqa: E402


def conv_bn_step():
    step, x = bench_jit_trace.conv_bn_training_step()
    return step, (x,)


def mlp_step():
    mge.random.seed(0)
    net = M.Sequential(M.Linear(784, 256), M.ReLU(), M.Linear(256, 10))
    step = _timing.mge_training_step(net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    rng = np.random.RandomState(1)
    return step, (mge.tensor(rng.randn(64, 784).astype("float32")),
                  mge.tensor(rng.randint(0, 10, 64), dtype="int32"))


def count(fn, args):
    """(opcodes, frames) of one call of ``fn(*args)``, per (file, function)."""
    opcodes, frames = collections.Counter(), collections.Counter()
    package = os.sep + "megengine" + os.sep

    def where(code):
        return code.co_filename.split(package)[-1], code.co_name

    def local(frame, event, arg):
        if event == "opcode":
            opcodes[where(frame.f_code)] += 1
        return local

    def new_frame(frame, event, arg):
        frame.f_trace_opcodes = True
        frames[where(frame.f_code)] += 1
        return local

    sys.settrace(new_frame)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return opcodes, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=0, help="list the N functions that grew most")
    args = parser.parse_args()
    print(f"megengine from {os.path.dirname(os.path.dirname(os.path.abspath(mge.__file__)))}")
    for name, make in (("20 conv + batch norm layers, (2, 4, 4, 4)", conv_bn_step),
                       ("MLP 784-256-10, batch 64", mlp_step)):
        counts = {}
        for mode in ("eager", "checked"):
            fn, inputs = make()
            if mode == "checked":
                fn = trace(fn, symbolic=False)
            for _ in range(3):  # (the first call records; the others warm up)
                fn(*inputs)
            counts[mode] = count(fn, inputs)
        (eo, ef), (co, cf) = counts["eager"], counts["checked"]
        e, c = sum(eo.values()), sum(co.values())
        print(f"{name}: opcodes eager {e}, checked {c} (+{c - e}, x{c / e:.3f}); frames eager "
              f"{sum(ef.values())}, checked {sum(cf.values())}")
        grown = sorted(((co[k] - eo[k], k) for k in set(co) | set(eo)), reverse=True)
        for d, (file, func) in grown[:args.top]:
            print(f"  {d:+7d} opcodes {cf[file, func] - ef[file, func]:+5d} calls  {file}:{func}")


if __name__ == "__main__":
    main()
