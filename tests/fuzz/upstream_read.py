"""Random inference programs (the jit fuzzer's, `jit_programs.draw`) traced and dumped by upstream
MegEngine 1.13 itself, read here (megengine/jit/upstream_mge.py)::

    python -m tests.fuzz.upstream_read --upstream PYTHON [--seeds N] [--start S] [--dyn]
                                       [--options plain|fbs|fused|nchw44|nchw88] [--keep DIR]

Each program is run eagerly here (the oracle, at the jit fuzzer's input shape) and handed to
upstream's interpreter as its source, its layers' source and its parameters by name. Upstream
builds the same module tree, traces the program (symbolic, capture_as_const), dumps it with
the options named (``plain``: trace.dump's defaults; ``fbs``: its older format,
``dump_format="FBS"``; ``fused``: ``enable_fuse_conv_bias_nonlinearity``; ``nchw44`` /
``nchw88``: that layout too) and runs its file (``GraphInference``). This fork then loads
upstream's file and must give eager's values (tests.fuzz.upstream_write's tolerance and its
rule for the trace's rewrites of what overflowed), or, where upstream's file computes other
values than eager's (its trace or optimizer: see below), the values upstream's runtime computes
from that file keeping every value (its memory plan of a run that keeps only the outputs goes
wrong on some files, as tests.fuzz.upstream_write measures). A refusal by name is reported,
grouped by what it names; other values, or any other error, are findings (exit status 1).
Programs upstream cannot trace or dump, or whose file its runtime cannot run, are counted
apart. Upstream's eager values of each program (where its eager code runs) are compared with
this fork's too: a difference is a finding, but where `_known_difference` names a reason (an
error of upstream's, a documented difference).

This file's upstream side runs it by path (``--serve DIR``, its options in the environment): it
imports only numpy at its top.
"""
import glob
import json
import os
import sys

import numpy as np

OPTIONS = {"plain": {}, "fbs": {"dump_format": "FBS"},
           "fused": {"enable_fuse_conv_bias_nonlinearity": True},
           "nchw44": {"enable_nchw44": True, "enable_fuse_conv_bias_nonlinearity": True},
           "nchw88": {"enable_nchw88": True, "enable_fuse_conv_bias_nonlinearity": True}}
_ENV = "UPSTREAM_READ_OPTIONS"  # (how --options reaches upstream's side)


def hand_over(seeds, out_dir, dyn=False):
    """This fork's side, first: each program of ``seeds`` that runs eagerly at the traced shape,
    as p<seed>.json (its source and its layers' source) and p<seed>.npz (the input ``x``, the
    parameters and buffers by name, eager's outputs ``want<i>``). Returns {outcome: count}."""
    from .upstream_write import drawn

    stats = {}
    for seed in seeds:
        p, _, m, x, want = drawn(seed, dyn)
        if want is None:
            stats["invalid"] = stats.get("invalid", 0) + 1
            continue
        state = {f"state:{k}": v.numpy() for k, v in
                 [*m.named_parameters(), *m.named_buffers()]}
        with open(os.path.join(out_dir, f"p{seed}.json"), "w") as fh:
            json.dump({"source": p.source, "layers": p.layers}, fh)
        np.savez(os.path.join(out_dir, f"p{seed}.npz"), x=x, **state,
                 **{f"want{i}": w for i, w in enumerate(want)})
        stats["handed over"] = stats.get("handed over", 0) + 1
    return stats


