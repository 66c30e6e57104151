"""Where the hybrid LeNet step's time goes: the fork's phases against pure PyTorch's, same process.

Runs the step of bench_pytorch_module.py (the guide's LeNet extractor in ``PyTorchModule`` +
megengine ``M.Linear`` + cross entropy + GradManager + SGD, against the same network in pure
PyTorch) with a clock read between phases, the two variants taking turns step by step, and prints
the median microseconds of each phase for both and their difference:

* extractor: the torch extractor's forward (the fork: ``PyTorchModule`` call, GradManager's
  ``record``; torch: ``zero_grad`` and the forward);
* linear, cross entropy: the classifier and the loss;
* backward: ``gm.backward`` against ``loss.backward()``;
* step: ``opt.step().clear_grad()`` against ``opt.step()``;
* loss value: ``float(loss)``, then the step's tensors dropped (``del``). torch frees the
  autograd graph it kept for the loss there (~12 us at batch 8: its nodes; the saved tensors went
  during ``backward``), where the fork freed its graph in backward (`_TorchCall.backward` drops
  the torch graph of the extractor). In a training loop both are paid every step, as the whole
  step of ``bench_pytorch_module.py`` pays them (its step function returns); left out, torch's
  share went untimed.

and, per repeat, the whole step's ratio (the median of fork step / torch step over adjacent
pairs, as ``_timing.paired_ratio``), summarised as median, quartiles and range over the repeats.

A phase's figure includes the cold caches the previous phase left behind (right after the
convolutions, a numpy matmul of 8x84 by 84x10 takes ~13 us, not its ~2 us in a warm loop): the
per-op overheads count here as they do in training.

On a GPU (``--device gpu0``: the fork's tensors there, torch's on ``cuda:0``) each clock read
waits for the device first (``torch.cuda.synchronize()``, which waits for CuPy's work too), so a
phase is the time until its kernels have run; ``--cprofile N`` then prints the N functions of the
fork's step with the most time of their own (``cProfile`` over 100 more steps, no waiting for the
device): on a GPU, where a small step is bound by the host's work per op, where that goes.
``benchmarks/gpu_check.py`` runs it so at batch 64.

    python benchmarks/profile_hybrid_step.py [--batch 8] [--steps 300] [--repeats 5]
                                             [--device gpu0] [--cprofile 25]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import bench_pytorch_module as bench  # noqa: E402  (the same network, weights and data)

PHASES = ("extractor", "linear", "cross entropy", "backward", "step", "loss value")


def _clock(device):
    """``time.perf_counter`` read once ``device``'s queued work has run (on a GPU: after
    ``torch.cuda.synchronize()``)."""
    if not device.startswith("gpu"):
        return time.perf_counter
    import torch

    def clock():
        torch.cuda.synchronize()
        return time.perf_counter()

    return clock


def fork_phases(init, data, device="cpu0"):
    import copy

    import megengine as mge
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    extractor, w, b = init
    net = bench.LeNet(copy.deepcopy(extractor))
    net.mge_classifier.weight.set_value(w)
    net.mge_classifier.bias.set_value(b)
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=bench.LR)
    next_batch = bench.cycle([(mge.tensor(x, device=device), mge.tensor(y, dtype="int32", device=device))
                              for x, y in zip(*data)])
    clock = _clock(device)

    def step():
        x, y = next_batch()
        t = [clock()]
        gm.record()
        h = net.lenet_extractor_wrap(x)
        t.append(clock())
        logits = net.mge_classifier(h)
        t.append(clock())
        loss = F.loss.cross_entropy(logits, y)
        t.append(clock())
        gm.backward(loss)  # releases the recording, as `with gm:` would
        t.append(clock())
        opt.step().clear_grad()
        t.append(clock())
        float(loss.numpy())
        del h, logits, loss  # (as torch's step below)
        t.append(clock())
        return np.diff(t)

    return step


def torch_phases(init, data, device="cpu0"):
    import copy

    import torch
    import torch.nn as nn
    import torch.nn.functional as TF

    where = f"cuda:{device[3:]}" if device.startswith("gpu") else "cpu"
    extractor, w, b = init
    extractor = copy.deepcopy(extractor).to(where)
    classifier = nn.Linear(84, 10).to(where)
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(w))
        classifier.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(list(extractor.parameters()) + list(classifier.parameters()), lr=bench.LR)
    next_batch = bench.cycle([(torch.from_numpy(x).to(where), torch.from_numpy(y).long().to(where))
                              for x, y in zip(*data)])
    clock = _clock(device)

    def step():
        x, y = next_batch()
        t = [clock()]
        opt.zero_grad(set_to_none=True)
        h = extractor(x)
        t.append(clock())
        logits = classifier(h)
        t.append(clock())
        loss = TF.cross_entropy(logits, y)
        t.append(clock())
        loss.backward()
        t.append(clock())
        opt.step()
        t.append(clock())
        float(loss.detach())
        del h, logits, loss  # torch frees the loss's graph here (in a loop: every step)
        t.append(clock())
        return np.diff(t)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="steps per repeat (default 300)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu0",
                        help="cpu0 (default) or gpuN: the fork's tensors there, torch's on cuda:N")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="then print the N functions of the fork's step with the most own time")
    args = parser.parse_args()
    if not (args.device == "cpu0" or args.device[:3] == "gpu" and args.device[3:].isdigit()):
        parser.error(f"--device: give cpu0 or gpuN (N a GPU's index), got {args.device!r}")
    import torch

    import megengine as mge

    torch.set_num_threads(1)
    mge.set_default_device(args.device)  # (the wrapper's device: bench.LeNet's default)
    init, data = bench.initial_weights(), bench.make_data(args.batch)
    fork, pure = fork_phases(init, data, args.device), torch_phases(init, data, args.device)
    for _ in range(20):
        fork(), pure()
    samples = {"fork": [], "torch": []}
    round_ratios = []  # per repeat: the median of fork step / torch step over adjacent pairs
    for _ in range(args.repeats):
        gc.collect()
        for i in range(args.steps):  # taking turns, in alternating order
            for name, fn in (("fork", fork), ("torch", pure)) if i % 2 else (("torch", pure), ("fork", fork)):
                samples[name].append(fn())
        totals = [np.sum(samples[name][-args.steps:], 1) for name in ("fork", "torch")]
        round_ratios.append(_timing.paired_ratio(*totals))
    f = np.median(np.array(samples["fork"]), 0) * 1e6
    t = np.median(np.array(samples["torch"]), 0) * 1e6
    print(f"hybrid LeNet step, batch {args.batch}: median us per phase over "
          f"{args.repeats * args.steps} steps, variants taking turns")
    print(f"  {'phase':14s} {'fork':>8s} {'torch':>8s} {'fork - torch':>13s}")
    for name, a, b in zip(PHASES, f, t):
        print(f"  {name:14s} {a:8.1f} {b:8.1f} {a - b:13.1f}")
    print(f"  {'sum':14s} {f.sum():8.1f} {t.sum():8.1f} {f.sum() - t.sum():13.1f}   "
          f"ratio x{f.sum() / t.sum():.3f}")
    print(f"  whole step per repeat, fork / torch over adjacent pairs of steps: "
          f"{_timing.describe_ratios(round_ratios)}")
    if args.cprofile:
        print_profile(fork, args.cprofile)


def print_profile(step, top, steps=100):
    """The ``top`` functions of ``steps`` calls of ``step`` with the most time of their own."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    print(f"fork's step, {steps} steps under cProfile: the {top} functions with the most own time")
    for line in lines[start:]:
        if line.strip():
            print("  " + line.replace(str(REPO) + "/", ""))


if __name__ == "__main__":
    main()
