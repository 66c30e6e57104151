"""Random inference programs (the jit fuzzer's, `jit_programs.draw`) dumped in upstream's format
(``trace.dump(dump_format="FBS_V2")``, megengine/jit/upstream_mge_write/), read back here and,
with ``--upstream PYTHON`` (an interpreter with upstream MegEngine 1.13), run by upstream's
``GraphInference``::

    python -m tests.fuzz.upstream_write [--seeds N] [--start S] [--upstream PYTHON]
                                        [--keep DIR] [--dyn] [--reoptimize HOW]

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
``F.log(F.exp(h) + 1.0)`` of h near 368) is reported apart too (`_overflows`). So is a
program with a layer norm whose values upstream computes within 10x the tolerance
(`_normalises`): upstream's LayerNorm kernel rounds more where a row's values lie close
together (measured on its eager ``layer_norm`` of the same input). So is a program whose
eager run takes a softmax of a row whose largest value is below -87 (`_low_softmax`, program
9586): upstream 1.13's softmax is wrong there, eagerly too (measured: ``F.softmax`` of
``[[-88, -87]]`` gives ``[0, 1]``, of ``[[-89, -88]]`` NaN, where it should give ``[0.269,
0.731]``). So is a program whose eager run normalizes a row of rounding residues, a norm
below 1e-5 but not 0 (`NORMALIZE_FLOOR`, program 25095: ``h - mean(h)`` of a row of equal
values is 3e-8 here, from numpy's sum, where upstream's sum gives 0 and torch's -1e-8):
``F.normalize`` brings such a row to unit length, which any other rounding changes wholly.

A file holds the trace's arithmetic rewrites (`megengine.jit.arith_opt`, upstream's level-1
rules: ``log(1 + x)`` is ``log1p(x)``, ...), which round otherwise than eager's code; a later
step can amplify that past the tolerance (program 22132: ``F.sign(F.log(1 + h * h))`` of
``h`` = 2e-5 is 0 eagerly, where ``1 + h * h`` rounds to 1, and 1 from ``log1p``, as upstream
computes its own dump of it). Where the file's values are not eager's but the trace's own
(its recording call's, which computes the rewrites), on either side, the program is counted
apart ("the trace's rewrites"): the file computes what the trace does.

Each written file also runs at a second input shape, the batch one larger (axis 0 of the
programs' one input, ``x``: (3, C, H, W) of a file traced at (2, C, H, W); a file is meant to
follow the batch wherever upstream's own dumps do, docs/api/jit.rst's "Shapes"), against
eager's values of the same program on a new input of that shape. On each side (read back
here, run by upstream) the file must give eager's values there (the same tolerance and the
same cases set apart as at the traced shape) or raise; other values or other shapes are a
finding, printed with the program. The second shape is skipped where eager fails there, and
where the file holds a value of the trace by design: a size the traced code used as a Python
value (``int(n)``, ``range(n)``, an index; the dump warns of these) or in a branch's
comparison (``if g.shape[1] > 1`` of a size that data decides: decided as traced, as in
upstream's own dumps, not warned of) that has another value there (this fork's own format
checks such sizes: its ``ShapeGuardError`` at the second shape says so, `_guarded`), and
``nms`` without ``max_output`` (the dump warns: the traced count is kept). The outcomes there
are counted apart ("batch+1: ... right, ... raised, ... skipped, ... wrong"), raises grouped
by their error: a raise is no finding, but where upstream's own dump of the program follows
the batch, the written file should too (worth a look).

``--keep DIR`` keeps the written files and their inputs and eager outputs (``bx``, ``bwant*``:
those of the second shape, where it is not skipped). ``--dyn`` draws programs with the jit
fuzzer's blocks of values whose shapes data decides (masks, ``cond_take``, ``nms``), which
the file holds without a shape.

Upstream 1.13's runtime also segfaults on some sequences of files that it runs right one by
one (--dyn programs 5101-5103: the three in one process crash it): its side is restarted past
the file it crashed on, which is then run alone; only a crash on a file alone is a finding.

``--reoptimize HOW`` (with ``--upstream``) also has upstream optimize each written file as its
users edit deployed models, ``Network.load(f).dump(g)`` (``plain``: optimize_for_inference's
defaults; ``enable_nchw44`` / ``enable_nchw88``: that layout too, with conv-bias fusion), and
reads upstream's file back here: it must give eager's values, or, where upstream's optimizer
made a file computing other values, the values upstream's runtime computes from that file
keeping every value (reported apart). A file upstream's optimizer or runtime fails on is
counted apart; a refusal here is a finding.

This file's upstream side runs it by path (``--serve DIR``): it imports only numpy at its top.
"""
import contextlib
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
# the dump's warnings where the file holds a value of the trace as a constant by design: sizes
# the traced code used as Python values (`SIZES_WARNING`; the second shape is skipped where
# such a size differs there), and a count kept at its traced value (skipped always)
SIZES_WARNING = "used sizes of its inputs as Python values"
COUNT_WARNINGS = ("(the traced number)",)  # (nms without max_output)


