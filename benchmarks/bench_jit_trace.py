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

Then the convnets of bench_models.py (ResNet-18, ShuffleNetV2 1.0x, 224x224): eval-mode forward
at batch 1 and 8 (the output read to the host) and a training step at batch 8 (GradManager,
cross entropy, SGD with momentum inside the traced function, as upstream's examples), in each
mode upstream's scripts use: eager, the checked calls (``symbolic=False``/``True``, with and
without ``capture_as_const``: what deployment scripts trace) and the replays
(``without_host=True``), against torch (``no_grad`` eval; the same step). The eval modes share
one network, as a script traces the network it has (separate copies ran ~3-6% slower in
the traced modes, as their weights fell out of the caches); each training mode trains its own.
The modes take turns
step by step in rounds; per round each mode's ratio to eager and to torch is the median over
the round's back-to-back pairs (`_timing.paired_ratio`), and the figures are the median and
quartiles of those per-round ratios. Aims: checked calls <= 1.05x eager, capture_as_const
checked calls <= 1.05x the plain checked ones, replays <= 1x eager.

Then (``--micro``, alone) six patterns of code made of many small ops, 20 loop iterations
each on an (8, 16) float32 input (Python-scalar constants, ``x * 1.0`` and ``** 1``, which
level-1 graph optimization rewrites to ``x``, tensor operands only, int/slice
indexing, shape ops, a concat of slices): per pattern the ratio of each checked-call mode
(``symbolic`` False/True, with and without ``capture_as_const``) to eager, per round the median
of back-to-back pairs, then the median and quartiles over rounds. Aim: <= 1.15x eager.

    python benchmarks/bench_jit_trace.py --micro [--rounds R] [--quick]

    python benchmarks/bench_jit_trace.py --models-only [--rounds R] [--steps N] [--quick]
                                         [--clock thread] [--cases eval|train]
                                         [--models shufflenet_v2] [--batch 1]
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
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.jit import trace  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


def make_step(sizes, batch, mode, train=True):
    mge.random.seed(0)  # the same initial weights in every mode
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [M.Linear(a, b), M.ReLU()]
    net = M.Sequential(*layers[:-1])
    train_step = _timing.mge_training_step(net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9))

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


# ----- the convnets of bench_models.py ------------------------------------------------------
EVAL_MODES = {  # label: trace options (None: eager)
    "eager": None,
    "trace(symbolic=False)": dict(symbolic=False),
    "trace(symbolic=True)": dict(symbolic=True),
    "trace(symbolic=False, capture_as_const)": dict(symbolic=False, capture_as_const=True),
    "trace(symbolic=True, capture_as_const)": dict(symbolic=True, capture_as_const=True),
    "trace(capture_as_const, without_host)": dict(symbolic=True, capture_as_const=True,
                                                  without_host=True),
}
TRAIN_MODES = {  # (a training step changes its parameters: no capture_as_const)
    "eager": None,
    "trace(symbolic=False)": dict(symbolic=False),
    "trace(symbolic=True)": dict(symbolic=True),
    "trace(without_host)": dict(without_host=True),
}


