"""Timing helpers shared by the benchmark scripts: interleaved repeats, medians, the machine line,
the classifier training step that the scripts time on each side, and peak memory sampling.

Import this module *after* the script has pinned the thread counts (it imports numpy lazily, but
the scripts import numpy themselves right after pinning).
"""
import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import threading
import time


def parse_args(doc, steps, repeats, quick_steps, quick_repeats, extra=None):
    """The common flags: --steps N (per repeat), --repeats R, --quick (a smoke run, seconds)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per timed repeat (default {steps}; --quick: {quick_steps})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats; the median is reported (default {repeats}; --quick: {quick_repeats})")
    parser.add_argument("--quick", action="store_true", help="few steps and repeats: checks that it runs, noisy figures")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = quick_steps if args.quick else steps
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else repeats
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    return args


class Timing:
    """One variant's figures: ``median`` ms/step (the median over repeats of the mean of
    ``steps`` steps: the headline figure) and ``best`` (the fastest single step: what the code
    costs when nothing else competes for the core; ratios of bests are a check on the medians
    when the machine is shared)."""

    __slots__ = ("median", "best")

    def __init__(self, median, best):
        self.median, self.best = median, best


def time_steps(variants, steps, repeats, warmup=3):
    """Time each zero-argument callable in ``variants`` (a dict); returns {name: Timing} in ms.

    Each variant is warmed up ``warmup`` calls. Then ``repeats`` times: every variant runs
    ``steps`` calls, the variants taking turns call by call (in a rotating order), and each
    variant's mean time per call in that repeat is noted; the median over the repeats is the
    headline figure. Taking turns call by call makes load from other processes (the benchmark
    machines are shared 2-core boxes) hit all variants alike, where timing one variant's block
    after the other's lets a burst land on one of them only.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    fns = [variants[n] for n in names]
    samples = {name: [] for name in names}
    best = [float("inf")] * len(fns)
    clock = time.perf_counter
    for _ in range(repeats):
        gc.collect()
        totals = [0.0] * len(fns)
        for i in range(steps):
            for k in range(len(fns)):
                j = (i + k) % len(fns)
                t0 = clock()
                fns[j]()
                dt = clock() - t0
                totals[j] += dt
                if dt < best[j]:
                    best[j] = dt
        for name, total in zip(names, totals):
            samples[name].append(total / steps * 1e3)
    return {name: Timing(statistics.median(samples[name]), b * 1e3) for name, b in zip(names, best)}


def paired_ratio(variant_times, baseline_times):
    """The median of variant / baseline over pairs of steps run back to back (the two variants
    taking turns step by step, who goes first alternating).

    A pair's two steps run within milliseconds of each other, so load from other processes
    mostly hits both alike and cancels in their ratio; the median ignores the pairs a
    preemption lands in. (Measured on the shared 2-core machine at load ~6, 600 steps of the
    hybrid LeNet at batch 64 cut into rounds of 50: the quartiles of the rounds' figures were
    0.015 apart with this estimator, 0.043 with the ratio of median step times, 0.056 with the
    ratio of mean step times.)
    """
    return statistics.median(v / b for v, b in zip(variant_times, baseline_times))


def paired_rounds(mge_step, torch_step, steps, repeats, warmup=3):
    """Time two zero-argument steps taking turns step by step (who goes first alternating), after
    ``warmup`` calls each. Per round: (the median of their paired ratios, ``paired_ratio``; the
    megengine step times; the torch step times), times in seconds."""
    for _ in range(warmup):
        mge_step()
        torch_step()
    clock = time.perf_counter
    rounds = []
    for _ in range(repeats):
        gc.collect()
        mt, tt = [], []
        for i in range(steps):
            order = ((mge_step, mt), (torch_step, tt))
            for fn, times in (order if i % 2 == 0 else order[::-1]):
                t0 = clock()
                fn()
                times.append(clock() - t0)
        rounds.append((paired_ratio(mt, tt), mt, tt))
    return rounds