def _overflows(source, out_dir, seed, want="want"):
    """Whether program ``seed`` (its ``source``) takes an ``exp`` (or ``expm1``: program 20315)
    and eager's outputs, kept in ``out_dir`` (``want``: those at the traced shape; ``"bwant"``:
    at the second), hold inf or NaN: an overflow, which upstream's exp computes otherwise (see
    above)."""
    if "F.exp(" not in source and "F.expm1(" not in source:
        return False
    ref = np.load(os.path.join(out_dir, f"w{seed}.npz"))
    return any(k.startswith(want) and ref[k].dtype.kind == "f" and
               not np.isfinite(ref[k]).all() for k in ref.files)


SOFTMAX_FLOOR = -87.0  # a row's largest value below it: upstream 1.13's softmax is wrong
NORMALIZE_FLOOR = 1e-5  # a row's norm below it, not 0: normalize amplifies rounding residues


@contextlib.contextmanager
def _ill_conditioned():
    """Watches ``F.softmax`` and ``F.normalize`` while the block runs (an eager run of a
    program): yields {"softmax_low": [...], "normalize_tiny": [...]}, whose lists get, for
    each call, whether a softmax row's largest value is below `SOFTMAX_FLOOR` and whether a
    normalized row's norm is below `NORMALIZE_FLOOR` but not 0 (see the module's docstring;
    the flags are kept in the program's ``.npz``)."""
    import megengine.functional as F
    from megengine.functional.nn import _get_softmax_axis

    softmax, normalize, flags = F.softmax, F.normalize, {"softmax_low": [], "normalize_tiny": []}

    def values(inp):
        return np.atleast_1d(np.asarray(inp.numpy() if hasattr(inp, "numpy") else inp,
                                        "float32"))

    def watch_softmax(inp, axis=None):
        a = values(inp)
        if a.size:
            ax = _get_softmax_axis(a.ndim) if axis is None else axis
            flags["softmax_low"].append(bool((a.max(axis=ax) < SOFTMAX_FLOOR).any()))
        return softmax(inp, axis)

    def watch_normalize(inp, ord=None, axis=None, eps=1e-12):
        a = values(inp).astype("float64")
        if a.size:
            norm = (np.sum(np.abs(a) ** (2 if ord is None else ord), axis=axis)
                    ** (1 / (2 if ord is None else ord)))
            flags["normalize_tiny"].append(bool(((norm > 0) & (norm < NORMALIZE_FLOOR)).any()))
        return normalize(inp, ord, axis, eps)

    F.softmax, F.normalize = watch_softmax, watch_normalize
    try:
        yield flags
    finally:
        F.softmax, F.normalize = softmax, normalize


def _flagged(out_dir, seed, which):
    """The flag `_ill_conditioned` gave for program ``seed`` (``"softmax_low"``,
    ``"normalize_tiny"``; with a ``b`` before it, at the second shape)."""
    ref = np.load(os.path.join(out_dir, f"w{seed}.npz"))
    return which in ref.files and bool(ref[which])