def make_net_step(bm, model, options, batch, train, net=None):
    """A zero-argument step of megengine's ``model`` (eval forward read to the host, or a
    training step) in trace mode ``options`` (None: eager). ``net``: the network to run (the
    eval modes share one, as a script traces the network it has; each training mode trains
    its own)."""
    mge.random.seed(0)  # the same initial weights in every mode
    if net is None:
        net = bm.MODELS[model][0]()
    rng = np.random.RandomState(1)
    x = mge.tensor(rng.randn(batch, 3, 224, 224).astype("float32"))
    if train:
        label = mge.tensor(rng.randint(0, 1000, batch), dtype="int32")
        fn = _timing.mge_training_step(net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    else:
        net.eval()
        label = None

        def fn(x, label):
            return net(x)
    if options is not None:
        fn = trace(fn, **options)
    return lambda: fn(x, label).numpy()


def make_torch_step(bm, model, batch, train):
    import torch

    torch.manual_seed(0)
    net = bm.MODELS[model][1]()
    rng = np.random.RandomState(1)
    x = torch.from_numpy(rng.randn(batch, 3, 224, 224).astype("float32"))
    if not train:
        net.eval()

        def infer():
            with torch.no_grad():
                return net(x).numpy()
        return infer
    label = torch.from_numpy(rng.randint(0, 1000, batch)).long()
    train_step = _timing.torch_training_step(
        net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    return lambda: float(train_step(x, label).detach())


def paired_rounds(fns, steps, rounds, clock):
    """Per round, every step time of each variant, the variants taking turns step by step (in a
    rotating order): {name: [[ms, ...] per round]}. ``clock``: ``time.perf_counter``, or
    ``time.thread_time`` (the CPU time of this thread: every kernel runs in it with one
    thread, and other processes on the cores no longer count in)."""
    import gc

    names = list(fns)
    times = {n: [] for n in names}
    for _ in range(rounds):
        gc.collect()
        per = {n: [] for n in names}
        for i in range(steps):
            for k in range(len(names)):
                n = names[(i + k) % len(names)]
                t0 = clock()
                fns[n]()
                per[n].append((clock() - t0) * 1e3)
        for n in names:
            times[n].append(per[n])
    return times


def run_models(args):
    import torch

    import bench_models as bm

    torch.set_num_threads(1)
    models = [m for m in bm.MODELS if args.models is None or m in args.models.split(",")]
    cases = [(model, batch, False) for model in models for batch in (1, 8)
             if args.batch is None or batch == args.batch]
    cases += [(model, 8, True) for model in models if args.batch in (None, 8)]
    for model, batch, train in cases:
        if args.cases != "all" and train != (args.cases == "train"):
            continue
        modes = TRAIN_MODES if train else EVAL_MODES
        print(f"{model}, batch {batch}, {'training step (SGD momentum)' if train else 'eval forward'}"
              f" ({args.rounds} rounds of {args.steps} steps per mode):")
        _timing.flush()
        shared = None if train else bm.MODELS[model][0]()
        fns = {label: make_net_step(bm, model, options, batch, train, shared)
               for label, options in modes.items()}
        fns["torch"] = make_torch_step(bm, model, batch, train)
        for fn in fns.values():  # the first call records; then warm up
            for _ in range(2):
                fn()
        times = paired_rounds(fns, args.steps, args.rounds,
                              time.thread_time if args.clock == "thread" else time.perf_counter)
        plain = "trace(symbolic=True)"
        for label in fns:
            med = np.median([np.median(r) for r in times[label]])
            vs_eager = [_timing.paired_ratio(v, e) for v, e in zip(times[label], times["eager"])]
            vs_torch = [_timing.paired_ratio(v, t) for v, t in zip(times[label], times["torch"])]
            line = (f"  {label:42s} {med:8.2f} ms  vs eager "
                    f"{_timing.describe_ratios(vs_eager).split(', min-max')[0]})  "
                    f"vs torch x{_timing.spread(vs_torch)[0]:.3f}")
            if "capture_as_const" in label and "without_host" not in label:
                base = plain if "symbolic=True" in label else "trace(symbolic=False)"
                vs_plain = [_timing.paired_ratio(v, b) for v, b in zip(times[label], times[base])]
                line += f"  vs {base} x{_timing.spread(vs_plain)[0]:.3f}"
            print(line)
        _timing.flush()
        del fns, times


# ----- --micro: code made of many small ops (a checked call's cost per op) ------------------
def _micro_patterns():
    """Six bodies of 20 loop iterations each on an (8, 16) float32 input: Python-scalar
    constants (and ones that leave x as it is), tensor operands only, indexing with ints and slices, shape ops, a concat of
    slices (the patterns of the per-op cost survey of checked calls)."""
    y0 = mge.tensor(np.random.RandomState(0).randn(8, 16).astype("float32"))

    def scalars(x):
        for _ in range(20):
            x = x * 0.5 + 1.0
            x = F.relu(x) - 0.25
        return x

    def identities(x):  # (rewritten to x at opt_level >= 1: `megengine.jit.arith_opt`)
        for _ in range(20):
            x = x * 1.0
            x = F.relu(x) ** 1
        return x

    def tensors(x):
        for _ in range(20):
            x = x * y0 + y0
            x = F.relu(x) - y0
        return x

    def index(x):
        return [x[:, i % 8] + x[i % 8, :8] for i in range(20)]

    def shapes(x):
        for _ in range(20):
            x = x.reshape(16, 8).transpose(1, 0).reshape(8, 16)
            x = F.expand_dims(x, 0)[0]
        return x

    def concat(x):
        for _ in range(20):
            x = F.concat([x[:, :8], x[:, 8:]], axis=1)
        return x

    return {"x * 0.5 + 1.0; relu(x) - 0.25": scalars, "x * 1.0; relu(x) ** 1": identities,
            "tensor operands only": tensors,
            "x[:, i % 8] + x[i % 8, :8]": index, "reshape/transpose/expand_dims/[0]": shapes,
            "concat([x[:, :8], x[:, 8:]], axis=1)": concat}


MICRO_MODES = {"sym=False": dict(symbolic=False), "sym=False, cac": dict(symbolic=False,
               capture_as_const=True), "sym=True": dict(symbolic=True),
               "sym=True, cac": dict(symbolic=True, capture_as_const=True)}


def run_micro(args):
    """Per pattern: eager us per call, and per checked-call mode the ratio traced/eager: per
    round the median of back-to-back pairs (`_timing.paired_ratio`; the modes and eager take
    turns call by call, in a rotating order), then the median and quartiles over rounds."""
    x = mge.tensor(np.random.RandomState(1).randn(8, 16).astype("float32"))
    print(f"checked calls of small-op code, (8, 16) float32 ({args.rounds} rounds of "
          f"{args.steps} calls per mode; ratio traced/eager, median [quartiles]; aim <= 1.15):")
    for name, body in _micro_patterns().items():
        fns = {"eager": lambda body=body: body(x)}
        for label, options in MICRO_MODES.items():
            traced = trace(body, **options)
            fns[label] = lambda traced=traced: traced(x)
        for fn in fns.values():  # the first call records; then warm up
            for _ in range(3):
                fn()
        times = paired_rounds(fns, args.steps, args.rounds, time.perf_counter)
        eager_us = np.median([np.median(r) for r in times["eager"]]) * 1e3
        cells = []
        for label in MICRO_MODES:
            ratios = [_timing.paired_ratio(v, e) for v, e in zip(times[label], times["eager"])]
            med, q1, q3, _, _ = _timing.spread(ratios)
            cells.append(f"{label} x{med:.2f} [{q1:.2f}-{q3:.2f}]")
        print(f"  {name:38s} eager {eager_us:6.0f} us | " + " | ".join(cells))
        _timing.flush()
    run_batch_norm_step(args)


def conv_bn_training_step():
    """(step, its input): a training step of 20 conv + batch norm + ReLU layers (SGD with
    momentum inside), from the same weights at every call, on (2, 4, 4, 4) images."""
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

    return step, mge.tensor(np.random.RandomState(1).randn(2, 4, 4, 4).astype("float32"))


def run_batch_norm_step(args):
    """`conv_bn_training_step`, where each layer's two running-statistics writes are events of
    the trace (``running_mean._reset(mean.detach())``, checked on the fast path since
    2026-12-03, as the batch norm op's three outputs are), in the checked-call modes against
    eager, each mode training its own network from the same weights; measured as `run_micro`,
    in thread time."""
    def make():
        return conv_bn_training_step()[0]

    x = conv_bn_training_step()[1]
    fns = {"eager": lambda step=make(): step(x)}
    for label in ("sym=False", "sym=True"):
        traced = trace(make(), **MICRO_MODES[label])
        fns[label] = lambda traced=traced: traced(x)
    for fn in fns.values():  # the first call records; then warm up
        for _ in range(3):
            fn()
    # (this thread's CPU time: the step is ~50 ms, which other processes on shared cores
    # disturb more than the few percent measured)
    times = paired_rounds(fns, max(args.steps // 4, 3), args.rounds, time.thread_time)
    eager_ms = np.median([np.median(r) for r in times["eager"]])
    cells = []
    for label in ("sym=False", "sym=True"):
        ratios = [_timing.paired_ratio(v, e) for v, e in zip(times[label], times["eager"])]
        med, q1, q3, _, _ = _timing.spread(ratios)
        cells.append(f"{label} x{med:.3f} [{q1:.3f}-{q3:.3f}]")
    print(f"training step, 20 conv + batch norm layers, (2, 4, 4, 4) input: eager "
          f"{eager_ms:.1f} ms | " + " | ".join(cells))


def main():
    def extra(parser):
        parser.add_argument("--micro", action="store_true",
                            help="only the small-op patterns: checked calls against eager")
        parser.add_argument("--models-only", action="store_true",
                            help="only the convnets (ResNet-18, ShuffleNetV2)")
        parser.add_argument("--no-models", action="store_true", help="only the MLP cases")
        parser.add_argument("--rounds", type=int, default=None,
                            help="rounds of the convnet cases (default 5; --quick: 2)")
        parser.add_argument("--cases", choices=("all", "eval", "train"), default="all",
                            help="convnet cases: eval forwards, training steps or both")
        parser.add_argument("--models", default=None,
                            help="convnet cases: these models only (comma-separated names of "
                                 "bench_models.MODELS: resnet18, shufflenet_v2)")
        parser.add_argument("--batch", type=int, default=None, choices=(1, 8),
                            help="convnet cases: this batch size only")
        parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                            help="convnet cases: wall time, or this thread's CPU time (steadier "
                                 "when other processes share the cores)")

    args = _timing.parse_args(__doc__, steps=30, repeats=7, quick_steps=5, quick_repeats=2,
                              extra=extra)
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}")
    if args.micro:
        args.rounds = args.rounds or (2 if args.quick else 7)
        args.steps = 10 if args.quick else 40
        return run_micro(args)
    if args.models_only:
        args.rounds = args.rounds or (2 if args.quick else 5)
        args.steps = min(args.steps, 2 if args.quick else 6)
        return run_models(args)
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
    if not args.no_models:
        args.rounds = args.rounds or (2 if args.quick else 5)
        args.steps = min(args.steps, 2 if args.quick else 6)
        run_models(args)


if __name__ == "__main__":
    main()
