"""The jit fuzzer's properties: a drawn program (`jit_programs`) traced in one mode must equal the
same program run eagerly, on repeated calls, at new shapes, after ``dump`` and loading
(``GraphInference``, ``Network.load`` + ``dump``, ``jit.dump.load``, test cases of
``dump(input_data=...)`` through ``load_and_inference``) and after
``Network.reset_batch_size``; a loaded program at another shape equals eager or raises
``ShapeGuardError``, never a wrong value or another error. Later calls at the traced shape get
other data too (values that empty and fill masks): where a size that data decides changes, a
call gives eager's value, or the error the jit docs' "Shapes that data decides" names when the
program used that size as a Python value (`expected`). A program that writes into a Parameter
of its module (`Program.writes_state`) is compared with eager code run on a copy of the state
the traced call meets, and the state after the call with eager's too (across repeated calls
both evolve alike); each run of its dumped file gives
eager's values on the state the trace captured (`reads_capture`)."""
import copy
import io
import itertools
import re
import warnings

import numpy as np

import megengine as mge
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.jit import ShapeGuardError, TraceError, TraceMismatchError, trace
from megengine.jit.dump import DumpError, load
from megengine.utils.comp_graph_tools import GraphInference, load_and_inference
from megengine.utils.network import Network

from .jit_programs import OTHER_SHAPES, TRACE_SHAPE, draw

# (symbolic, capture_as_const, without_host, opt_level, symbolic_shape)
MODES = [dict(symbolic=s, capture_as_const=c, without_host=w, opt_level=o, symbolic_shape=ss)
         for s, c, w, o, ss in itertools.product((False, True), (False, True), (False, True),
                                                 (0, 2), (False, True))]
RTOL, ATOL = 2e-4, 2e-5
# A traced step's gradients may differ from eager's by rounding: RTOL of the value, plus the
# rounding level of the element, the larger of GRAD_NOISE times eager's own error (measured per
# parameter against float64: `_exact_gradients`; the largest of the parameter's layer: a bias
# whose true gradient a later normalisation cancels can come out of eager's float32 nearly exact
# by luck while its layer's weight is off by more: program 97086's bias got a rounding level of
# 3.7e-12 from its own error and the layer's tiny gradients, where a rewritten trace's 4.7e-10
# is still rounding) and LAYER_NOISE of the largest gradient of the
# parameter's layer, or MODEL_NOISE of the largest gradient of the model. (Where a later normalisation nearly cancels a layer's effect, its
# gradients are small differences of large terms: eager's error can be ~0 by luck, or far
# below the traced program's, whose rewrites round otherwise; the 300 programs from seed 7000
# show such differences up to 1.5e-3 of the layer's largest gradient: 7222, 7124.)
# Where the true gradient is below that level (a bias that a later normalisation cancels:
# ~1e-15 in float64, 1e-6..5e-5 in float32), its float32 value is noise whose sign the rounding
# decides; two programs that round differently (opt_level's rewrites: log(exp(h)) -> h) give
# different noise, and Adam (m / (sqrt(v) + eps)) makes each noise a step of up to ~lr: such an
# element may drift from eager's by what the two steps moved it (see `_check_step`).
GRAD_NOISE, LAYER_NOISE, MODEL_NOISE = 10, 1e-3, 1e-5
VERBOSE = False


class JitMismatch(AssertionError):
    """A traced or dumped program disagrees with the eager one."""


def _mode_str(mode):
    return "trace(" + ", ".join(f"{k}={v}" for k, v in mode.items()) + ")"


def _flat(out):
    out = out if isinstance(out, (tuple, list)) else [out]
    return [np.asarray(o.numpy() if hasattr(o, "numpy") else o) for o in out]