def _close(got, want, rewrites=False, tol=TOL):
    """Each output within ``tol`` of the larger of 1 and eager's largest finite magnitude (the
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
        return np.allclose(g, w, rtol=0, atol=tol * scale(w), equal_nan=True)

    return len(got) == len(want) and all(agree(g, w) for g, w in zip(got, want))


def _batch_shape(shape):
    """The second input shape: the batch (axis 0) one larger (the programs have one input)."""
    return (shape[0] + 1,) + tuple(shape[1:])


def _values(out):
    return [np.asarray(w.numpy() if hasattr(w, "numpy") else w)
            for w in (out if isinstance(out, (tuple, list)) else [out])]


def _why(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]


def _guarded(f, x2):
    """Whether trace ``f``'s Python code used a size as a Python value (an int, an index, a
    branch's comparison) that is another at input ``x2``: this fork's own format checks such
    values (`megengine.jit.shape_guards`), and raises ShapeGuardError for it there."""
    import io
    import warnings

    from megengine.jit import ShapeGuardError
    from megengine.jit.dump import load

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f.dump(buf, arg_names=["x"])
    try:
        load(io.BytesIO(buf.getvalue())).run({"x": x2})
    except ShapeGuardError:
        return True
    except Exception:  # noqa: BLE001 (another error of this fork's own format is the jit
        return False  # fuzzer's to find: the written file is run there)
    return False


def drawn(seed, dyn=False):
    """The jit fuzzer's inference program ``seed`` (no writes into its state), built: (the
    program, its function, its module tree, its input at the traced shape, eager's values
    there or None where eager fails: the program is invalid at that shape)."""
    import warnings

    import megengine as mge

    from .jit_programs import TRACE_SHAPE, draw

    p = draw(seed, train=False, dyn=dyn, writes=False)
    prog, m = p.build()
    x = np.random.default_rng(seed).uniform(-2, 2, TRACE_SHAPE).astype("float32")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return p, prog, m, x, _values(p.eager(prog, m, mge.tensor(x)))
    except Exception:  # noqa: BLE001 (invalid at this shape)
        return p, prog, m, x, None


def write(seeds, out_dir, dyn=False):
    """Dump programs ``seeds`` to ``out_dir``; returns ({outcome: count}, {refused: count},
    [seeds whose file this fork reads to other values], {outcome: seeds} of this fork's reading
    at the second shape: "right", "raised" (a dict: seed -> the error), "wrong", and the skips
    (see the module's docstring): "eager fails", "traced size" (the dump warned of it),
    "traced decision" (a comparison: not warned), "traced count"."""
    import io
    import re
    import warnings

    import megengine as mge
    from megengine.jit import trace
    from megengine.jit.dump import DumpError, load

    from .jit_programs import TRACE_SHAPE

    stats, refused, wrong = {}, {}, []
    batch = {"right": [], "raised": {}, "wrong": [], "eager fails": [], "traced size": [],
             "traced decision": [], "traced count": []}
    for seed in seeds:
        with _ill_conditioned() as flags:
            p, prog, m, x, want = drawn(seed, dyn)
        if want is None:
            stats["invalid"] = stats.get("invalid", 0) + 1
            continue
        # the second shape's input and eager's values there (None: eager fails, the program
        # fixes a size)
        x2 = np.random.default_rng([seed, 1]).uniform(
            -2, 2, _batch_shape(TRACE_SHAPE)).astype("float32")
        try:
            with warnings.catch_warnings(), _ill_conditioned() as bflags:
                warnings.simplefilter("ignore")
                want2 = _values(p.eager(prog, m, mge.tensor(x2)))
        except Exception:  # noqa: BLE001
            want2 = None
        f = trace(lambda x: prog(x, m), symbolic=True, capture_as_const=True)
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(record=True) as caught:  # (and the dump's notes of
                warnings.simplefilter("always")  # a size kept as its traced value)
                traced = _values(f(mge.tensor(x)))  # (its rewrites included)
                f.dump(buf, arg_names=["x"], dump_format="FBS_V2")
        except DumpError as e:
            named = re.search(r"\((\w+)\) has no writer", str(e))
            key = named.group(1) if named else re.sub(r"'[^']*'", "'.'", str(e))[:90]
            refused[key] = refused.get(key, 0) + 1
            continue
        said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        try:
            got = [v.numpy() for v in load(io.BytesIO(buf.getvalue())).run({"x": x}).values()]
        except Exception as e:  # noqa: BLE001 (this fork's reader refused what it wrote)
            print(f"program {seed}: read back: {type(e).__name__}: {e}")
            got = None
        rewritten = not _close(traced, want, rewrites=True)  # (kept for upstream's side)
        more = {f"traced{i}": t for i, t in enumerate(traced)} if rewritten else {}
        if got is None or not _close(got, want, rewrites=True):
            if got is not None and rewritten and _close(got, traced, rewrites=True):
                stats["the trace's rewrites"] = stats.get("the trace's rewrites", 0) + 1
            else:
                wrong.append(seed)
        stats["written"] = stats.get("written", 0) + 1
        if want2 is None:
            batch["eager fails"].append(seed)
        elif any(t in w for w in said for t in COUNT_WARNINGS):
            batch["traced count"].append(seed)
        elif _guarded(f, x2):
            warned = any(SIZES_WARNING in w for w in said)
            batch["traced size" if warned else "traced decision"].append(seed)
        else:
            more = {**more, "bx": x2, **{f"bwant{i}": w for i, w in enumerate(want2)},
                    **{"b" + k: np.array(any(v)) for k, v in bflags.items()}}
            try:
                got2 = [v.numpy() for v in
                        load(io.BytesIO(buf.getvalue())).run({"x": x2}).values()]
            except Exception as e:  # noqa: BLE001 (no value given: accepted)
                batch["raised"][seed] = _why(e)
            else:
                batch["right" if _close(got2, want2, rewrites=True) else "wrong"].append(seed)
        with open(os.path.join(out_dir, f"w{seed}.mge"), "wb") as fh:
            fh.write(buf.getvalue())
        np.savez(os.path.join(out_dir, f"w{seed}.npz"), x=x,
                 **{f"want{i}": w for i, w in enumerate(want)},
                 **{k: np.array(any(v)) for k, v in flags.items()}, **more)
    return stats, refused, wrong, batch


def serve(out_dir, first=0, last=None):
    """Upstream's side: run each written file of ``out_dir`` (of seeds ``first`` to ``last``);
    prints the seeds it computes other values for (or fails to run), one per line: ``FAILS
    seed``, or ``PLANS seed`` where the same file gives eager's values once upstream keeps
    every value it computes (each var an output of the run): the file computes the program,
    and upstream's memory plan of the run that keeps its outputs only is what goes wrong, or
    ``REWRITES seed`` where it gives the trace's own values (see the module's docstring). A
    file with a second input (``bx``) is run there too: ``BATCH seed right``, ``raised`` (then
    the error), ``plans`` or ``wrong``. ``START seed`` before each file and ``DONE`` at the end
    tell the caller where a crash of upstream's process happened (`_serve`). With ``--reoptimize``
    (its environment variable set): ``REOPT seed`` and what `_reoptimize` says."""
    for path in sorted(glob.glob(os.path.join(out_dir, "w*.mge"))):
        ref = np.load(path[:-4] + ".npz")
        seed = os.path.basename(path)[1:-4]
        if int(seed) < first or last is not None and int(seed) > last:
            continue
        print("START", seed, flush=True)
        want = [ref[f"want{i}"] for i in range(sum(k.startswith("want") for k in ref))]
        how = _run_upstream(path, ref["x"], want)
        if how != "right" and "traced0" in ref and _run_upstream(
                path, ref["x"], [ref[f"traced{i}"] for i in range(len(want))]) == "right":
            how = "rewrites"  # (the trace's own values: see the module's docstring)
        if how != "right":
            word = {"plans": "PLANS", "rounds": "ROUNDS", "rewrites": "REWRITES"}.get(how, "FAILS")
            print(word, seed, flush=True)
        if "bx" in ref:
            want = [ref[f"bwant{i}"] for i in range(sum(k.startswith("bwant") for k in ref))]
            print("BATCH", seed, _run_upstream(path, ref["bx"], want, raises=True), flush=True)
        if os.environ.get(REOPTIMIZE):
            print("REOPT", seed, _reoptimize(path, ref["x"], os.environ[REOPTIMIZE]),
                  flush=True)
    print("DONE", flush=True)


REOPTIMIZE = "UPSTREAM_WRITE_REOPTIMIZE"  # (how --reoptimize reaches upstream's side)


def _every_value(path, x):
    """Upstream's side: (the outputs of file ``path`` on input ``x`` from a run keeping every
    value it computes, each var an output of the run: its memory plan of a run keeping only
    the outputs goes wrong on some files, see above; the output shapes its Network declares,
    [-1] where it declares none)."""
    from megengine.utils.comp_graph_tools import GraphInference
    from megengine.utils.network import Network

    net = Network.load(path)
    every = GraphInference(path, outputs=[v.name for v in net.all_vars]).run(inp_dict={"x": x})
    return ([np.asarray(every[v.name]) for v in net.output_vars],
            [np.array(v.shape if v.shape is not None else [-1], dtype=np.int64)
             for v in net.output_vars])


def _reoptimize(path, x, how):
    """Upstream's side of ``--reoptimize``: ``Network.load(path).dump`` optimized as ``how``
    says to r<seed>.mge beside it, and the values upstream computes from that file keeping
    every value to r<seed>.npz (``every<i>``), with the output shapes its Network declares
    (``shape<i>``: see `upstream_read._as_declared`). Returns "written", "unoptimized" (upstream's
    optimizer failed) or "unrun" (its runtime failed on the file)."""
    from megengine.utils.network import Network

    out = os.path.join(os.path.dirname(path), "r" + os.path.basename(path)[1:])
    options = {} if how == "plain" else {how: True, "enable_fuse_conv_bias_nonlinearity": True}
    try:
        Network.load(path).dump(out, **options)
    except Exception:  # noqa: BLE001 (an assertion of upstream's optimizer)
        return "unoptimized"
    try:
        every, declared = _every_value(out, x)
    except Exception:  # noqa: BLE001
        return "unrun"
    np.savez(out[:-4] + ".npz", **{f"every{i}": v for i, v in enumerate(every)},
             **{f"shape{i}": v for i, v in enumerate(declared)})
    return "written"


def _read_reoptimized(out_dir, lines):
    """This fork's side of ``--reoptimize``: {outcome: seeds} of reading upstream's optimized
    files: "right" (eager's values), "theirs" (upstream's values of that file, not eager's: its
    optimizer's), "wrong", "refused" (a dict: seed -> the error), and upstream's
    "unoptimized" and "unrun" (see `_reoptimize`)."""
    from .upstream_read import judged

    out = {"right": [], "theirs": [], "wrong": [], "refused": {}, "unoptimized": [], "unrun": []}
    for w in lines:
        if w[:1] != ["REOPT"]:
            continue
        seed, how = int(w[1]), w[2]
        if how != "written":
            out[how].append(seed)
            continue
        ref = np.load(os.path.join(out_dir, f"w{seed}.npz"))
        want = [ref[f"want{i}"] for i in range(sum(k.startswith("want") for k in ref))]
        try:
            out[judged(out_dir, f"r{seed}", ref["x"], want)].append(seed)
        except Exception as e:  # noqa: BLE001
            out["refused"][seed] = _why(e)
    return out


def _serve(python, out_dir, reoptimize=None, script=None, env=None):
    """`serve` in upstream's interpreter ``python``, restarted past a file its process crashed
    on: upstream 1.13's runtime segfaults on some sequences of files that it runs alone (each
    alone, and each five times in one process: measured on --dyn programs 5101-5103, whose
    three together crash it, at the third file or at exit). Returns (the result lines, the
    seeds it crashed on with whether it also crashes on that file alone, the error output of a
    run that failed otherwise or None). ``script`` (default: this file) serves another
    fuzzer's files the same way (`upstream_read`), with ``env`` added to its environment."""
    import tempfile

    env = dict(os.environ, PYTHONPATH="", **(env or {}))
    if reoptimize:
        env[REOPTIMIZE] = reoptimize

    def run(*bounds):
        out = subprocess.run([python, script or os.path.abspath(__file__), "--serve", out_dir,
                              *map(str, bounds)], capture_output=True, text=True, env=env,
                             cwd=tempfile.gettempdir())
        return out, [line.split() for line in out.stdout.splitlines()]

    lines, crashed, first = [], {}, 0
    while True:
        out, got = run(first)
        started = [int(w[1]) for w in got if w[:1] == ["START"]]
        if out.returncode == 0 or ["DONE"] in got:  # (a crash at exit: every file was run)
            lines += got
            return lines, crashed, None
        if not started or started[-1] < first:  # (not at a file: the interpreter or the
            return lines, crashed, out.stderr[-2000:]  # import failed)
        seed = started[-1]  # (the file it was running: its lines, if any, are left out)
        lines += [w for w in got if len(w) < 2 or w[1] != str(seed)]
        crashed[seed] = run(seed, seed)[0].returncode != 0
        first = seed + 1


