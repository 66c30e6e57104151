"""Two checkouts' hybrid LeNet step against pure PyTorch, round by round: is a change faster?

Starts ``--workers`` (4) worker processes per source tree (``PYTHONPATH`` set to that tree, so
its ``megengine`` is imported; all run this directory's benchmark code, so both sides time the
same step), each holding the step of ``profile_hybrid_step.py`` for the fork and for pure
PyTorch. Several processes because a process carries a bias of its own: in one measured run,
the torch convolutions of the fork's copy of the extractor ran ~10 % faster than pure
PyTorch's for the whole life of the process (input alignment was ruled out), which no number
of rounds in that one process averages away. Then, ``--rounds`` times, one worker of each tree
in turn (who goes first alternates; the trees' workers take the rounds in rotation) runs
``--steps`` steps of fork and torch taking turns step by step and reports that round's
fork/torch ratio (the median over adjacent pairs of fork step / torch step, as
``_timing.paired_ratio``) and per-phase medians; a worker waits idle while the
other runs. So base and head are interleaved at the scale of a second, fork and torch at the
scale of a step, and load from other processes hits all four alike.

Prints every round, then per tree the median ratio with its quartiles and range, the aim's
verdict at batch 8 and 64 (issue 12 item 6: <= 1.08x, <= 1.03x), the median per-phase
difference fork - torch (us), and head against base: the per-round quotient head ratio / base
ratio (rounds paired in time), whose quartiles decide "faster", "slower" or "no difference
beyond the noise".

    python benchmarks/ab_hybrid_step.py --base /path/to/base/checkout [--head .] [--batch 8]
        [--rounds 20] [--steps N (default 1600 // batch, at least 50)] [--workers 4]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # inherited by the workers: one thread each

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing  # noqa: E402

AIMS = {8: 1.08, 64: 1.03}  # as bench_pytorch_module.AIMS (not imported: it imports megengine)


def worker(batch):
    """Serve rounds on stdin ("run N") with JSON lines on stdout, until "quit"."""
    import gc

    import numpy as np
    import torch

    import bench_pytorch_module as bench
    import profile_hybrid_step as profile

    torch.set_num_threads(1)
    init, data = bench.initial_weights(), bench.make_data(batch)
    fork, pure = profile.fork_phases(init, data), profile.torch_phases(init, data)
    for _ in range(20):
        fork(), pure()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        steps = int(command[1])
        gc.collect()
        f, t = [], []
        for i in range(steps):
            if i % 2:
                f.append(fork()), t.append(pure())
            else:
                t.append(pure()), f.append(fork())
        f, t = np.array(f) * 1e6, np.array(t) * 1e6
        # the median over adjacent pairs of fork step / torch step (see _timing.paired_ratio)
        print(json.dumps({"ratio": float(np.median(f.sum(1) / t.sum(1))),
                          "fork": np.median(f, 0).tolist(), "torch": np.median(t, 0).tolist()}),
              flush=True)


class Worker:
    def __init__(self, name, tree, batch):
        self.name, self.tree = name, tree
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                      "--batch", str(batch)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.reply()  # ready

    def reply(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            sys.exit(f"ab_hybrid_step: the worker for {self.tree} failed (exit status "
                     f"{self.proc.returncode}; its error is above)")
        return json.loads(line)

    def run(self, steps):
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def run_rounds(trees, batch, rounds, steps, workers, on_round=None):
    """{name: [round result]} for the source trees ``trees`` ({name: path}): ``workers``
    processes per tree, taking the rounds in rotation; in each round one worker of each tree
    in turn (who goes first alternates) runs ``steps`` steps of fork and torch. A result is
    {"ratio": fork / torch over adjacent step pairs, "fork": [us per phase], "torch": [...]}.
    ``on_round(r, results)`` is called after each round."""
    pool = {name: [] for name in trees}
    results = {name: [] for name in trees}
    names = list(trees)
    try:
        for _ in range(workers):
            for name, tree in trees.items():
                pool[name].append(Worker(name, tree, batch))
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                results[name].append(pool[name][r % workers].run(steps))
            if on_round is not None:
                on_round(r, results)
    finally:
        for ws in pool.values():
            for w in ws:
                w.close()
    return results


def default_steps(batch):
    """Steps of each variant per round: about 0.5 s of work at any batch size."""
    return max(50, 1600 // batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the checkout to compare against (required)")
    parser.add_argument("--head", default=os.path.dirname(HERE), help="default: this checkout")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20, help="rounds per tree (default 20)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of each variant per round (default 1600 // batch, at least 50)")
    parser.add_argument("--workers", type=int, default=4,
                        help="worker processes per tree, taking rounds in turn (default 4)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.batch)
    if not args.base:
        parser.error("--base is required")
    steps = args.steps or default_steps(args.batch)
    if steps < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--steps, --rounds and --workers must be at least 1")
    trees = {"base": os.path.abspath(args.base), "head": os.path.abspath(args.head)}
    for name, tree in trees.items():
        if not os.path.isdir(os.path.join(tree, "megengine")):
            parser.error(f"--{name} {tree} holds no megengine package")
    print(_timing.machine_line())
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")

    def show(r, results):
        print(f"round {r + 1:3d} (workers {r % args.workers + 1}): "
              f"base x{results['base'][-1]['ratio']:.3f}  "
              f"head x{results['head'][-1]['ratio']:.3f}", flush=True)

    results = run_rounds(trees, args.batch, args.rounds, steps, args.workers, show)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    from profile_hybrid_step import PHASES as phases

    print(f"hybrid LeNet step, batch {args.batch}: {args.rounds} rounds of {steps} steps per "
          f"tree ({args.workers} worker processes each, taking rounds in turn), fork and torch "
          "taking turns step by step, trees taking turns round by round")
    for name, runs in results.items():
        ratios = [run["ratio"] for run in runs]
        line = f"  {name} ({trees[name]}): fork / torch {_timing.describe_ratios(ratios)}"
        if args.batch in AIMS:
            line += f"   {_timing.ratio_verdict(ratios, AIMS[args.batch])}"
        print(line)
        for k, phase in enumerate(phases):
            diff = statistics.median(run["fork"][k] - run["torch"][k] for run in runs)
            print(f"    {phase:14s} fork - torch, median {diff:+8.1f} us")
    quotients = [h["ratio"] / b["ratio"] for h, b in zip(results["head"], results["base"])]
    med, q1, q3, _, _ = _timing.spread(quotients)
    if q3 < 1:
        verdict = "head is faster (upper quartile below 1)"
    elif q1 > 1:
        verdict = "head is slower (lower quartile above 1)"
    else:
        verdict = "no difference beyond the noise (quartiles straddle 1)"
    print(f"  head / base, per round: {_timing.describe_ratios(quotients)}: {verdict}")


if __name__ == "__main__":
    main()
