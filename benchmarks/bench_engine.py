"""Training-step time of this engine against the same network in pure PyTorch, same process.

Two networks, batch 64, random data fixed in advance, CPU, one thread:

* MLP: Linear 784-256, ReLU, Linear 256-10; SGD(lr 0.01, momentum 0.9); cross_entropy.
* CNN: Conv2d 1->8 3x3 pad 1, BatchNorm2d, ReLU, max_pool2d 2, Linear 8*14*14 -> 10 on 1x28x28.

For each it prints the ms per training step (forward, loss, backward, SGD update; the median
over repeats, and the best single step) of megengine eager, megengine under
``trace(symbolic=False)`` and ``trace(symbolic=True)`` (the whole step, ``gm.backward`` and
``opt.step`` included), and torch; then the ratios megengine/torch (aims for eager: MLP <= 1.5x,
CNN <= 3x) and traced/eager. Before timing it checks that every variant does the same work: the
torch copy starts from megengine's initial weights, all must give the same, falling losses over
a few steps, and the traced steps must leave the same parameters and BatchNorm statistics as eager.

    python benchmarks/bench_engine.py [--steps N] [--repeats R] [--quick]

Thread counts are pinned to 1 (OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before
numpy is imported, and torch.set_num_threads(1)) so that both frameworks use one core.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.jit import trace  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)

BATCH = 64
N_BATCHES = 4  # distinct pre-made batches, cycled
LR, MOMENTUM = 0.01, 0.9
AIMS = {"MLP": 1.5, "CNN": 3.0}
MODES = ("eager", "check", "symbolic")
LABELS = {"eager": "eager", "check": "trace(symbolic=False)", "symbolic": "trace(symbolic=True)"}


# ----- the two networks, both frameworks ---------------------------------------------------------
class MgeMLP(M.Module):
    def __init__(self, hidden=256):  # benchmarks/gpu_check.py also times 784-4096-10
        super().__init__()
        self.fc1 = M.Linear(784, hidden)
        self.fc2 = M.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class MgeCNN(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 8, 3, padding=1)
        self.bn = M.BatchNorm2d(8)
        self.fc = M.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(F.flatten(x, 1))


class TorchMLP(tnn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.fc1 = tnn.Linear(784, hidden)
        self.fc2 = tnn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(TF.relu(self.fc1(x)))


class TorchCNN(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv = tnn.Conv2d(1, 8, 3, padding=1)
        self.bn = tnn.BatchNorm2d(8)
        self.fc = tnn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = TF.max_pool2d(TF.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def copy_weights(mge_net, torch_net):
    """torch_net starts from mge_net's initial weights (megengine keeps conv/bn biases as 1xCx1x1)."""
    ours = dict(mge_net.named_parameters())
    with torch.no_grad():
        for name, p in torch_net.named_parameters():
            p.copy_(torch.from_numpy(ours[name].numpy().reshape(p.shape)))


# ----- one training step per variant ---------------------------------------------------------------
def make_data(input_shape, signal, seed=0, batch=BATCH):
    """Random batches fixed in advance; each class adds its own pattern to the noise, so that the
    loss falls over the check's few steps."""
    rng = np.random.RandomState(seed)
    patterns = rng.randn(10, *input_shape).astype("float32")
    ys = [rng.randint(0, 10, batch).astype("int32") for _ in range(N_BATCHES)]
    xs = [(rng.randn(batch, *input_shape) + signal * patterns[y]).astype("float32") for y in ys]
    return xs, ys


def mge_stepper(net_cls, data, mode):
    """A zero-argument callable running the next training step; returns (step, net, last loss)."""
    mge.random.seed(0)  # the same initial weights in every variant
    net = net_cls()
    train_step = _timing.mge_training_step(
        net, optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM))
    fn = train_step if mode == "eager" else trace(train_step, symbolic=(mode == "symbolic"))
    batches = [(mge.tensor(x), mge.tensor(y, dtype="int32")) for x, y in zip(*data)]
    state = {"i": 0}

    def step():
        x, y = batches[state["i"] % N_BATCHES]
        state["i"] += 1
        return fn(x, y)

    return step, net


