"""Python bytecode a checked ``jit.trace`` call runs beyond eager, per function: a count that
other processes on the cores cannot disturb, for the small steps where the checker's Python is
what a checked call adds (timings of those move by more than the few percent at stake on a
shared machine; see benchmarks/README.md, "jit.trace: a checked call's bytecode").

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
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.jit import trace


def conv_bn_step():
    mge.random.seed(0)
    layers = []
    for _ in range(20):
        layers += [M.Conv2d(4, 4, 3, padding=1, bias=False), M.BatchNorm2d(4), M.ReLU()]
    net = M.Sequential(*layers)
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x):
        with gm:
            loss = net(x).mean()
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    return step, (mge.tensor(np.random.RandomState(1).randn(2, 4, 4, 4).astype("float32")),)


def mlp_step():
    mge.random.seed(0)
    net = M.Sequential(M.Linear(784, 256), M.ReLU(), M.Linear(256, 10))
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x, label):
        with gm:
            loss = F.loss.cross_entropy(net(x), label)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

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
