"""Step time of a traced training step against eager: MLP 784-256-10, batch 64 (and a tiny MLP,
where Python overhead dominates). Prints ms per step and ratios against eager, same process.

    python benchmarks/bench_jit_trace.py [--steps N]
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # steadier timings on a shared machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.jit import trace  # noqa: E402


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
    if mode != "eager":
        fn = trace(fn, symbolic=(mode == "symbolic"))
    rng = np.random.RandomState(1)
    x = mge.tensor(rng.randn(batch, sizes[0]).astype("float32"))
    label = mge.tensor(rng.randint(0, sizes[-1], batch), dtype="int32")
    return lambda: fn(x, label)


def bench(steps_by_mode, steps, repeats=7):
    """Best ms/step per mode; the modes take turns so that machine noise hits them alike."""
    for step in steps_by_mode.values():
        step()  # the first call records
        step()
    best = {mode: float("inf") for mode in steps_by_mode}
    for _ in range(repeats):
        for mode, step in steps_by_mode.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            best[mode] = min(best[mode], (time.perf_counter() - t0) / steps * 1e3)
    return best


LABELS = {"eager": "eager", "check": "trace(symbolic=False)", "symbolic": "trace(symbolic=True)"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    cases = [("MLP 784-256-10, batch 64", (784, 256, 10), 64, args.steps),
             ("MLP 32-32-32-10, batch 8", (32, 32, 32, 10), 8, args.steps * 10)]
    for title, sizes, batch, steps in cases:
        for train in (True, False):
            print(f"{title}, {'training step (SGD + GradManager)' if train else 'inference'}:")
            fns = {mode: make_step(sizes, batch, mode, train) for mode in LABELS}
            best = bench(fns, steps)
            for mode, ms in best.items():
                print(f"  {LABELS[mode]:24s} {ms:8.3f} ms/step   "
                      f"x{best['eager'] / ms:5.2f} speed vs eager")


if __name__ == "__main__":
    main()
