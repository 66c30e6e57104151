"""Offline fuzzing: ``python -m tests.fuzz --seeds 2000 [--op NAME ...] [--family F]`` prints,
per op, the cases run and every discrepancy against torch (not run in CI). Run it from the
repository root with the checkout on PYTHONPATH; ``MGE_SIM_CUDA=1`` runs the engine on a
simulated CUDA device (tests/simcuda: CuPy's code paths on the host); ``--quantized`` reruns
the cases with their float32 inputs quantized (on cpu0, where quantized tensors live), ``--int`` with them integers (int32, int8, uint8,
int64, bool), against torch on the values; ``--float64`` and ``--float16`` with them in that
dtype, against torch's float64 op and the exact result (tests/fuzz/float_inputs.py);
``--misuse`` replays each case's functional call with one argument broken at a time and counts
the errors that are clear, internal, accepted or hang (tests/fuzz/misuse.py)."""
import argparse
import collections
import faulthandler
import fnmatch
import os
import sys
import time


def _install_simcuda():
    # tests/ on the path as pytest's pythonpath puts it: simcuda and the shared oracles
    # (tests/quantized_oracle.py)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    # before megengine loads, as tests/conftest.py does for the suite
    if os.environ.get("MGE_SIM_CUDA", "").strip() not in ("", "0"):
        import simcuda

        if not simcuda.installed():  # (the suite's conftest may have installed it already)
            simcuda.install_from_environment()


_install_simcuda()
from .registry import OPS, fuzz  # noqa: E402  (after simcuda)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--seeds", type=int, default=200, help="cases per op (default 200)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--op", action="append", help="op name or glob (repeatable; default all)")
    p.add_argument("--family", help="only ops of this family (elemwise, reduction, ...)")
    p.add_argument("--quantized", action="store_true",
                   help="rerun the cases with their float32 inputs quantized, against torch on "
                        "the values (tests/fuzz/quantized_inputs.py)")
    p.add_argument("--int", action="store_true",
                   help="rerun the cases with their float32 inputs integers or bools, against "
                        "torch on the values (tests/fuzz/integer_inputs.py)")
    for dt in ("float64", "float16"):
        p.add_argument(f"--{dt}", action="store_true",
                       help=f"rerun the cases with their float32 inputs {dt}: its dtype kept "
                            "and its precision (tests/fuzz/float_inputs.py)")
    p.add_argument("--special", action="store_true",
                   help="rerun the cases with NaN, infinities and zeros among their float32 "
                        "inputs, against torch on the values (tests/fuzz/special_inputs.py)")
    p.add_argument("--special-grad", action="store_true",
                   help="rerun the cases with NaN, infinities and zeros among their output "
                        "gradients, against torch's input gradients "
                        "(tests/fuzz/special_inputs.py)")
    p.add_argument("--misuse", action="store_true",
                   help="replay the cases' calls with one argument broken at a time and "
                        "classify what the function did (tests/fuzz/misuse.py)")
    p.add_argument("--accepted", action="store_true",
                   help="with --misuse, also list the broken calls that were accepted")
    p.add_argument("--max-messages", type=int, default=5, help="discrepancies shown per op")
    p.add_argument("--hang-seconds", type=int, default=600,
                   help="an op whose seeds take longer ends the run with the stacks (a call "
                        "that never returns, as LAPACK's SVD of an infinity did; default 600)")
    p.add_argument("--list", action="store_true", help="list the ops and their families")
    a = p.parse_args(argv)
    names = sorted(OPS)
    if a.list:
        for n in names:
            print(f"{OPS[n][0]:12s} {n}")
        return 0
    if a.op:
        names = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in a.op)]
        if not names:
            p.error(f"no op matches {a.op}; see --list")
    if a.family:
        names = [n for n in names if OPS[n][0] == a.family]
    modes = [m for m in ("quantized", "int", "float64", "float16", "special", "special_grad")
             if getattr(a, m)]
    if len(modes) > 1:
        p.error(f"--{' and --'.join(modes)} are {len(modes)} modes: choose one")
    mode = modes[0] if modes else None
    if a.misuse:
        if mode:
            p.error(f"--misuse and --{mode} are two modes: choose one")
        return _misuse(names, a)
    if mode == "quantized":  # quantized tensors live on CPU devices only (megengine/core/
        # dtype.py): on a GPU, real or simulated, every case would crash on the conversion
        import megengine as mge

        previous = mge.get_default_device()
        mge.set_default_device("cpu0")
        try:
            return _fuzz(names, a, mode)
        finally:
            mge.set_default_device(previous)
    return _fuzz(names, a, mode)


def _fuzz(names, a, mode):
    """Print each op's outcomes and its discrepancies (up to ``--max-messages``) and the
    totals; 1 when any was found."""
    bad = 0
    for name in names:
        t0 = time.time()
        # a call stuck in C code cannot be interrupted from Python: the stacks (the case's
        # line among them) and an exit say where, where a silent run had stopped before the
        # op's line; a terminal shows the op running
        if sys.stdout.isatty():
            print(f"{OPS[name][0]:10s} {name:16s} ...", end="\r", flush=True)
        faulthandler.dump_traceback_later(a.hang_seconds, exit=True, file=sys.__stderr__)
        (outcomes, msgs), = fuzz([name], a.seeds, a.start, mode).values()
        faulthandler.cancel_dump_traceback_later()
        bad += len(msgs)
        print(f"{OPS[name][0]:10s} {name:16s} {dict(outcomes)} ({time.time() - t0:.1f}s)",
              flush=True)
        for m in msgs[:a.max_messages]:
            print("    " + m.replace("\n", "\n      "))
    from megengine.device import canonical_device

    print(f"{len(names)} ops, {a.seeds} seeds each, {bad} discrepancies "
          f"(device {canonical_device(None)})")
    return 1 if bad else 0


def _misuse(names, a):
    """Print the misuse mode's classes per op, the internal errors and hangs in full (up to
    ``--max-messages`` each) and the totals; 1 when any was internal or hung."""
    from .misuse import misuse

    total = collections.Counter()
    for name in names:
        t0 = time.time()
        (counts, found), = misuse([name], a.seeds, a.start).values()
        total.update(counts)
        print(f"{OPS[name][0]:10s} {name:16s} {dict(counts)} ({time.time() - t0:.1f}s)",
              flush=True)
        for cls in ("internal", "hang", "fuzzer crash") + (("accepted",) if a.accepted else ()):
            for m in found.get(cls, [])[:a.max_messages]:
                print(f"    {cls}: {m}")
    print(f"{len(names)} ops, {a.seeds} seeds each: {dict(total)}")
    return 1 if total["internal"] or total["hang"] or total["fuzzer crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
