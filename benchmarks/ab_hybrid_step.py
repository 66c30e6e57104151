"""Two checkouts' hybrid LeNet step against pure PyTorch, runs alternating: is a change faster?

Runs ``profile_hybrid_step.py`` (this directory's copy, so both sides run the same benchmark)
``--rounds`` times for each of two source trees, alternating base and head (and which of them
goes first), each run in its own process with ``PYTHONPATH`` set to that tree so its
``megengine`` is imported. Each run prints the fork/torch ratio measured inside that run (the two
variants taking turns step by step), which load from other processes mostly cancels; runs of
the two trees alternate so that slow minutes hit both. Prints every run's ratio and per-phase
differences (fork minus torch, us), then per tree the median, min and max ratio and the median
per-phase difference.

    python benchmarks/ab_hybrid_step.py --base /path/to/base/checkout [--head .] [--batch 8]
        [--rounds 4] [--steps 300]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROW = re.compile(r"\s+(\w[\w ]*?)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)(?:\s+ratio x([\d.]+))?$")


def run_once(tree, batch, steps):
    """{phase: (fork us, torch us, fork - torch us)} and the whole step's ratio, for one run."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, os.path.join(HERE, "profile_hybrid_step.py"),
                          "--batch", str(batch), "--steps", str(steps), "--repeats", "3"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ab_hybrid_step: the run on {tree} failed:\n{out.stderr.strip()[-2000:]}")
    rows, ratio = {}, None
    for line in out.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = tuple(float(m.group(i)) for i in (2, 3, 4))
            if m.group(5):
                ratio = float(m.group(5))
    if ratio is None:
        sys.exit(f"ab_hybrid_step: no ratio in the output of the run on {tree}:\n{out.stdout}")
    return rows, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the checkout to compare against")
    parser.add_argument("--head", default=os.path.dirname(HERE), help="default: this checkout")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="runs per tree (default 4)")
    parser.add_argument("--steps", type=int, default=300, help="steps per repeat (default 300)")
    args = parser.parse_args()
    trees = {"base": os.path.abspath(args.base), "head": os.path.abspath(args.head)}
    for name, tree in trees.items():
        if not os.path.isdir(os.path.join(tree, "megengine")):
            parser.error(f"--{name} {tree} holds no megengine package")
    results = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in (("base", "head") if r % 2 == 0 else ("head", "base")):
            rows, ratio = run_once(trees[name], args.batch, args.steps)
            results[name].append((rows, ratio))
            phases = " ".join(f"{p}:{v[2]:+.0f}" for p, v in rows.items() if p != "sum")
            print(f"{name} x{ratio:.3f}  {phases}", flush=True)
    print(f"hybrid LeNet step, batch {args.batch}, {args.rounds} runs per tree, alternating:")
    for name, runs in results.items():
        ratios = [ratio for _, ratio in runs]
        print(f"  {name} ({trees[name]}): ratio median x{statistics.median(ratios):.3f}, "
              f"min x{min(ratios):.3f}, max x{max(ratios):.3f}")
        for phase in runs[0][0]:
            diff = statistics.median(rows[phase][2] for rows, _ in runs)
            print(f"    {phase:14s} fork - torch, median {diff:+7.1f} us")


if __name__ == "__main__":
    main()