def spread(values):
    """(median, lower quartile, upper quartile, min, max) of a list of figures."""
    values = sorted(values)
    if len(values) == 1:
        v = values[0]
        return v, v, v, v, v
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q1, q3, values[0], values[-1]


def describe_ratios(ratios):
    """'x1.012 (quartiles x1.005-x1.020, min-max x0.990-x1.060, 12 rounds)'."""
    med, q1, q3, lo, hi = spread(ratios)
    return (f"x{med:.3f} (quartiles x{q1:.3f}-x{q3:.3f}, min-max x{lo:.3f}-x{hi:.3f}, "
            f"{len(ratios)} rounds)")


def ratio_verdict(ratios, aim):
    """The aim judged on the median of per-round ratios; 'clearly' when even the upper
    quartile meets it (or even the lower quartile misses it), 'borderline' otherwise."""
    med, q1, q3, _, _ = spread(ratios)
    if med <= aim:
        return f"aim <= {aim:.2f}x: met" + (" clearly (upper quartile too)" if q3 <= aim
                                              else " (borderline: upper quartile above)")
    return f"aim <= {aim:.2f}x: MISSED" + (" clearly (lower quartile too)" if q1 > aim
                                             else " (borderline: lower quartile below)")


def time_call_us(fn, calls, repeats):
    """Median microseconds per call of ``fn`` over ``repeats`` rounds of ``calls`` calls."""
    fn()
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def verdict(ratio, aim):
    return f"aim <= {aim:.2f}x: {'met' if ratio <= aim else 'MISSED'}"


def mge_training_step(net, opt):
    """megengine's classifier training step as scripts write it: ``step(x, label)`` records the
    forward and cross entropy under a GradManager attached to ``net``'s parameters, runs backward
    and ``opt``'s update, and returns the loss tensor. A function of its batch, so that
    ``jit.trace`` can wrap it."""
    import megengine.functional as F
    from megengine.autodiff import GradManager

    gm = GradManager().attach(net.parameters())

    def step(x, label):
        with gm:
            loss = F.loss.cross_entropy(net(x), label)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    return step


def torch_training_step(net, opt):
    """The same step in PyTorch: ``step(x, label)`` clears the gradients (to None), runs forward,
    cross entropy, backward and ``opt``'s update, and returns the loss tensor."""
    import torch.nn.functional as TF

    def step(x, label):
        opt.zero_grad(set_to_none=True)
        loss = TF.cross_entropy(net(x), label)
        loss.backward()
        opt.step()
        return loss

    return step


def rss_bytes():
    """This process's resident memory now (``/proc/self/statm``: unlike ru_maxrss it can fall, so
    a peak over a window is the peak of that window; unlike tracemalloc it sees torch's
    allocations)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sampled_peak(run, measure=rss_bytes):
    """Run ``run()`` while a thread samples ``measure()`` every millisecond: returns (the reading
    before, the highest reading before, during and after, what ``run`` returned)."""
    base = measure()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], measure())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return base, max(peak[0], measure()), result


def megengine_source():
    """Which checkout's ``megengine`` this process imported (A/B runs put one first on
    PYTHONPATH): the folder above the package."""
    import megengine

    return os.path.dirname(os.path.dirname(os.path.abspath(megengine.__file__)))


def machine_line():
    """nproc, CPU model, Python/torch/numpy versions and the date, for the README's figures."""
    import numpy

    cpu = platform.processor() or "unknown CPU"
    try:
        info = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
        if "model name" in info:  # a VM's model name can be as vague as "AMD EPYC": add family/model
            cpu = f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    threads = ", ".join(f"{k}={os.environ.get(k, 'unset')}"
                        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    return (f"machine: nproc={os.cpu_count()}, CPU {cpu}; Python {platform.python_version()}, "
            f"torch {torch_version}, numpy {numpy.__version__}; {threads}; "
            f"{datetime.date.today().isoformat()}")


def flush():
    sys.stdout.flush()