def serve(out_dir, first=0, last=None):
    """Upstream's side: trace, dump (the options in the environment) and run each handed-over
    program of ``out_dir`` (of seeds ``first`` to ``last``): u<seed>.mge, and u<seed>.npz with
    its outputs of a run keeping every value (``every<i>``) and the output shapes its Network
    declares (``shape<i>``). Prints ``START seed`` before each program, then ``DUMPED seed``,
    ``UNDUMPED seed why`` (tracing or dumping failed) or ``UNRUN seed`` (its runtime failed on
    the file), and ``DONE`` at the end (tests.fuzz.upstream_write's protocol: a crash restarts
    past it).
    Upstream's eager values of the program, where its eager code runs, go to e<seed>.npz
    (``eager<i>``)."""
    import math

    import megengine as mge
    import megengine.functional as F
    import megengine.module as M
    from megengine.jit import trace

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # (run by path: no package)
    from upstream_write import _every_value

    options = OPTIONS[os.environ.get(_ENV, "plain")]
    for path in sorted(glob.glob(os.path.join(out_dir, "p*.json"))):
        seed = os.path.basename(path)[1:-5]
        if int(seed) < first or last is not None and int(seed) > last:
            continue
        print("START", seed, flush=True)
        with open(path) as fh:
            spec = json.load(fh)
        ref = np.load(path[:-5] + ".npz")
        out = os.path.join(out_dir, f"u{seed}.mge")
        try:
            ns = {"math": math, "mge": mge, "M": M, "Tensor": mge.Tensor,
                  **_spellings(mge, F, np)}
            exec(spec["source"], ns)  # noqa: S102 (the fuzzer's own generated test code)
            m = _layers(M)
            for name, ctor in spec["layers"]:
                setattr(m, name, eval(ctor, ns))  # noqa: S307
            for name, v in [*m.named_parameters(), *m.named_buffers()]:
                v._reset(mge.tensor(ref[f"state:{name}"]))
            m.eval()
            prog = ns["prog"]
            try:  # (upstream's eager values: the fork's eager ones are compared with them)
                eager = prog(mge.tensor(ref["x"]), m)
                eager = eager if isinstance(eager, (tuple, list)) else [eager]
                np.savez(os.path.join(out_dir, f"e{seed}.npz"),
                         **{f"eager{i}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                            for i, v in enumerate(eager)})
            except Exception:  # noqa: BLE001 (upstream's eager code fails: not compared)
                pass
            f = trace(lambda x: prog(x, m), symbolic=True, capture_as_const=True)
            f(mge.tensor(ref["x"]))
            f.dump(out, arg_names=["x"], **options)
        except Exception as e:  # noqa: BLE001 (upstream's trace or dump fails on it)
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
            print("UNDUMPED", seed, why, flush=True)
            continue
        try:
            every, declared = _every_value(out, ref["x"])
        except Exception:  # noqa: BLE001
            print("UNRUN", seed, flush=True)
            continue
        np.savez(out[:-4] + ".npz", **{f"every{i}": v for i, v in enumerate(every)},
                 **{f"shape{i}": v for i, v in enumerate(declared)})
        print("DUMPED", seed, flush=True)
    print("DONE", flush=True)


def _spellings(mge, F, np):
    """``F`` and ``np`` for upstream's run of a program: upstream 1.13's own spellings of what
    the jit fuzzer's programs call and its API refuses (so that its trace and file cover those
    programs too; without them it gave up on about a third of them): ``F.layer_norm`` without
    ``affine`` (upstream requires it; this fork's default, with no weight, normalizes only;
    over a size a symbolic trace holds as a Tensor, written out: upstream's op wants ints),
    ``F.sort`` and ``F.topk`` of more than two axes (upstream sorts rows of a matrix: the
    leading axes are merged and split again; ``topk`` gets this fork's default order,
    ascending, named), ``F.roll`` by a size a symbolic trace holds as a 0-d Tensor (upstream
    takes its length; in a list it takes it), ``np.prod`` of a shape, which under a symbolic
    trace is a Tensor (numpy's call hands it ``out=``), ``F.non_zero`` and one-argument
    ``F.where`` (later upstreams' names, which 1.13 lacks: the flat indices of ``F.cond_take``
    unravelled)."""
    import types

    def rows(inp, fn):  # fn on the rows of inp's last axis; its outputs' leading axes restored
        if inp.ndim <= 2:
            return fn(inp)
        shape = inp.shape  # (sizes one by one: upstream keeps the rank of a shape so built)
        lead = [shape[i] for i in range(inp.ndim - 1)]
        return tuple(o.reshape(*lead, *o.shape[1:]) for o in fn(inp.reshape(-1, shape[-1])))

    def layer_norm(inp, normalized_shape, affine=False, weight=None, bias=None, eps=1e-5):
        if not (isinstance(normalized_shape, mge.Tensor) and normalized_shape.ndim == 0):
            return F.layer_norm(inp, normalized_shape, affine, weight, bias, eps)
        # a size of a symbolic trace's shape (``h.shape[-1]``): upstream's op wants ints
        mean = inp.mean(-1, keepdims=True)
        out = (inp - mean) / F.sqrt(((inp - mean) ** 2).mean(-1, keepdims=True) + eps)
        return out * weight + bias if affine else out

    def sort(inp, descending=False):
        return rows(inp, lambda v: F.sort(v, descending))

    def topk(inp, k, descending=False, kth_only=False, no_sort=False):
        return rows(inp, lambda v: F.topk(v, k, descending=descending, kth_only=kth_only,
                                          no_sort=no_sort))

    def roll(inp, shift, axis=None):
        if isinstance(shift, mge.Tensor) and shift.ndim == 0 and axis is not None:
            shift, axis = [shift], [axis] if isinstance(axis, int) else axis
        return F.roll(inp, shift, axis)

    def non_zero(condition, as_tuple=False):  # (upstream 1.13 has none: cond_take's indices)
        rest, idx = F.cond_take(condition != 0, condition)[1], []
        for d in reversed(range(condition.ndim)):  # flat indices unravelled, last axis first
            idx.insert(0, rest % condition.shape[d])
            rest = F.floor_div(rest, condition.shape[d])
        return tuple(idx) if as_tuple else F.stack(idx, axis=1)

    def where(mask, x=None, y=None):
        return non_zero(mask, as_tuple=True) if x is None and y is None else F.where(mask, x, y)

    def prod(a, *args, **kwargs):
        return a.prod() if isinstance(a, mge.Tensor) else np.prod(a, *args, **kwargs)

    public = {k: v for k, v in vars(F).items() if not k.startswith("__")}
    return {"F": types.SimpleNamespace(**{**public, "layer_norm": layer_norm, "sort": sort,
                                          "topk": topk, "roll": roll, "non_zero": non_zero,
                                          "where": where}),
            "np": types.SimpleNamespace(**{**vars(np), "prod": prod})}


def _layers(M):
    """An empty module to hold a program's layers (upstream's Module is abstract)."""
    class Layers(M.Module):
        def forward(self, x):
            return x

    return Layers()


def _known_difference(source, theirs=(), ours=()):
    """Why upstream's eager values ``theirs`` of a program may be other than this fork's,
    ``ours``, by design or by upstream's error, or None: upstream's eager softmax gives NaN
    where this fork's values are numbers (1.13's eager ``F.softmax`` does not shift a row by
    its maximum: a row whose values are all below about -88 is 0 / 0; measured, and programs
    11827, 12637, whose traced graphs were right; its SoftmaxForward in a file is not:
    `upstream_write._ill_conditioned`), the program slices an axis other than the first
    (upstream 1.13 computes an elementwise operator of such a slice and a broadcast value wrong,
    eagerly too: program 9122's ``h[:, :, :4] * F.linspace(0.5, 1.5, 8)``, 160 of 192 values
    off, right on a contiguous copy of the slice; measured), or adds into a broadcast value
    (upstream's runtime, eagerly too: `upstream_write.UPSTREAM_BROADCAST_WRITES`; program
    9985's second row twice what it is). (``F.topk``'s default order, 1.13's the largest, this
    fork's the smallest as up to 1.12, is named for upstream by `_spellings`.)"""
    import re

    from .upstream_write import UPSTREAM_BROADCAST_WRITES

    if "F.softmax(" in source and any(
            np.shape(t) == np.shape(o) and (np.isnan(t) & ~np.isnan(o)).any()
            for t, o in zip(theirs, ours)):
        return "NaN of upstream's eager softmax (upstream's)"
    if re.search(r"\[:, [^\]]*:", source):
        return "a slice of an inner axis (upstream's)"
    if any(pat in source for pat in UPSTREAM_BROADCAST_WRITES):
        return "a write into a broadcast value (upstream's)"
    return None


def _as_declared(v, shape):
    """Upstream's value ``v`` of an output its file declares of shape ``shape``: after a layout
    pass (nchw44, nchw88) its runtime can hand back the output's var before the pass's last
    relayout, (N, C/k, H, W, k), or before its cut of the channels it padded to a multiple of
    k (programs 9381 and 9167: shapes (2, 1, 4, 4, 4) and (2, 4, 4, 4) for a declared
    (2, 4, 4, 4) and (2, 2, 4, 4)); brought to the declared shape here."""
    shape = tuple(int(d) for d in shape)
    if v.shape == shape or shape == (-1,):
        return v
    if v.ndim == 5 and len(shape) == 4:
        v = v.transpose(0, 1, 4, 2, 3).reshape(v.shape[0], -1, v.shape[2], v.shape[3])
    if v.ndim == len(shape) and all(a >= b for a, b in zip(v.shape, shape)):
        v = v[tuple(slice(0, b) for b in shape)]
    return v


def judged(out_dir, name, x, want, rewrites=False):
    """How this fork reads upstream's file <name>.mge of ``out_dir`` on input ``x``: "right"
    (eager's values ``want``; ``rewrites``: `upstream_write._close`'s rule for the trace's
    rewrites), "theirs" (the values upstream's runtime computes from that file keeping every
    value, <name>.npz's ``every<i>`` at the shapes ``shape<i>`` it declares: `_as_declared`) or
    "wrong". An error loading or running the file is raised."""
    from megengine.jit.dump import load

    from .upstream_write import _close

    theirs = np.load(os.path.join(out_dir, f"{name}.npz"))
    every = [_as_declared(theirs[f"every{i}"], theirs[f"shape{i}"])
             for i in range(sum(k.startswith("every") for k in theirs))]
    got = [v.numpy() for v in load(os.path.join(out_dir, f"{name}.mge")).run({"x": x}).values()]
    return ("right" if _close(got, want, rewrites=rewrites) else
            "theirs" if _close(got, every) else "wrong")


def read(out_dir, lines):
    """This fork's side, last: {outcome: seeds} of loading and running each file upstream
    dumped: "right" (eager's values), "theirs" (upstream's values of its own file, kept every
    value, where those are not eager's), "wrong", "refused" and "failed" (dicts: seed -> the
    error; "refused": an `UpstreamFormatError` naming what this reader does not provide), and
    upstream's "undumped" (a dict: seed -> its error) and "unrun"; and, of every program whose
    eager code upstream ran ("eager compared": how many), those where upstream's eager values
    are not this fork's ("eager differs"; "eager differs, known": a dict, seed -> the reason
    `_known_difference` gives)."""
    from megengine.jit.upstream_mge import UpstreamFormatError

    from .upstream_write import _close, _why

    out = {"right": [], "theirs": [], "wrong": [], "refused": {}, "failed": {},
           "undumped": {}, "unrun": [], "eager compared": 0, "eager differs": [],
           "eager differs, known": {}}
    for w in lines:
        if w[:1] not in (["DUMPED"], ["UNDUMPED"], ["UNRUN"]):
            continue
        seed = int(w[1])
        ref = np.load(os.path.join(out_dir, f"p{seed}.npz"))
        want = [ref[f"want{i}"] for i in range(sum(k.startswith("want") for k in ref))]
        path = os.path.join(out_dir, f"e{seed}.npz")
        if os.path.exists(path):
            ueager = np.load(path)
            ueager = [ueager[f"eager{i}"] for i in range(len(ueager.files))]
            out["eager compared"] += 1
            if not _close(ueager, want):
                with open(os.path.join(out_dir, f"p{seed}.json")) as fh:
                    known = _known_difference(json.load(fh)["source"], ueager, want)
                if known:
                    out["eager differs, known"][seed] = known
                else:
                    out["eager differs"].append(seed)
        if w[0] == "UNDUMPED":
            out["undumped"][seed] = " ".join(w[2:])
            continue
        if w[0] == "UNRUN":
            out["unrun"].append(seed)
            continue
        try:
            out[judged(out_dir, f"u{seed}", ref["x"], want, rewrites=True)].append(seed)
        except UpstreamFormatError as e:
            out["refused"][seed] = _why(e)
        except Exception as e:  # noqa: BLE001
            out["failed"][seed] = _why(e)
    return out


def main(argv=None):
    import argparse
    import tempfile

    from .upstream_write import _raises, _serve

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", metavar="PYTHON", required=True,
                        help="an interpreter with upstream MegEngine 1.13")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--dyn", action="store_true",
                        help="programs with values whose shapes data decides too")
    parser.add_argument("--options", choices=sorted(OPTIONS), default="plain",
                        help="how upstream dumps (default: plain, trace.dump's defaults)")
    parser.add_argument("--keep", metavar="DIR")
    args = parser.parse_args(argv)
    out_dir = args.keep or tempfile.mkdtemp(prefix="upstream_read_")
    os.makedirs(out_dir, exist_ok=True)
    seeds = range(args.start, args.start + args.seeds)
    stats = hand_over(seeds, out_dir, args.dyn)
    lines, crashed, error = _serve(args.upstream, out_dir, script=os.path.abspath(__file__),
                                   env={_ENV: args.options})
    r = read(out_dir, lines)
    print(f"programs {args.start}-{seeds[-1]} ({args.options}): {stats}; upstream could not "
          f"trace or dump {len(r['undumped'])}, run {len(r['unrun'])}, crashed on "
          f"{sorted(crashed) or 'none'}")
    print(f"read here: {len(r['right'])} right, {len(r['theirs'])} as upstream's file computes "
          f"them (not eager's), {len(r['wrong'])} wrong: {r['wrong'] or 'none'}; refused "
          f"{len(r['refused'])}, failed {len(r['failed'])}")
    print("\n".join(_raises({**r["refused"], **r["failed"]})) or "    (none refused)")
    print(f"eager, upstream's against this fork's: {r['eager compared']} compared, "
          f"{len(r['eager differs'])} differ: {r['eager differs'] or 'none'}; set apart:")
    print("\n".join(_raises(r["eager differs, known"])) or "    (none)")
    print("upstream's trace or dump failed:")
    print("\n".join(_raises(r["undumped"])) or "    (none)")
    if error is not None:
        print(error)
    return 1 if r["wrong"] or r["failed"] or r["eager differs"] or error is not None else 0


if __name__ == "__main__":
    if "--serve" in sys.argv:  # (upstream's interpreter: by path, no package around it)
        at = sys.argv.index("--serve")
        serve(sys.argv[at + 1], *map(int, sys.argv[at + 2:at + 4]))
    else:
        sys.exit(main())
