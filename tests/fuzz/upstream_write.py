"""Random inference programs (the jit fuzzer's, `jit_programs.draw`) dumped in upstream's format
(``trace.dump(dump_format="FBS_V2")``, megengine/jit/upstream_mge_write/), read back here and,
with ``--upstream PYTHON`` (an interpreter with upstream MegEngine 1.13), run by upstream's
``GraphInference``::

    python -m tests.fuzz.upstream_write [--seeds N] [--start S] [--upstream PYTHON]
                                        [--keep DIR] [--dyn]

Each program is traced (symbolic, capture_as_const) at the jit fuzzer's input shape and dumped;
a refusal (`DumpError`, an operator or value the writer does not write) is counted by what it
names. A written file must give eager's outputs (to 1e-4 of the larger of 1 and an output's
largest magnitude) when this fork loads it, and when upstream runs it. Upstream 1.13's
runtime computes some files wrong when it keeps only their outputs, and right when it keeps
every value they compute (each var an output of the run): what goes wrong is its plan of the
run's memory, not the file (measured on its own dumps alike: a slice of an inner axis,
``h[:, :2]``, combined with a broadcast vector gives a wrong second sample). The upstream side
runs a file that fails again keeping every value, and such a file (``PLANS``) is counted
apart: it computes the program, so it is no finding. Upstream's runtime also computes wrong
values where an elementwise operator adds into a ``broadcast_to`` result or into zeros made
from another value (``acc = h * 0; acc = acc + h[i]``), for its own dumps of those programs
alike, kept values or not (measured: garbage of 1e28 or NaN; reported apart, by the lines in
`UPSTREAM_BROADCAST_WRITES`); what such a program computes there is no finding either.

Upstream 1.13's ``exp`` of a float32 value that overflows (above ~88.7) gives 2.4e38 in its
vectorised loop and inf in the loop's scalar remainder (measured eagerly too: 20 values of
``exp(368)`` gave 16 of 2.4e38, then 4 of inf), where this fork, numpy and torch give inf: a
program that overflows an ``exp`` where eager's outputs hold inf or NaN (program 3518:
``F.log(F.exp(h) + 1.0)`` of h near 368) is reported apart too (`_overflows`).

``--keep DIR`` keeps the written files and their inputs and eager outputs. ``--dyn`` draws
programs with the jit fuzzer's blocks of values whose shapes data decides (masks,
``cond_take``, ``nms``), which the file holds without a shape.

This file's upstream side runs it by path (``--serve DIR``): it imports only numpy at its top.
"""
import glob
import os
import subprocess
import sys

import numpy as np

TOL = 1e-4
# program lines after which upstream 1.13's runtime writes into a broadcast value, which a run
# keeping every value does not mend (see above)
UPSTREAM_BROADCAST_WRITES = ("acc = h * 0", "F.broadcast_to(h.sum(0, keepdims=True)",
                             "F.broadcast_to(h[:1]")


def _overflows(source, out_dir, seed):
    """Whether program ``seed`` (its ``source``) takes an ``exp`` and eager's outputs, kept in
    ``out_dir``, hold inf or NaN: an overflow, which upstream's exp computes otherwise (see
    above)."""
    if "F.exp(" not in source:
        return False
    ref = np.load(os.path.join(out_dir, f"w{seed}.npz"))
    return any(k.startswith("want") and ref[k].dtype.kind == "f" and
               not np.isfinite(ref[k]).all() for k in ref.files)


def _close(got, want, rewrites=False):
    """Each output within ``TOL`` of the larger of 1 and eager's largest finite magnitude (the
    engines sum in their own orders: program 1356's sums of 192 values near 97 part by 4e-4).
    ``rewrites``: the file holds the trace's arithmetic rewrites (``log(exp(h))`` is ``h``, as
    upstream's), so where eager's value overflowed (inf, then NaN) the file's is not compared
    (tests/fuzz/jit_check.py's rule; program 4153: ``F.log(F.exp(h))`` of h near 500)."""
    def scale(w):
        finite = np.abs(w[np.isfinite(w)]) if np.size(w) and w.dtype.kind in "fc" else []
        return max(1.0, float(np.max(finite))) if len(finite) else 1.0

    def agree(g, w):
        if np.size(g) != np.size(w):
            return False
        g = np.reshape(g, np.shape(w))
        if rewrites and w.dtype.kind in "fc":
            g, w = g[np.isfinite(w)], w[np.isfinite(w)]
        return np.allclose(g, w, rtol=0, atol=TOL * scale(w), equal_nan=True)

    return len(got) == len(want) and all(agree(g, w) for g, w in zip(got, want))


