"""Offline jit fuzzing: ``python -m tests.fuzz.jit --seeds 200 [--start S] [--no-minimise]``
draws programs (`jit_programs`), checks each in every trace mode against eager (`jit_check`),
prints each failure minimised to a small reproducer, and the outcome counts (not run in CI).
Run it from the repository root with the checkout on PYTHONPATH."""
import argparse
import collections
import logging
import sys
import time

from .jit_check import MODES, JitMismatch, _mode_str, check, minimise
from .jit_programs import draw


def fuzz(seeds, start=0, shrink=True):
    """Check programs ``start`` .. ``start + seeds - 1``; prints each failure; returns (number
    failing, outcome counts of the passing ones)."""
    totals, bad = collections.Counter(), 0
    for seed in range(start, start + seeds):
        try:
            report = check(seed)
        except JitMismatch as e:
            bad += 1
            print(f"=== program {seed}: {e}", flush=True)
            if shrink:
                mode = next(m for m in MODES if str(e).startswith(_mode_str(m)))
                print(f"--- minimised ---\n{minimise(draw(seed), mode)}", flush=True)
            continue
        totals["programs"] += 1
        totals["modes"] += len(report)
        for counts in report.values():
            totals.update(counts)
    return bad, totals


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.jit", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="programs (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--no-minimise", action="store_true", help="print failures as drawn")
    a = p.parse_args(argv)
    log = logging.getLogger("megengine")
    level, t0 = log.level, time.time()
    log.setLevel(logging.ERROR)  # (fixed-shape files' warnings; restored: tests read the log)
    try:
        bad, totals = fuzz(a.seeds, a.start, not a.no_minimise)
    finally:
        log.setLevel(level)
    print(f"{a.seeds} programs ({bad} failing) in {time.time() - t0:.0f}s; outcomes of the "
          f"passing ones: {dict(totals)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