def torch_stepper(net_cls, data, init_from, device="cpu"):
    """``device``: the torch device ("cuda:0" for benchmarks/gpu_check.py)."""
    net = net_cls().to(device)
    copy_weights(init_from, net)
    train_step = _timing.torch_training_step(
        net, torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM))
    batches = [(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))
               for x, y in zip(*data)]
    state = {"i": 0}

    def step():
        x, y = batches[state["i"] % N_BATCHES]
        state["i"] += 1
        return train_step(x, y)

    return step, net


def check_same_work(mge_cls, torch_cls, data, steps=8, modes=MODES, device="cpu"):
    """Every variant from the same weights on the same batches: the losses must agree, and the
    traced steps must leave the same parameters and buffers (BatchNorm statistics) as eager."""
    runs = {}
    for mode in modes:
        mstep, mnet = mge_stepper(mge_cls, data, mode)
        runs[mode] = ([float(mstep().numpy()) for _ in range(steps)],
                      {k: np.array(v, copy=True) for k, v in mnet.state_dict().items()})
    tstep, _ = torch_stepper(torch_cls, data, mge_stepper(mge_cls, data, "eager")[1], device)
    tl = [float(tstep().detach()) for _ in range(steps)]
    ml, eager_state = runs["eager"]
    ok = True
    for mode, (losses, state) in runs.items():
        worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses, tl))
        state_diff = max(float(np.abs(state[k] - eager_state[k]).max()) for k in state)
        same, falls = worst < 1e-3 and state_diff < 1e-4, losses[-1] < losses[0]
        good = same and falls
        ok &= good
        print(f"  same work, megengine {LABELS[mode]:22s} loss {losses[0]:.4f} -> {losses[-1]:.4f} over "
              f"{steps} steps; largest relative difference to torch {worst:.1e}, largest state "
              f"difference to eager {state_diff:.1e} "
              f"{'ok' if good else 'MISMATCH' if not same else 'LOSS DOES NOT FALL'}")
    return ok


def run_case(name, mge_cls, torch_cls, input_shape, signal, args):
    data = make_data(input_shape, signal)
    print(f"{name}, batch {BATCH}, input {input_shape}, SGD momentum {MOMENTUM}, cross_entropy:")
    ok = check_same_work(mge_cls, torch_cls, data)
    variants = {}
    for mode in MODES:
        variants["megengine " + LABELS[mode]], mnet = mge_stepper(mge_cls, data, mode)
    variants["torch"], _ = torch_stepper(torch_cls, data, mnet)
    ms = _timing.time_steps(variants, args.steps, args.repeats)
    torch_t, eager_t = ms["torch"], ms["megengine eager"]
    print(f"  {'':33s} {'median':>8s}          {'best':>8s}          median (best) ratios")
    for label, t in ms.items():
        line = f"  {label:33s} {t.median:8.3f} ms/step {t.best:8.3f} ms/step"
        if label != "torch":
            line += (f"   x{t.median / torch_t.median:5.2f} (x{t.best / torch_t.best:4.2f}) of torch"
                     f"   x{t.median / eager_t.median:5.2f} (x{t.best / eager_t.best:4.2f}) of eager")
        print(line)
    ratio = eager_t.median / torch_t.median
    print(f"  megengine eager / torch = {ratio:.2f}x median, {eager_t.best / torch_t.best:.2f}x best  "
          f"({_timing.verdict(ratio, AIMS[name])})")
    _timing.flush()
    return ok, ratio


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=7, quick_steps=5, quick_repeats=2)
    print(_timing.machine_line())
    print(f"median of {args.repeats} repeats of {args.steps} steps, after 3 warm-up steps, variants taking turns step by step")
    results = [run_case("MLP", MgeMLP, TorchMLP, (784,), 0.1, args),
               run_case("CNN", MgeCNN, TorchCNN, (1, 28, 28), 1.0, args)]
    if not all(ok for ok, _ in results):
        sys.exit("bench_engine: the megengine and torch variants disagree; the figures compare different work")


if __name__ == "__main__":
    main()
