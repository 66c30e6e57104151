"""Sequences of in-place writes inside a traced function, in every trace mode, against the same
function run eagerly::

    python -m tests.fuzz.trace_writes [--length 2] [--random N] [--start S] [--upstream PYTHON]

A function of ``x`` (an argument) makes ``y = x * 0.5`` and then runs a sequence of steps drawn
from `KINDS`: writes into a value of the call (``y``), a Parameter from outside (``w``), a plain
Tensor from outside (``b``, a buffer) and the argument (``x``), by ``set_value`` of a computed
value, an array or another tensor, ``+=`` / ``*=``, item and slice assignment, also through a
``detach()``; and reads that rebind ``y`` to those tensors. It returns ``y * (w + 1) + b``.
Each sequence is traced in each of `MODES` and called three times with new arguments; each
call's output and the states of ``w``, ``b`` and ``x`` afterwards must equal those of an eager
copy of the function ("wrong" otherwise), unless the call raises ("refused"). Every sequence of
``--length`` steps is run, then ``--random`` sequences of three steps drawn from ``--start``.

This fork refuses only what `ALLOWED` names (capture_as_const's check of a captured tensor the
function writes in place, as upstream). Any other refusal, and any wrong value, is a finding
(exit status 1). With ``--upstream``, upstream MegEngine 1.13's interpreter runs this file by
path on the same sequences (``--serve``), and a refusal here that upstream does not share is a
finding too; the refusals upstream alone makes are counted (its ``without_host`` refuses most
functions that write a tensor from outside the call).

Found with it (all fixed): a set_value() into a value of the call before another set_value()
(checked calls refused every call after the first: `megengine.jit.check`); an in-place write
then a set_value() into a tensor from outside the call (a without_host replay's state missed the
set_value, silently: `megengine.jit.replay`); ``x += 1; y.set_value(x); x += 1`` of an argument
(y followed x's later value in without_host replays: `megengine.jit.record`); ``b += x;
y.set_value(y + x); b.set_value(y)`` of an external (refused by checked calls).
"""
import itertools
import json
import random
import subprocess
import sys

import numpy as np


def _set(t, v):
    t.set_value(v)


def _rebind(name, f):
    return lambda s: s.__setitem__(name, f(s))


def _const():
    return np.array([0.5, -1.0, 2.0], np.float32)


KINDS = {
    # into y, a value of this call (dataflow for the trace)
    "y_set": lambda s: _set(s["y"], s["y"] + s["x"]),
    "y_iadd": _rebind("y", lambda s: s["y"].__iadd__(s["x"])),
    "y_item": lambda s: s["y"].__setitem__(1, 7.0),
    "y_slice": lambda s: s["y"].__setitem__(slice(0, 2), s["x"][1:] * 2),
    "y_set_array": lambda s: _set(s["y"], _const()),
    "y_set_arg": lambda s: _set(s["y"], s["x"]),
    # into w, a Parameter from outside (events)
    "w_set_array": lambda s: _set(s["w"], _const()),
    "w_set": lambda s: _set(s["w"], s["x"] * 3),
    "w_set_self": lambda s: _set(s["w"], s["w"] * 0.5 + 1),
    "w_set_detached": lambda s: _set(s["w"], s["w"].detach() * 0.5 + s["x"]),
    "w_item": lambda s: s["w"].__setitem__(0, 4.0),
    "w_slice": lambda s: s["w"].__setitem__(slice(1, None), s["x"][1:]),
    "w_iadd": lambda s: s["w"].__iadd__(1.0),
    # into b, a plain Tensor from outside
    "b_set": lambda s: _set(s["b"], s["w"] * 2),
    "b_set_array": lambda s: _set(s["b"], _const()),
    "b_iadd": lambda s: s["b"].__iadd__(s["x"]),
    "b_imul": lambda s: s["b"].__imul__(0.9),
    "b_item": lambda s: s["b"].__setitem__(0, 3.0),
    "b_slice_iadd": lambda s: s["b"].__setitem__(slice(0, 2), s["b"][0:2] + 1),
    "b_detached_iadd": lambda s: s["b"].detach().__iadd__(1.0),
    # into x, the argument
    "x_iadd": lambda s: s["x"].__iadd__(1.0),
    "x_set": lambda s: _set(s["x"], s["x"] * 2),
    "x_item": lambda s: s["x"].__setitem__(2, -5.0),
    # one tensor's value into another
    "y_imul": _rebind("y", lambda s: s["y"].__imul__(s["x"])),
    "y_set_b": lambda s: _set(s["y"], s["b"]),
    "y_set_w": lambda s: _set(s["y"], s["w"]),
    "b_set_x": lambda s: _set(s["b"], s["x"]),
    "b_set_y": lambda s: _set(s["b"], s["y"]),
    "w_set_y": lambda s: _set(s["w"], s["y"]),
    "w_set_b": lambda s: _set(s["w"], s["b"]),
    # reads
    "y_reads_w": _rebind("y", lambda s: s["y"] + s["w"]),
    "y_reads_w_detached": _rebind("y", lambda s: s["y"] + s["w"].detach()),
    "y_reads_b_detached": _rebind("y", lambda s: s["y"] + s["b"].detach()),
    "y_detached": _rebind("y", lambda s: s["y"].detach() * 1.5),
    "y_is_x_times_w": _rebind("y", lambda s: s["x"] * s["w"]),
    "y_from_b": _rebind("y", lambda s: s["b"] * 1),
    "y_is_b": _rebind("y", lambda s: s["b"]),
    "y_is_w": _rebind("y", lambda s: s["w"]),
}