def _run_upstream(path, x, want, raises=False):
    """How upstream's ``GraphInference`` runs file ``path`` on input ``x``: "right" (eager's
    values ``want``), "plans" (eager's values only when it keeps every value), "wrong" (also
    where it raises, unless ``raises``: then "raised" and the error), "rounds" (other values,
    within 10x the tolerance of eager's)."""
    from megengine.utils.comp_graph_tools import GraphInference

    feed = {"x": x}
    try:
        got = [np.asarray(v) for v in GraphInference(path).run(inp_dict=feed).values()]
    except Exception as e:  # noqa: BLE001 (an assertion of upstream's runtime)
        if raises:
            return "raised " + _why(e)
        got = None
    if got is not None and _close(got, want):
        return "right"
    try:
        kept = _close(_every_value(path, x)[0], want)
    except Exception:  # noqa: BLE001
        kept = False
    if kept:
        return "plans"
    return "rounds" if got is not None and _close(got, want, tol=10 * TOL) else "wrong"


def _normalises(source):
    """Whether a program takes a layer norm: upstream 1.13's LayerNorm kernel rounds more than
    float32 needs where a row's values lie close together (program 6449: rows of std 0.0019
    about 1.005, upstream's output 1.0e-4 off float64's layer norm of the same input, this
    fork's and torch's 3.1e-5), and a program amplifies that past the tolerance: within 10x of
    it, such a program is set apart (`_run_upstream`'s "rounds")."""
    return "F.layer_norm(" in source