def _close(got, want, what, rewrites=False):
    """``got`` equals eager's ``want`` (``what`` names the call). ``rewrites``: the program
    computes with opt_level's rewrites, which give 0, 1 or ``a`` where ``a`` is inf or NaN
    (``x - x`` is 0, as upstream: `megengine.jit.arith_opt`), so where eager's value is not
    finite (an overflow to inf, then ``inf - inf``) the traced one is not compared; nor, then,
    is a count (an integer scalar: a size that data decided, ``v.shape[0]``), which eager
    took from the values that overflowed and the program from its finite ones (`_overflowed`;
    program 96215: a mask of NaN is empty)."""
    if len(got) != len(want):
        raise JitMismatch(f"{what}: {len(got)} outputs, eager gives {len(want)}")
    overflowed = rewrites and _overflowed(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            raise JitMismatch(f"{what}: output {i} has shape {g.shape}, eager {w.shape}")
        if overflowed and w.ndim == 0 and w.dtype.kind in "iu":
            continue
        if rewrites:
            finite = np.isfinite(w)
            g, w = g[finite], w[finite]
        # (ATOL of the output's largest magnitude: an element near 0 that a centring left of
        # terms of that size carries their rounding; program 97763: -0.0435505 for eager's
        # -0.0435801 in an output up to 12.1, where opt_level 2 rounded otherwise)
        finite = np.abs(w[np.isfinite(w)]) if w.dtype.kind == "f" else None
        atol = ATOL * max(1.0, float(finite.max())) if finite is not None and finite.size \
            else ATOL
        if not np.allclose(g, w, rtol=RTOL, atol=atol, equal_nan=True):
            err = np.max(np.abs(g.astype("float64") - w))
            raise JitMismatch(f"{what}: output {i} differs from eager (max abs err {err:.3g})")


def _data(rng, shape):
    return rng.uniform(-2, 2, shape).astype("float32")


def _later_data(rng, shape):
    """Data for later calls at one shape: new values, values that empty masks of the input
    (all negative) or fill them (all positive), and small values."""
    return [_data(rng, shape), -rng.uniform(0.5, 2, shape).astype("float32"),
            rng.uniform(0.5, 2, shape).astype("float32"), _data(rng, shape) * 0.05]


def _first_and_later(rng):
    """The recording call's data, later data at its shape, and the recording call's again
    (the sizes it recorded: every mode must follow)."""
    first = _data(rng, TRACE_SHAPE)
    return [first] + _later_data(rng, TRACE_SHAPE) + [first]


def _eager(p, prog, m, a):
    try:
        return _flat(p.eager(prog, m, mge.tensor(a))), None
    except Exception as e:  # noqa: BLE001 (the program is invalid at this shape)
        return None, e


def reads_capture(p, mode):
    """Whether program ``p`` in ``mode`` computes with a captured value of its state that its
    calls change: under capture_as_const a Parameter is captured when a call records, and a
    read of it before the function writes it (`Program.reads_state_first`) reads that value.
    Then, as upstream (only the captured values its graph reads are compared), a checked call
    or a ``without_host`` replay that finds the Parameter changed since raises
    TraceMismatchError ("tensors not equals"), and a ``without_host`` recording call that
    changes it is refused with TraceError once it has run (its replays would compute with the
    old value). A program that writes its state before reading it runs on every call."""
    return p.writes_state and mode["capture_as_const"] and p.reads_state_first


def _state_bits(m):
    return tuple((v.shape, v.dtype.str, v.tobytes()) for v in _param_values(m).values())


def _copy_state(dst, src):
    """Give module ``dst`` the parameter values of module ``src``."""
    for (_, q), (_, v) in zip(dst.named_parameters(), src.named_parameters()):
        q._reset(mge.tensor(v.numpy()))


def _check_state(what, m, want, rewrites=False):
    """The parameters of ``m`` equal ``want`` ({name: array}), eager's: NaN where eager's are
    NaN (a state that overflowed: program 98899's ``F.log(F.exp(h))`` fed into its write),
    and, with opt_level's ``rewrites``, anything where eager's are not finite (as `_close`:
    the rewritten ``log(exp(h))`` is ``h``, which does not overflow)."""
    for name, v in _param_values(m).items():
        w = want[name]
        if v.shape == w.shape and rewrites:
            finite = np.isfinite(w)
            v, w = v[finite], w[finite]
        if v.shape != w.shape or not np.allclose(v, w, rtol=RTOL, atol=ATOL, equal_nan=True):
            raise JitMismatch(f"{what}: parameter {name} is {v}, eager leaves {want[name]}")


def _seen(prog):
    """What the last eager run's probe saw (`jit_dyn.Probe`): (P, R, Q, O)."""
    return prog.probe.seen()


def expected(mode, traced, now, loaded=False):
    """(must, may): the error class a call must raise (None: it must give eager's value), and
    one it may raise instead of giving eager's value, where ``traced`` and ``now`` are what
    the probe saw in the recording call and in this one. As the jit docs say: with symbolic
    shapes a size that data decides is followed by the ops built from it, and a Python value
    made from one is a constant of the program: a checked call that makes another raises
    TraceMismatchError, a without_host replay or a loaded program ShapeGuardError. With
    ``symbolic_shape=False`` such sizes are plain ints: a checked call whose ops or Python
    values were built from other sizes raises TraceMismatchError, and a replay (a loaded
    program: ShapeGuardError) raises it where a value whose size was read has another shape
    now; which values the library code read (a concat's split points) the probe does not see,
    so a replay may also raise it where only values the program did not read changed."""
    (p0, r0, q0, o0), (p1, r1, q1, o1) = traced, now
    replay = mode["without_host"] or loaded
    if mode["symbolic_shape"]:
        if p1 != p0:
            return (ShapeGuardError if replay else TraceMismatchError), None
        return None, None
    err = ShapeGuardError if loaded else TraceMismatchError
    if not replay:
        return (err if (r1, p1) != (r0, p0) else None), None
    return (err if (r1, q1, o1) != (r0, q0, o0) else None), err


def _overflowed(want):
    """Whether eager's outputs ``want`` hold a value that is not finite. The sizes that data
    decides which eager code saw then may come from an overflow (``log(exp(h))`` is inf, a
    softmax of it NaN, a mask of it empty) that opt_level's rewrites avoid (``log(exp(h))`` is
    ``h``, as upstream: `megengine.jit.arith_opt`), so a traced call that follows its recorded
    sizes where eager's changed is no finding (program 92119; `_close` skips such values too)."""
    return any(not np.all(np.isfinite(w)) for w in want if w.dtype.kind in "fc")


def _says_data_decides(e):
    return any("data decides" in str(a) for a in e.args)  # (a TraceMismatchError's str is
    # its reason only)


def _outcome(what, run, want, expect, seen, rewrites, also=()):
    """Run ``run``; it must give ``want`` (as `_close` compares, ``rewrites`` passed on), or
    raise ``expect[0]`` where that is not None (or may raise ``expect[1]``, or one of ``also``:
    `reads_capture`). Returns "refused" or "followed" (an outcome count)."""
    must, may = expect
    try:
        got = run()
    except Exception as e:  # noqa: BLE001
        if (must is not None and isinstance(e, must)) or (
                may is not None and isinstance(e, may) and _says_data_decides(e)):
            return "refused"
        if rewrites and _overflowed(want) and isinstance(e, (TraceMismatchError,
                                                             ShapeGuardError)):
            # the program's sizes came from its finite values where eager's overflowed
            # (`_overflowed`), and a Python value made from one is not the one it recorded
            # (program 96277: ``math.log(k + 1)`` of a count of NaN, 0 eagerly, 2 traced)
            return "refused"
        if also and isinstance(e, also):
            return "state refused"
        exp = f" (expected {must.__name__})" if must is not None else ""
        raise JitMismatch(f"{what}: {type(e).__name__}: {e}{exp}\n(sizes that data decides, "
                          f"traced -> now: {seen})") from e
    if must is not None and rewrites and _overflowed(want):
        _close(got, want, what, rewrites)  # (`_overflowed`)
        return "followed"
    if must is not None:
        raise JitMismatch(f"{what}: gave a value; expected {must.__name__} (sizes that data "
                          f"decides, traced -> now: {seen})")
    _close(got, want, what, rewrites)
    return "followed"


def _call(what, fn, *args):
    try:
        return fn(*args)
    except (JitMismatch, ShapeGuardError):
        raise
    except Exception as e:  # noqa: BLE001 (any other engine error is a finding)
        raise JitMismatch(f"{what}: {type(e).__name__}: {e}") from e


def check_inference(p, mode, rng):
    """Properties (a)-(d) of an inference program in ``mode``; returns the outcome counts."""
    out = {}
    rewrites = mode["opt_level"] > 0  # (dumped files hold the rewritten program too)
    prog, m = p.build()
    traced = trace(lambda x: prog(x, m), **mode)
    # a program that writes its state: eager runs on a copy of the state each traced call
    # meets (``m_ref``), a dumped file's runs on a copy of the state that the call recording
    # it met (``fresh[0]``: each run of a file starts from the values the trace captured)
    captured = reads_capture(p, mode)
    kept = {}  # input shape -> the state when the program the trace keeps for it recorded
    m_ref, fresh = (copy.deepcopy(m), [None]) if p.writes_state else (m, [m])

    def eager_now(a):
        if p.writes_state:
            _copy_state(m_ref, m)
        return _eager(p, prog, m_ref, a)

    def eager_fresh(a):
        return _eager(p, prog, copy.deepcopy(fresh[0]) if p.writes_state else m, a)

    def traced_call(what, a, want, expect, seen):
        """``traced(a)``'s outcome (`_outcome`), the state after it checked; the state
        decides what it must raise where it computes with a captured value (`reads_capture`)."""
        shape = a.shape
        records = shape not in kept
        before = _state_bits(m) if p.writes_state else None
        snapshot = copy.deepcopy(m) if p.writes_state and records else None
        also = ()
        if captured and records and mode["without_host"]:
            also = (TraceError,)  # (must, when the call changes the state: below)
        elif captured and not records and before != kept[shape]:
            expect = (TraceMismatchError, None)  # (before any other difference: the state
            # is compared at its first read, a replay's before its first step)
        res = _outcome(what, lambda: _flat(traced(mge.tensor(a))), want, expect, seen,
                       rewrites, also)
        # (the without_host refusal comes after the recording call has run, as eager code: its
        # message says that the call changed the Parameter. A checked call refused midway has
        # run the function's writes before that point, as eager code raising there would:
        # not compared; the next call starts from the state it left, `eager_now`)
        if p.writes_state and (res == "followed" or (res == "state refused"
                                                     and mode["without_host"])):
            _check_state(what, m, _param_values(m_ref), rewrites)
        if records and res != "refused":
            changed = p.writes_state and _state_bits(m) != before
            if also and (res == "state refused") != changed:
                raise JitMismatch(
                    f"{what}: the recording call {'changed' if changed else 'kept'} the "
                    f"captured Parameter it reads, and it was "
                    f"{'not ' if res != 'state refused' else ''}refused (TraceError)")
            if res != "state refused":
                kept[shape] = before
                if shape == TRACE_SHAPE:
                    fresh[0] = snapshot
        return res
    shapes = [TRACE_SHAPE] + OTHER_SHAPES
    # (a) several calls at the traced shape, new values each time: the same sizes that data
    # decides, or others (see `expected`)
    traced_seen = None
    for k, a in enumerate(_later_data(rng, TRACE_SHAPE)[:3] if not p.dyn else
                          _first_and_later(rng)):
        want, err = eager_now(a)
        if err is not None and k > 0:
            out["a invalid data"] = out.get("a invalid data", 0) + 1  # (eager refuses it too)
            continue
        if err is not None:
            raise JitMismatch(f"the generator drew a program invalid eagerly: {err!r}")
        seen = _seen(prog)
        if traced_seen is None:  # (this call records)
            traced_seen, first_a = seen, a
        what = f"(a) call {k} at {TRACE_SHAPE}"
        res = traced_call(what, a, want, expected(mode, traced_seen, seen),
                          (traced_seen, seen))
        if res == "state refused" and mode["without_host"]:
            traced_seen = None  # (it kept no program: the next call records)
        out[f"a {res}"] = out.get(f"a {res}", 0) + 1
    out["a"] = k + 1
    if traced_seen is None:  # (every call refused to record: `reads_capture`)
        return out
    dumped = None
    if mode["capture_as_const"]:
        buf = io.BytesIO()
        try:
            traced.dump(buf, arg_names=["x"])
            dumped = buf.getvalue()
        except DumpError as e:
            out["dump refused"] = 1
            if VERBOSE:
                print(f"dump refused: {e}")
        except Exception as e:  # noqa: BLE001
            raise JitMismatch(f"(c) dump: {type(e).__name__}: {e}") from e
    # (b) other shapes re-trace; then the traced shape again (its cached program)
    for s in OTHER_SHAPES + [TRACE_SHAPE]:
        a = _data(rng, s)
        want, err = eager_now(a)
        if err is not None:
            continue
        if s == TRACE_SHAPE:  # (its program, recorded by the first call: `expected`)
            seen = _seen(prog)
            traced_call(f"(b) call at {s}", a, want, expected(mode, traced_seen, seen),
                        (traced_seen, seen))
        elif p.writes_state:
            traced_call(f"(b) call at {s}", a, want, (None, None), None)
        else:
            got = _call(f"(b) call at {s}", lambda: _flat(traced(mge.tensor(a))))
            _close(got, want, f"(b) call at {s}", rewrites)
            if p.writes_state:
                _check_state(f"(b) call at {s}", m, _param_values(m_ref), rewrites)
        out["b"] = out.get("b", 0) + 1
    if dumped is None:
        return out
    fixed = not mode["symbolic_shape"]
    # the last call was at the traced shape again (its kept program): a new dump of it must be
    # the same program
    again = io.BytesIO()
    _call("(c) dump after other shapes", lambda: traced.dump(again, arg_names=["x"]))

    def run_loaded(what, runner, s, a=None):
        a = _data(rng, s) if a is None else a
        want, err = eager_fresh(a)
        if s == TRACE_SHAPE and err is None:  # (the data decides what it must do: `expected`)
            seen = _seen(prog)
            res = _outcome(f"{what} at {s}", lambda: _flat(list(runner(a))), want,
                           expected(mode, traced_seen, seen, loaded=True), (traced_seen, seen),
                           rewrites)
            res = "loaded ok" if res == "followed" else "loaded refused"
            out[res] = out.get(res, 0) + 1
            return
        try:
            got = runner(a)
        except ShapeGuardError:
            out["guarded"] = out.get("guarded", 0) + 1
            return
        except Exception as e:  # noqa: BLE001
            if err is not None:
                out["invalid shape refused"] = out.get("invalid shape refused", 0) + 1
                return
            if fixed and s != TRACE_SHAPE and "trace and dump the new shape" in str(e):
                out["fixed shape refused"] = out.get("fixed shape refused", 0) + 1
                return
            raise JitMismatch(f"{what} at {s}: {type(e).__name__}: {e}") from e
        if err is not None:
            raise JitMismatch(f"{what} at {s} gave a value where eager raises {err!r}")
        _close(_flat(list(got)), want, f"{what} at {s}", rewrites)
        out["loaded ok"] = out.get("loaded ok", 0) + 1

    # (c) GraphInference, jit.dump.load, Network.load + dump
    gi = _call("(c) GraphInference", GraphInference, io.BytesIO(dumped))
    lp = _call("(c) jit.dump.load", load, io.BytesIO(dumped))
    net = _call("(c) Network.load", Network.load, io.BytesIO(dumped))
    b2 = io.BytesIO()
    _call("(c) Network.dump", lambda: net.dump(b2))
    gi2 = _call("(c) GraphInference of Network.dump", GraphInference, io.BytesIO(b2.getvalue()))
    later = [first_a] + _later_data(rng, TRACE_SHAPE) if p.dyn else [None]
    for s, a in [(TRACE_SHAPE, a) for a in later] + [(s, None) for s in OTHER_SHAPES]:
        run_loaded("(c) GraphInference", lambda a: gi.run(a).values(), s, a)
        run_loaded("(c) jit.dump.load", lambda a: [v.numpy() for v in lp.run({"x": a}).values()],
                   s, a)
        run_loaded("(c) Network.load+dump", lambda a: gi2.run(a).values(), s, a)
    gi3 = _call("(c) GraphInference", GraphInference, io.BytesIO(again.getvalue()))
    for s in shapes[:3]:
        run_loaded("(c) dump after other shapes", lambda a: gi3.run(a).values(), s)
    # (c) test cases of other shapes stored by dump(input_data=...) and run by
    # load_and_inference: eager's values, or dump refuses the case naming the guard (a file
    # of fixed shapes runs them with the traced parameters: documented, not checked)
    for s in (() if fixed else OTHER_SHAPES[:2]):
        a = _data(rng, s)
        want, err = eager_fresh(a)
        if err is not None:
            continue
        b4 = io.BytesIO()
        try:
            traced.dump(b4, arg_names=["x"], input_data=[a])
        except DumpError as e:
            if "the traced Python code used" not in str(e):
                raise JitMismatch(f"(c) dump(input_data=...) at {s}: {e}") from e
            out["guarded"] = out.get("guarded", 0) + 1
            continue
        got = _call("(c) load_and_inference", load_and_inference, io.BytesIO(b4.getvalue()))
        _close(_flat(list(got[0].values())), want, f"(c) dump(input_data=...) at {s}",
               rewrites)
        out["loaded ok"] = out.get("loaded ok", 0) + 1
    # (d) reset_batch_size, dump, run at that batch (a file of fixed shapes warns that its
    # shape-built sizes keep the traced batch: documented, not checked)
    for n in (() if fixed else (1, 3)):
        net = Network.load(io.BytesIO(dumped))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _call(f"(d) reset_batch_size({n})", net.reset_batch_size, n)
        b3 = io.BytesIO()
        _call("(d) dump", lambda: net.dump(b3))
        g3 = _call("(d) GraphInference", GraphInference, io.BytesIO(b3.getvalue()))
        run_loaded(f"(d) reset_batch_size({n})", lambda a: g3.run(a).values(),
                   (n,) + TRACE_SHAPE[1:])
    return out


def _logging_gradients(opt, model, log):
    """Make ``opt`` note the gradient each parameter is updated with in ``log[-1]`` (a dict by
    parameter name; the caller appends one per step). The optimizer's per-parameter update is
    wrapped: it runs inside the ``opt.step()`` event, in every trace mode (replays call events
    too), and copies raw arrays, which no trace sees (no op, no host read)."""
    names = {id(q): n for n, q in model.named_parameters()}
    update = opt._update

    def logged(param, grad, state, group):
        log[-1][names[id(param)]] = np.array(grad.get() if hasattr(grad, "get") else grad,
                                             copy=True)  # (CuPy: to the host)
        return update(param, grad, state, group)

    opt._update = logged


def _as_float64(model):
    """A float64 copy of ``model`` (its float32 parameters and buffers)."""
    m64 = copy.deepcopy(model)
    for mod in m64.modules():
        for k, v in list(vars(mod).items()):
            if isinstance(v, mge.Tensor) and v.dtype == np.float32:
                setattr(mod, k, type(v)(v.numpy().astype("float64"), dtype="float64"))
    return m64


def _exact_gradients(p, prog, m64, values, a, loss32):
    """The gradients of the training loss at parameter values ``values`` ({name: array}) and
    data ``a``, computed in float64 (``m64``: `_as_float64`); None where that is not the same
    computation (an error; a loss other than float32's ``loss32`` within RTOL: data near a
    mask's threshold, which decides another size)."""
    params = dict(m64.named_parameters())
    for name, v in values.items():
        params[name]._reset(v.astype("float64"))
    gm = GradManager().attach(params.values())
    try:
        with gm:
            y = p.eager(prog, m64, mge.tensor(a.astype("float64"), dtype="float64"))
            loss = ((y - 0.5) ** 2).mean()
            gm.backward(loss)
    except Exception:  # noqa: BLE001 (a program float64 cannot run: compared strictly)
        return None
    grads = {n: q.grad.numpy() for n, q in params.items() if q.grad is not None}
    for q in params.values():
        q.grad = None
    if loss.dtype != np.float64 or not np.isclose(float(loss.numpy()), loss32, rtol=RTOL):
        return None
    return grads


def _check_step(m, m_ref, before, grads, grads_ref, exact, drift, what):
    """After one traced and one eager training step (parameters ``before`` the steps, as
    {name: (traced, eager)}; ``grads``/``grads_ref`` the gradients the steps applied;
    ``exact`` eager's in float64): each gradient equals eager's within RTOL plus its rounding
    level (`GRAD_NOISE`, `LAYER_NOISE`, `MODEL_NOISE`), and each parameter equals eager's, except that an
    element whose true gradient is below that level may have drifted by what the steps moved it (``drift``, {name: array}, accumulated over the steps:
    Adam makes noise a step of up to ~lr, in the noise's direction). Without ``exact`` (the
    program did not run in float64) the parameters are compared as they are. Returns whether a
    parameter needed the allowance."""
    if grads.keys() != grads_ref.keys():
        raise JitMismatch(f"{what}: the traced step updated {sorted(grads)}, eager "
                          f"{sorted(grads_ref)}")
    now, now_ref = _param_values(m), _param_values(m_ref)
    layer_scale = {}  # layer -> its largest gradient
    for name, g_ref in grads_ref.items():
        layer = name.rpartition(".")[0]
        layer_scale[layer] = max(layer_scale.get(layer, 0.0),
                                 float(np.max(np.abs(g_ref), initial=0.0)))
    own = {name: float(np.max(np.abs(g_ref - exact[name]), initial=0.0))
           for name, g_ref in grads_ref.items() if exact is not None and name in exact}
    layer_own = {}  # layer -> eager's largest error over its parameters
    for name, e in own.items():
        layer = name.rpartition(".")[0]
        layer_own[layer] = max(layer_own.get(layer, 0.0), e)
    for name, g_ref in (grads_ref.items() if exact is not None else ()):
        g = grads[name]
        layer = name.rpartition(".")[0]
        rounding = max(GRAD_NOISE * layer_own.get(layer, 0.0), LAYER_NOISE * layer_scale[layer],
                       MODEL_NOISE * max(layer_scale.values()))
        err = np.abs(g.astype("float64") - g_ref)
        if g.shape != g_ref.shape or np.any(err > RTOL * np.abs(g_ref) + rounding):
            raise JitMismatch(f"{what}: gradient of {name} differs from eager (max abs err "
                              f"{np.max(err):.3g}; rounding level {rounding:.3g})")
        if name in exact:
            noise = np.abs(exact[name]) <= rounding  # (its sign is the rounding's)
            if noise.any():
                (t0, e0), pt, pr = before[name], now[name], now_ref[name]
                moved = np.abs(pt - t0) + np.abs(pr - e0)
                drift[name] = drift.get(name, 0.0) + np.where(noise, moved, 0.0)
    drifted = False
    for name, pr in now_ref.items():
        pt = now[name]
        err = np.abs(pt.astype("float64") - pr)
        plain = ATOL + RTOL * np.abs(pr)
        if pt.shape != pr.shape or np.any(err > plain + drift.get(name, 0.0)):
            raise JitMismatch(f"{what}: parameter {name} differs from eager (max abs err "
                              f"{np.max(err):.3g})")
        drifted = drifted or bool(np.any(err > plain))
    return drifted


def _param_values(model):
    """{name: the parameter's value} of ``model``."""
    return {n: q.numpy() for n, q in model.named_parameters()}


def check_training(p, mode, rng):
    """(a)/(b) of a training step: losses, gradients and parameters after each traced step
    equal those of the same step run eagerly on a copy of the model (gradients and parameters
    at rounding level as `_check_step` says)."""
    prog, m = p.build()
    m_ref = copy.deepcopy(m)
    logs = {id(m): [], id(m_ref): []}  # the gradients of each step, per model

    def make(model):
        gm = GradManager().attach(model.parameters())
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.5) if p.seed % 2 else \
            optim.Adam(model.parameters(), lr=0.005, eps=1e-3)
        # (Adam's eps: its default 1e-8 makes a gradient of pure rounding noise a full step of
        # ~lr at once; 1e-3 keeps such steps small, and `_check_step` allows for them)
        _logging_gradients(opt, model, logs[id(model)])

        def step(x, model):
            # (the model as an argument, as training scripts pass it to a traced step)
            with gm:
                y = prog(x, model)
                loss = ((y - 0.5) ** 2).mean()
                gm.backward(loss)
            opt.step()
            opt.clear_grad()
            return loss
        return step

    traced = trace(make(m), **mode)
    eager_step = make(m_ref)
    m64 = _as_float64(m_ref)  # (the gradients' rounding errors: `_exact_gradients`)
    out = {}
    drift = {}  # name -> how far each element may have drifted from eager (`_check_step`)
    traced_seen = {}  # input shape -> what the probe saw in the call that recorded it
    data = [_data(rng, TRACE_SHAPE)] + _later_data(rng, TRACE_SHAPE)[:3 if p.dyn else 2]
    for k, (s, a) in enumerate([(TRACE_SHAPE, a) for a in data]
                               + [(s, _data(rng, s)) for s in OTHER_SHAPES[:2]]
                               + [(TRACE_SHAPE, _data(rng, TRACE_SHAPE))]):
        what = f"(a) training step {k} at {s}"
        try:  # the sizes this step's data gives, seen by a forward pass on a copy
            fwd = _flat(p.eager(prog, copy.deepcopy(m_ref), mge.tensor(a)))
        except Exception:  # noqa: BLE001
            return out
        seen = _seen(prog)
        expect = expected(mode, traced_seen.setdefault(s, seen), seen)
        before = {n: (t, e) for (n, t), e in zip(_param_values(m).items(),
                                                 _param_values(m_ref).values())}
        logs[id(m)].append({})
        logs[id(m_ref)].append({})
        if expect != (None, None):
            # a data-decided size changed: the traced step may refuse it (then neither model
            # steps; see `expected`)
            try:
                got = _flat(traced(mge.tensor(a), m))
            except Exception as e:  # noqa: BLE001
                if not ((expect[0] and isinstance(e, expect[0])) or (
                        expect[1] and isinstance(e, expect[1]) and _says_data_decides(e))):
                    raise JitMismatch(f"{what}: {type(e).__name__}: {e} (expected {expect})\n"
                                      f"(sizes that data decides: {traced_seen[s]} -> {seen})")
                out["refused"] = out.get("refused", 0) + 1
                continue
            if expect[0] is not None and mode["opt_level"] > 0 and _overflowed(fwd):
                # eager's sizes came from values that overflowed, which the rewrites avoid
                # (`_overflowed`); eager's loss is not finite: the run stops here, as below
                out["diverged"] = out.get("diverged", 0) + 1
                return out
            if expect[0] is not None:
                raise JitMismatch(f"{what}: gave a value; expected {expect[0].__name__} (sizes "
                                  f"that data decides: {traced_seen[s]} -> {seen})")
        else:
            got = None
        try:
            want = _flat(p.eager(eager_step, m_ref, mge.tensor(a)))
        except Exception:  # noqa: BLE001
            return out
        if got is None:
            got = _call(what, lambda: _flat(traced(mge.tensor(a), m)))
        _close(got, want, f"{what}: loss", mode["opt_level"] > 0)
        if not abs(float(want[0])) < 100:
            # diverging: from here on rounding differences grow with the parameters (a trace's
            # rewrites and an eager run are no longer comparable); stop, as a user would
            out["diverged"] = out.get("diverged", 0) + 1
            return out
        exact = _exact_gradients(p, prog, m64, {n: e for n, (_, e) in before.items()}, a,
                                 float(want[0]))
        if exact is None:
            out["not float64"] = out.get("not float64", 0) + 1  # (compared strictly)
        if _check_step(m, m_ref, before, logs[id(m)][-1], logs[id(m_ref)][-1], exact, drift,
                       what):
            out["drifted"] = out.get("drifted", 0) + 1  # (steps after which a parameter was
            # apart from eager by more than the tolerance, within what rounding-level steps allow)
        out["steps"] = out.get("steps", 0) + 1
    return out