MODES = [{"symbolic": False}, {"symbolic": True}, {"without_host": True},
         {"symbolic": False, "capture_as_const": True}]
INPUTS = ([1.0, -2.0, 3.0], [0.5, 4.0, -1.5], [7.0, 8.0, 9.0])
# refusals this fork makes by design, (mode, error type, start of message): capture_as_const
# checks that the tensors it captured kept their values, and a function that writes one in
# place changes it (upstream 1.13 refuses the same calls with the same words)
ALLOWED = {(json.dumps(MODES[3]), "TraceMismatchError",
            "trace error because tensors not equals")}


def _make(mge, seq):
    w = mge.Parameter(np.zeros(3, np.float32))
    b = mge.tensor(np.ones(3, np.float32))

    def f(x):
        s = {"x": x, "y": x * 0.5, "w": w, "b": b}
        for name in seq:
            KINDS[name](s)
        return s["y"] * (w + 1) + b

    return f, w, b


def run(seq, mode):
    """The outcome of ``seq`` traced in ``mode`` with the megengine importable here: "ok",
    "wrong: <what>" (an output or a state other than eager's), or the refusal's
    "<type>: <first line>"."""
    import megengine as mge
    from megengine.jit import trace

    (f, w, b), (eager, eager_w, eager_b) = _make(mge, seq), _make(mge, seq)
    try:
        g = trace(f, **mode)
        for k, v in enumerate(INPUTS):
            x, ex = mge.tensor(v), mge.tensor(v)
            pairs = [("output", g(x), eager(ex)), ("w", w, eager_w), ("b", b, eager_b),
                     ("x", x, ex)]
            for what, got, want in pairs:
                if not np.allclose(got.numpy(), want.numpy()):
                    return f"wrong: {what} after call {k + 1}"
    except Exception as e:  # noqa: BLE001 (the refusal is the outcome)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return "ok"


def sequences(length=2, drawn=0, start=0):
    """Every sequence of ``length`` kinds, then ``drawn`` random ones of three kinds (a
    `random.Random` of ``start``)."""
    names = sorted(KINDS)
    seqs = [list(p) for p in itertools.product(names, repeat=length)]
    rng = random.Random(start)
    return seqs + [[rng.choice(names) for _ in range(3)] for _ in range(drawn)]


def outcomes(seqs):
    """{(sequence, mode): outcome} of every sequence in every mode, the modes as JSON."""
    return {(tuple(seq), json.dumps(mode)): run(seq, mode) for seq in seqs for mode in MODES}


def findings(ours, theirs=None):
    """What is wrong in this fork's ``ours`` (`outcomes`): {(sequence, mode): outcome} of the
    wrong values, and of the refusals that `ALLOWED` does not name (where ``theirs``,
    upstream's outcomes of the same runs, is given: that upstream does not share)."""
    out = {}
    for key, got in ours.items():
        if got == "ok":
            continue
        if got.startswith("wrong"):
            out[key] = got
            continue
        kind, _, message = got.partition(": ")
        if (key[1], kind, message) in ALLOWED:
            continue
        if theirs is None or theirs.get(key) == "ok":
            out[key] = got
    return out


def _upstream(python, seqs):
    """Upstream's outcomes of ``seqs`` (this file run by path in its interpreter)."""
    import os
    import tempfile

    out = subprocess.run([python, os.path.abspath(__file__), "--serve"], input=json.dumps(seqs),
                         capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         env=dict(os.environ, PYTHONPATH=""))
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"upstream's run failed: {out.stderr[-2000:]}")
    return {(tuple(seq), mode): got for seq, mode, got in json.loads(lines[-1])}


def main(argv=None):
    import argparse
    import collections
    import time

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=2)
    parser.add_argument("--random", type=int, default=0, metavar="N")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--upstream", metavar="PYTHON",
                        help="an interpreter with upstream MegEngine 1.13: its refusals too")
    args = parser.parse_args(argv)
    t0 = time.time()
    seqs = sequences(args.length, args.random, args.start)
    ours = outcomes(seqs)
    theirs = _upstream(args.upstream, seqs) if args.upstream else None
    found = findings(ours, theirs)
    counts = collections.Counter("ok" if v == "ok" else "wrong" if v.startswith("wrong")
                                 else "refused" for v in ours.values())
    print(f"{len(seqs)} sequences x {len(MODES)} modes in {time.time() - t0:.0f}s: "
          f"{dict(counts)}; findings: {len(found)}")
    for (seq, mode), got in sorted(found.items())[:40]:
        print(f"    {' ; '.join(seq)}  {mode}: {got}")
    if theirs is not None:
        refused = collections.Counter(
            (mode, got[:70]) for (seq, mode), got in theirs.items()
            if got != "ok" and ours.get((seq, mode)) == "ok")
        print("upstream alone fails (refuses, or gives other values than its eager code):")
        for (mode, got), n in refused.most_common(8):
            print(f"    {n} {mode}: {got}")
    return 1 if found else 0


if __name__ == "__main__":
    if "--serve" in sys.argv:  # (upstream's interpreter: by path, no package around it)
        print(json.dumps([[seq, json.dumps(mode), run(seq, mode)]
                          for seq in json.loads(sys.stdin.read()) for mode in MODES]))
    else:
        sys.exit(main())
