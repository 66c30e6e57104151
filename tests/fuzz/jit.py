"""Offline jit fuzzing: ``python -m tests.fuzz.jit --seeds 200 [--start S] [--mode-sample K]``
draws programs (`jit_programs`), checks each in every trace mode against eager (`jit_check`),
prints each failure minimised to a small reproducer, and the outcome counts (not run in CI).
Run it from the repository root with the checkout on PYTHONPATH."""
import argparse
import collections
import logging
import sys
import time


def main(argv=None):
    from .jit_check import MODES, JitMismatch, _mode_str, check, minimise
    from .jit_programs import draw

    p = argparse.ArgumentParser(prog="python -m tests.fuzz.jit", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="programs (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--no-minimise", action="store_true", help="print failures as drawn")
    a = p.parse_args(argv)
    logging.getLogger("megengine").setLevel(logging.ERROR)  # (fixed-shape files' warnings)
    totals, bad, t0 = collections.Counter(), 0, time.time()
    for seed in range(a.start, a.start + a.seeds):
        try:
            report = check(seed)
        except JitMismatch as e:
            bad += 1
            print(f"=== program {seed}: {e}", flush=True)
            if not a.no_minimise:
                mode = next(m for m in MODES if str(e).startswith(_mode_str(m)))
                small = minimise(draw(seed), mode)
                print(f"--- minimised ---\n{small}", flush=True)
            continue
        totals["programs"] += 1
        totals["modes"] += len(report)
        for counts in report.values():
            totals.update(counts)
    print(f"{a.seeds} programs ({bad} failing) in {time.time() - t0:.0f}s; outcomes of the "
          f"passing ones: {dict(totals)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