def write(seeds, out_dir, dyn=False):
    """Dump programs ``seeds`` to ``out_dir``; returns ({outcome: count}, {refused: count},
    [seeds whose file this fork reads to other values])."""
    import io
    import re
    import warnings

    import megengine as mge
    from megengine.jit import trace
    from megengine.jit.dump import DumpError, load

    from .jit_programs import TRACE_SHAPE, draw

    stats, refused, wrong = {}, {}, []
    for seed in seeds:
        p = draw(seed, train=False, dyn=dyn, writes=False)
        prog, m = p.build()
        x = np.random.default_rng(seed).uniform(-2, 2, TRACE_SHAPE).astype("float32")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = p.eager(prog, m, mge.tensor(x))
        except Exception:  # noqa: BLE001 (invalid at this shape)
            stats["invalid"] = stats.get("invalid", 0) + 1
            continue
        want = [np.asarray(w.numpy() if hasattr(w, "numpy") else w)
                for w in (out if isinstance(out, (tuple, list)) else [out])]
        f = trace(lambda x: prog(x, m), symbolic=True, capture_as_const=True)
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():  # (and the dump's note of sizes used as numbers)
                warnings.simplefilter("ignore")
                f(mge.tensor(x))
                f.dump(buf, arg_names=["x"], dump_format="FBS_V2")
        except DumpError as e:
            named = re.search(r"\((\w+)\) has no writer", str(e))
            key = named.group(1) if named else re.sub(r"'[^']*'", "'.'", str(e))[:90]
            refused[key] = refused.get(key, 0) + 1
            continue
        try:
            got = [v.numpy() for v in load(io.BytesIO(buf.getvalue())).run({"x": x}).values()]
        except Exception as e:  # noqa: BLE001 (this fork's reader refused what it wrote)
            print(f"program {seed}: read back: {type(e).__name__}: {e}")
            got = None
        if got is None or not _close(got, want, rewrites=True):
            wrong.append(seed)
        stats["written"] = stats.get("written", 0) + 1
        with open(os.path.join(out_dir, f"w{seed}.mge"), "wb") as fh:
            fh.write(buf.getvalue())
        np.savez(os.path.join(out_dir, f"w{seed}.npz"), x=x,
                 **{f"want{i}": w for i, w in enumerate(want)})
    return stats, refused, wrong


def serve(out_dir):
    """Upstream's side: run each written file of ``out_dir``; prints the seeds it computes
    other values for (or fails to run), one per line: ``FAILS seed``, or ``PLANS seed`` where
    the same file gives eager's values once upstream keeps every value it computes (each var
    an output of the run): the file computes the program, and upstream's memory plan of the
    run that keeps its outputs only is what goes wrong."""
    from megengine.utils.comp_graph_tools import GraphInference
    from megengine.utils.network import Network

    for path in sorted(glob.glob(os.path.join(out_dir, "w*.mge"))):
        ref = np.load(path[:-4] + ".npz")
        want = [ref[f"want{i}"] for i in range(sum(k.startswith("want") for k in ref))]
        feed = {"x": ref["x"]}
        try:
            got = [np.asarray(v) for v in GraphInference(path).run(inp_dict=feed).values()]
            ok = _close(got, want)
        except Exception:  # noqa: BLE001 (an assertion of upstream's runtime)
            ok = False
        if ok:
            continue
        try:
            net = Network.load(path)
            names = [v.name for v in net.output_vars]
            every = GraphInference(path, outputs=[v.name for v in net.all_vars]).run(
                inp_dict=feed)
            kept = _close([np.asarray(every[n]) for n in names], want)
        except Exception:  # noqa: BLE001
            kept = False
        print("PLANS" if kept else "FAILS", os.path.basename(path)[1:-4], flush=True)


def main(argv=None):
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--upstream", metavar="PYTHON")
    parser.add_argument("--keep", metavar="DIR")
    parser.add_argument("--dyn", action="store_true",
                        help="programs with values whose shapes data decides too (masks, "
                             "cond_take, nms: the jit fuzzer's `jit_dyn` blocks)")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    from .jit_programs import draw

    out_dir = args.keep or tempfile.mkdtemp(prefix="upstream_write_")
    os.makedirs(out_dir, exist_ok=True)
    seeds = range(args.start, args.start + args.seeds)
    stats, refused, wrong = write(seeds, out_dir, args.dyn)
    print(f"programs {args.start}-{seeds[-1]}: {stats}")
    print("refused:", sorted(refused.items(), key=lambda kv: -kv[1]))
    print("read back here to other values:", wrong or "none")
    failures = list(wrong)
    if args.upstream:
        env = dict(os.environ, PYTHONPATH="")
        out = subprocess.run([args.upstream, os.path.abspath(__file__), "--serve", out_dir],
                             capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        lines = [line.split() for line in out.stdout.splitlines()]
        planned = [int(w[1]) for w in lines if w[:1] == ["PLANS"]]
        failed = [int(w[1]) for w in lines if w[:1] == ["FAILS"]]
        theirs = [s for s in failed if any(
            pat in draw(s, train=False, dyn=args.dyn, writes=False).source
            for pat in UPSTREAM_BROADCAST_WRITES)]
        overflows = [s for s in failed if s not in theirs and _overflows(
            draw(s, train=False, dyn=args.dyn, writes=False).source, out_dir, s)]
        bad = [s for s in failed if s not in theirs and s not in overflows]
        print(f"upstream ran {stats.get('written', 0) - len(failed) - len(planned)} of "
              f"{stats.get('written', 0)} to eager's values; {len(planned)} more when it keeps "
              f"every value (its memory plan, see above); writes into a broadcast value "
              f"(upstream's runtime): {len(theirs)}; an exp that overflows (upstream's "
              f"saturates): {len(overflows)}; other: {bad or 'none'}")
        if out.returncode:
            print(out.stderr[-2000:])
            failures.append("upstream's side")
        failures += bad
    return 1 if failures else 0


if __name__ == "__main__":
    if "--serve" in sys.argv:  # (upstream's interpreter: by path, no package around it)
        serve(sys.argv[sys.argv.index("--serve") + 1])
    else:
        sys.exit(main())