def _raises(raised):
    """Lines of ``{seed: error}``, the seeds grouped by their error (its numbers elided)."""
    import re

    groups = {}
    for seed, why in sorted(raised.items()):
        groups.setdefault(re.sub(r"\d+", "#", why)[:120], []).append(seed)
    return [f"    {why}: {seeds}" for why, seeds in groups.items()]


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
    parser.add_argument("--reoptimize", choices=["plain", "enable_nchw44", "enable_nchw88"],
                        help="with --upstream: upstream's Network.load + dump of each written "
                             "file (optimized so), read back here")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reoptimize and not args.upstream:
        parser.error("--reoptimize needs --upstream (upstream's optimizer makes the files)")
    if args.serve:
        serve(args.serve)
        return 0
    from .jit_programs import draw

    def source(seed):
        return draw(seed, train=False, dyn=args.dyn, writes=False).source

    out_dir = args.keep or tempfile.mkdtemp(prefix="upstream_write_")
    os.makedirs(out_dir, exist_ok=True)
    seeds = range(args.start, args.start + args.seeds)
    stats, refused, wrong, batch = write(seeds, out_dir, args.dyn)
    print(f"programs {args.start}-{seeds[-1]}: {stats}")
    print("refused:", sorted(refused.items(), key=lambda kv: -kv[1]))
    print("read back here to other values:", wrong or "none")
    skips = ("eager fails", "traced size", "traced decision", "traced count")
    skipped = (f"{sum(len(batch[k]) for k in skips)} skipped (eager fails there: "
               f"{len(batch['eager fails'])}; a size the traced code used as a Python value "
               f"is another there: {len(batch['traced size'])} warned of, "
               f"{len(batch['traced decision'])} a branch's comparison; nms's traced count: "
               f"{len(batch['traced count'])})")
    print(f"batch+1, read back here: {len(batch['right'])} right, {len(batch['raised'])} "
          f"raised, {skipped}, {len(batch['wrong'])} wrong: {batch['wrong'] or 'none'}")
    print("\n".join(_raises(batch["raised"])) or "    (none raised)")
    failures = list(wrong)
    batch_wrong = [(s, "read back here") for s in batch["wrong"]]
    if args.upstream:
        lines, crashed, error = _serve(args.upstream, out_dir, args.reoptimize)
        planned = [int(w[1]) for w in lines if w[:1] == ["PLANS"]]
        rounds = [int(w[1]) for w in lines if w[:1] == ["ROUNDS"]]
        rewrites = [int(w[1]) for w in lines if w[:1] == ["REWRITES"]]
        normed = [s for s in rounds if _normalises(source(s))]
        failed = [int(w[1]) for w in lines if w[:1] == ["FAILS"]] + [
            s for s in rounds if s not in normed]
        theirs = [s for s in failed if any(pat in source(s) for pat in UPSTREAM_BROADCAST_WRITES)]
        overflows = [s for s in failed if s not in theirs and _overflows(source(s), out_dir, s)]
        lows = [s for s in failed if s not in theirs and s not in overflows
                and _flagged(out_dir, s, "softmax_low")]
        tiny = [s for s in failed if s not in theirs + overflows + lows
                and _flagged(out_dir, s, "normalize_tiny")]
        bad = [s for s in failed if s not in theirs + overflows + lows + tiny]
        ran = sorted({int(w[1]) for w in lines if w[:1] == ["START"]})
        alone = [s for s, again in crashed.items() if again]  # (a crash on the file itself)
        print(f"upstream ran {len(ran) - len(failed) - len(planned) - len(normed) - len(rewrites)}"
              f" of {stats.get('written', 0)} to eager's values; {len(planned)} more when it "
              f"keeps every value (its memory plan, see above); the trace's rewrites (its values "
              f"are the trace's): {rewrites or 'none'}; a layer norm of close values "
              f"(upstream's rounds): {len(normed)}; writes into a broadcast value "
              f"(upstream's runtime): {len(theirs)}; an exp that overflows (upstream's "
              f"saturates): {len(overflows)}; a softmax of a row below {SOFTMAX_FLOOR:g} "
              f"(upstream's is wrong): {len(lows)}; a normalize of rounding residues (norm "
              f"below {NORMALIZE_FLOOR:g}): {len(tiny)}; its process crashed on {len(crashed)} "
              f"after other files ({sorted(crashed) or 'none'}; on the file alone too: "
              f"{alone or 'none'}); "
              f"other: {bad or 'none'}")
        # the second shape, with the same cases set apart
        up = {"right": [], "raised": {}, "plans": [], "wrong": [], "rounds": []}
        for w in lines:
            if w[:1] == ["BATCH"] and w[2] == "raised":
                up["raised"][int(w[1])] = " ".join(w[3:])
            elif w[:1] == ["BATCH"]:
                up[w[2]].append(int(w[1]))
        bnormed = [s for s in up["rounds"] if _normalises(source(s))]
        up["wrong"] += [s for s in up["rounds"] if s not in bnormed]
        btheirs = [s for s in up["wrong"]
                   if any(pat in source(s) for pat in UPSTREAM_BROADCAST_WRITES)]
        bover = [s for s in up["wrong"]
                 if s not in btheirs and _overflows(source(s), out_dir, s, "bwant")]
        blows = [s for s in up["wrong"] if s not in btheirs and s not in bover
                 and _flagged(out_dir, s, "bsoftmax_low")]
        btiny = [s for s in up["wrong"] if s not in btheirs + bover + blows
                 and _flagged(out_dir, s, "bnormalize_tiny")]
        bbad = [s for s in up["wrong"] if s not in btheirs + bover + blows + btiny]
        print(f"batch+1, upstream: {len(up['right'])} right, {len(up['raised'])} raised, "
              f"{skipped}, {len(up['plans'])} right when it keeps every value; a layer norm "
              f"of close values: {len(bnormed)}; writes into a "
              f"broadcast value: {len(btheirs)}; an exp that overflows: {len(bover)}; "
              f"a softmax of a row below {SOFTMAX_FLOOR:g}: {len(blows)}; a normalize of "
              f"rounding residues: {len(btiny)}; {len(bbad)} wrong: {bbad or 'none'}")
        print("\n".join(_raises(up["raised"])) or "    (none raised)")
        if error is not None or len(ran) + len(crashed) != stats.get("written", 0):
            print(error or f"upstream's side ran {len(ran)} files of "
                           f"{stats.get('written', 0)}")
            failures.append("upstream's side")
        failures += bad + alone
        batch_wrong += [(s, "upstream") for s in bbad]
        if args.reoptimize:
            r = _read_reoptimized(out_dir, lines)
            print(f"optimized by upstream ({args.reoptimize}), read back here: "
                  f"{len(r['right'])} right, {len(r['theirs'])} as upstream's "
                  f"file computes them (its optimizer's values), {len(r['wrong'])} wrong: "
                  f"{r['wrong'] or 'none'}; refused: {len(r['refused'])}; upstream's optimizer "
                  f"failed on {len(r['unoptimized'])}, its runtime on {len(r['unrun'])}")
            print("\n".join(_raises(r["refused"])) or "    (none refused)")
            failures += r["wrong"] + sorted(r["refused"])
    for s, side in batch_wrong:
        print(f"\nprogram {s}: other values at batch+1 ({side}), eager's inputs and values in "
              f"{out_dir}/w{s}.npz (bx, bwant*):\n"
              f"{draw(s, train=False, dyn=args.dyn, writes=False)}")
    failures += [s for s, _ in batch_wrong]
    return 1 if failures else 0


if __name__ == "__main__":
    if "--serve" in sys.argv:  # (upstream's interpreter: by path, no package around it)
        at = sys.argv.index("--serve")
        serve(sys.argv[at + 1], *map(int, sys.argv[at + 2:at + 4]))
    else:
        sys.exit(main())