def check(seed, modes=None):
    """Run program ``seed`` in ``modes`` (default all); returns {mode str: outcome counts} and
    raises JitMismatch, with the program and the mode, on the first discrepancy."""
    p = draw(seed)
    modes = MODES if modes is None else modes
    report = {}
    for mode in modes:
        if p.symshape and not mode["symbolic_shape"]:
            continue  # (its code reads x.shape.numpy(): tuples have no numpy())
        if p.train and mode["capture_as_const"]:
            # a plain trace captures every outside tensor, parameters included, as a constant
            # (upstream: capture_as_const is for dumping); its training steps are refused, as
            # upstream's ("tensors not equals"; tests/jit/test_record.py), since the optimizer
            # changes the captures (only xla_trace keeps Module arguments live)
            continue
        rng = np.random.default_rng([seed, 11])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report[_mode_str(mode)] = (check_training if p.train else check_inference)(
                    p, mode, rng)
        except (JitMismatch, ShapeGuardError) as e:
            raise JitMismatch(f"{_mode_str(mode)}\n{e}\n--- program ---\n{p}") from e
    return report


def _fails(p, mode):
    """The JitMismatch program ``p`` gives in ``mode``, or None (also when ``p`` is invalid)."""
    rng = np.random.default_rng([p.seed, 11])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (check_training if p.train else check_inference)(p, mode, rng)
    except JitMismatch as e:
        return None if "invalid eagerly" in str(e) else e
    except Exception:  # noqa: BLE001 (a shrunk program that is invalid)
        return None
    return None


def minimise(p, mode):
    """A smaller program that still fails in ``mode``: steps, layers left unused and extra
    outputs removed one at a time while the failure stays (greedy delta debugging)."""
    if p.outputs != "h":
        q = copy.copy(p)
        q.outputs = "h"
        if _fails(q, mode):
            p = q
    changed = True
    while changed:
        changed = False
        for i in range(len(p.steps)):
            q = copy.copy(p)
            q.steps = p.steps[:i] + p.steps[i + 1:]
            used = "\n".join(q.steps)
            q.layers = [(n, c) for n, c in p.layers if re.search(rf"m\.{n}\b", used)]  # (a
            # layer called, the state Parameter read or written)
            q.symshape = ".shape.numpy()" in used
            if _fails(q, mode):
                p, changed = q, True
                break
    return p
