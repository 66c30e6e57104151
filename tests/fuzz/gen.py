"""The fuzzer's library: random valid arguments (shapes, dtypes, layouts, axes) and the runner
that compares one drawn case in megengine against torch (values, dtypes, shapes, gradients,
errors)."""
import argparse
import collections
import os
import time
import traceback

import numpy as np
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

_MGE_DIR = os.path.dirname(os.path.abspath(mge.__file__))


class Mismatch(AssertionError):
    """megengine and the oracle disagree on a drawn case."""


def run_seeds(check, seeds, start, mismatch, describe):
    """Run ``check(seed)`` (returning an outcome) for ``seeds`` seeds from ``start``, printing
    each failure: a ``mismatch`` as raised, any other error with ``describe(seed)``, the drawn
    case. Returns (how many failed, a Counter of the others' outcomes)."""
    outcomes, bad = collections.Counter(), 0
    for seed in range(start, start + seeds):
        try:
            outcomes[check(seed)] += 1
        except mismatch as e:
            bad += 1
            print(f"=== {e}", flush=True)
        except Exception as e:  # noqa: BLE001  (an error the oracle did not expect: a failure)
            bad += 1
            print(f"=== {seed}: {type(e).__name__}: {e}\n{describe(seed)}", flush=True)
    return bad, outcomes


def seeds_main(argv, prog, doc, unit, fuzz, options=()):
    """The command line of a fuzzer of seeds: ``--seeds N [--start S]`` runs ``fuzz(seeds,
    start)`` (-> failures, outcome counts, as `run_seeds`) and prints one summary line of
    ``unit``; exit status 1 when something failed. ``options``: more (flag, add_argument
    keywords), passed to ``fuzz`` as keyword arguments."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--seeds", type=int, default=100, help=f"{unit} (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)
    a = p.parse_args(argv)
    extra = {k: v for k, v in vars(a).items() if k not in ("seeds", "start")}
    t0 = time.time()
    bad, outcomes = fuzz(a.seeds, a.start, **extra)
    print(f"{a.seeds} {unit} ({bad} failing) in {time.time() - t0:.0f}s; outcomes: "
          f"{dict(outcomes)}")
    return 1 if bad else 0


# ----- drawing arguments -----

def registry(default_family=None):
    """``(OPS, op)`` for a file of cases: ``@op(name, family)`` puts the generator it decorates
    into ``OPS`` as ``name: (family, generator)``; `tests.fuzz.registry` gathers the files'."""
    ops = {}

    def op(name, family=default_family):
        def deco(fn):
            ops[name] = (family, fn)
            return fn
        return deco

    return ops, op


def dim(rng, zero=True, hi=4):
    """One dimension: 0 and 1 are drawn often on purpose (edge cases users hit)."""
    r = rng.random()
    if zero and r < 0.08:
        return 0
    if r < 0.3:
        return 1
    return int(rng.integers(2, hi + 1))


def shape(rng, lo=0, hi=4, zero=True, max_dim=4):
    return tuple(dim(rng, zero, max_dim) for _ in range(int(rng.integers(lo, hi + 1))))


def values(rng, shp, dtype, lo=-3.0, hi=3.0):
    """An array of ``dtype``: floats uniform in [lo, hi), ints in [lo, hi], bools fair; complex
    numbers with real and imaginary parts each uniform in [lo, hi)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shp) < 0.5
    if dtype.kind in "iu":
        return rng.integers(int(lo), int(hi) + 1, size=shp).astype(dtype)
    if dtype.kind == "c":
        return (rng.uniform(lo, hi, size=shp) + 1j * rng.uniform(lo, hi, size=shp)).astype(dtype)
    return rng.uniform(lo, hi, size=shp).astype(dtype)


# the float dtype a case's constants go through on their way to a float input's dtype (the
# float16 mode's: its exact result, torch in float64, sees the float16 values the engines see)
CONSTANTS_ROUNDED_TO = None


def like(arr, x):
    """Constant ``arr`` (float32, a case's closure: running statistics) as a tensor of the
    framework of input ``x`` (a megengine or torch tensor), in ``x``'s dtype where that is a
    float one: the float modes' float64 and float16 inputs meet no float32 constant. Through
    `CONSTANTS_ROUNDED_TO` first, where set (batch_norm2d's running mean of float16 seed 112278
    was judged against an exact update of the float32 value, 4.5 float16 steps away, where
    this side's was 0.2 steps from the exact update of the float16 one)."""
    dt = np.dtype(str(x.dtype).replace("torch.", ""))
    if dt.kind == "f" and not dt.metadata:
        if CONSTANTS_ROUNDED_TO is not None and arr.dtype.kind == "f":
            arr = arr.astype(CONSTANTS_ROUNDED_TO)
        arr = arr.astype(dt)
    return torch.tensor(arr) if isinstance(x, torch.Tensor) else mge.tensor(arr, arr.dtype)


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def axis_arg(rng, ndim, tuple_ok=True, none_ok=True):
    """An axis argument: None, an int (maybe negative) or a tuple of distinct axes."""
    r = rng.random()
    if (none_ok and r < 0.2) or ndim == 0:
        return None
    if tuple_ok and r < 0.45:
        k = int(rng.integers(1, ndim + 1))
        axes = rng.permutation(ndim)[:k]
        return tuple(int(a) - ndim if rng.random() < 0.4 else int(a) for a in axes)
    a = int(rng.integers(ndim))
    return a - ndim if rng.random() < 0.4 else a


def broadcast_partner(rng, shp):
    """A shape that broadcasts with ``shp``: some dims set to 1, some leading dims dropped or
    added."""
    out = [1 if rng.random() < 0.3 else d for d in shp]
    if out and rng.random() < 0.3:
        out = out[int(rng.integers(len(out) + 1)):]
    if rng.random() < 0.15:
        out = [1] + out
    return tuple(out)


# ----- layouts: the same logical array reached through a non-contiguous view -----

class Layout:
    """How an input is stored and viewed: ``stored`` is what becomes the leaf tensor; ``view``
    (applied identically in megengine and torch) yields the logical array, non-contiguous
    when the layout is a transpose or a strided slice."""

    def __init__(self, stored, view, name):
        self.stored, self.view, self.name = stored, view, name


def layout(rng, arr, p=0.35, bcast=False):
    """A random Layout of ``arr``: contiguous, a transpose, a step-2 slice, a flip (negative
    strides in numpy; torch copies) or, when ``bcast`` (the op tolerates repeated values), a
    broadcast of a size-1 array (zero strides, read-only in numpy)."""
    if arr.ndim == 0 or rng.random() >= p:
        return Layout(arr, lambda t: t, "contig")
    r = rng.random()
    if r < 0.15:
        ax = int(rng.integers(arr.ndim))
        stored = np.flip(arr, ax).copy()  # (ascontiguousarray keeps a -1 stride of size-1 dims)
        return Layout(stored, lambda t: torch.flip(t, (ax,)) if isinstance(t, torch.Tensor)
                      else F.flip(t, ax), f"flip(axis={ax})")
    if bcast and r < 0.3 and arr.size:
        ax = int(rng.integers(arr.ndim))
        stored = np.ascontiguousarray(arr.take([0], axis=ax))  # the values change: repeats
        shp = arr.shape
        return Layout(stored, lambda t: torch.broadcast_to(t, shp) if isinstance(t, torch.Tensor)
                      else F.broadcast_to(t, shp), f"broadcast(axis={ax})")
    if arr.ndim >= 2 and rng.random() < 0.5:
        perm = [int(i) for i in rng.permutation(arr.ndim)]
        inv = [int(i) for i in np.argsort(perm)]
        stored = np.ascontiguousarray(arr.transpose(inv))
        return Layout(stored, lambda t: t.permute(*perm) if isinstance(t, torch.Tensor)
                      else F.transpose(t, perm), f"transpose{tuple(perm)}")
    ax = int(rng.integers(arr.ndim))
    pad_shape = list(arr.shape)
    pad_shape[ax] *= 2
    stored = np.zeros(pad_shape, arr.dtype)
    idx = [slice(None)] * arr.ndim
    idx[ax] = slice(None, None, 2)
    stored[tuple(idx)] = arr
    idx = tuple(idx)
    return Layout(stored, lambda t: t[idx], f"step2(axis={ax})")


# ----- the runner -----

def flat(out):
    """The leaves of nested lists and tuples of outputs, in order."""
    if isinstance(out, (list, tuple)):
        res = []
        for o in out:
            res.extend(flat(o))
        return res
    return [out]


def _np_dtype(t):
    return np.dtype(str(t.dtype).replace("torch.", ""))


TOL = {np.dtype("float16"): (2e-2, 2e-2), np.dtype("float32"): (1e-4, 1e-5)}


def _is_ours(exc):
    """True when ``exc`` was raised by megengine's own code (a clear message of ours), not by
    numpy or torch deep inside the engine."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    last = os.path.abspath(frames[-1].filename)
    return last.startswith(_MGE_DIR) and isinstance(
        exc, (ValueError, TypeError, IndexError, RuntimeError, KeyError, AssertionError))


class Case:
    """One drawn call.

    ``inputs``: numpy arrays (the tensor arguments; scalars and options live in the closures).
    ``mge_fn(*tensors)`` and ``torch_fn(*tensors)`` compute the same thing, the latter in
    upstream's convention where torch's differs. ``diff``: indices of the inputs whose
    gradients are compared (default: the float32 and complex64 ones; a complex input's gradient
    is torch's, dL/dx + i dL/dy, as megengine's). ``dtypes``: expected output dtypes
    where upstream's rule differs from torch's (None: torch's). ``tol``: (rtol, atol).
    ``layouts``: draw non-contiguous layouts for the inputs. ``bcast``: the op tolerates a
    broadcast layout (repeated values: no ties that the two frameworks break differently).
    ``refuse``: why upstream refuses this call although torch computes it; megengine must
    raise its own error. ``writes``: the index of the input whose dtype the output takes (an
    in-place write: scatter, setitem, full_like), so that the converting modes cast torch's
    values into it. ``rounds``: an integer result is the float result rounded half away from
    zero and saturated (upstream's Resize of int8/uint8 images), which the integer mode expects.
    """

    def __init__(self, desc, inputs, mge_fn, torch_fn, diff=None, dtypes=None, tol=None,
                 layouts=True, refuse=None, bcast=True, writes=None, rounds=False):
        self.desc, self.inputs = desc, [np.asarray(a) for a in inputs]
        self.writes, self.rounds = writes, rounds
        self.mge_fn, self.torch_fn = mge_fn, torch_fn
        self.diff, self.dtypes, self.tol = diff, dtypes, tol
        self.use_layouts, self.refuse, self.bcast = layouts, refuse, bcast


class Check:
    """A drawn case that compares by its own procedure (a module's training steps, an
    optimizer's run, a second-order gradient): ``fn()`` raises Mismatch (with ``desc``) on a
    discrepancy and returns "ok" or "error"."""

    def __init__(self, desc, fn):
        self.desc, self.fn = desc, fn


def close(a, b, tol, what):
    """Raise Mismatch unless ``a`` (megengine's) matches ``b`` (the oracle's) within ``tol``."""
    _close(a, b, tol, what)


def _torch_call(fn, ts):
    try:
        if any(getattr(t, "dtype", None) is torch.float16 for t in ts):
            # torch 2.13's oneDNN float16 convolution kills the process on CPUs with AVX512-FP16
            # and AMX (measured on an Intel Xeon VM: conv2d of (1, 6, 4, 1) by (6, 2, 3, 1), stride
            # (1, 2), dilation 2, a segmentation fault); torch's own kernels serve float16.
            # (The switch alone: torch.backends.mkldnn.flags() also sets TF32, with a warning.)
            before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
            try:
                return fn(*ts), None
            finally:
                torch.backends.mkldnn.enabled = before
        return fn(*ts), None
    except Exception as e:  # noqa: BLE001 (the oracle's refusal is information)
        return None, e


def torch_outputs(case, lays, ts):
    """(torch's outputs, None) or (None, its error) for the inputs ``ts`` through their layouts,
    computed on contiguous copies of the views: megengine has no memory formats, and the
    oracle's value must not depend on one (torch refuses some: pixel_shuffle of some 5-d
    transposes, "Unsupported memory format"; and computes others wrong: torch 2.13's CPU
    conv_transpose2d of a channels-last input and a permuted weight, grouped and dilated,
    int seed 101629 of conv_transpose2d: 5 where its contiguous copies give 1)."""
    return _torch_call(lambda *xs: case.torch_fn(
        *[lay.view(x).clone(memory_format=torch.contiguous_format)
          if isinstance(x, torch.Tensor) else lay.view(x) for lay, x in zip(lays, xs)]), ts)


def case_layouts(rng, case, arrays):
    """The layouts of ``case``'s input ``arrays`` (all contiguous without ``use_layouts``). A
    case upstream refuses gets no broadcast: its reason may lie in values that a broadcast
    replaces by repeats (nll_loss's label -1, float16 case 51299, was broadcast away)."""
    bcast = case.bcast and not case.refuse
    return [layout(rng, a, bcast=bcast) if case.use_layouts
            else Layout(a, lambda t: t, "contig") for a in arrays]


def run(case, rng, output_grad=None, grad_close=None):
    """Run ``case`` in both frameworks; raise Mismatch with the case's description.
    ``output_grad(array)``: the output gradients made of the random ones, and ``grad_close``
    the comparison of the input gradients (default `close`; `special_inputs` puts NaN and
    infinities among the output gradients)."""
    if isinstance(case, Check):
        return case.fn()
    lays = case_layouts(rng, case, case.inputs)
    diff = case.diff
    if diff is None:
        diff = [i for i, a in enumerate(case.inputs) if a.dtype in _DIFF_DTYPES]
    desc = case.desc + " layouts=" + ",".join(lay.name for lay in lays)

    ts = [torch.tensor(lay.stored, requires_grad=i in diff)
          for i, lay in enumerate(lays)]
    tout, terr = torch_outputs(case, lays, ts)
    xs = [mge.tensor(lay.stored, dtype=lay.stored.dtype) for lay in lays]
    gm = GradManager()
    if diff:
        gm.attach([xs[i] for i in diff])
    try:
        with gm:
            out = case.mge_fn(*[lay.view(x) for lay, x in zip(lays, xs)])
            ys = flat(out)
            fys = [y for y in ys if np.dtype(y.dtype).kind in "fc"]  # (complex: torch's rule)
            grs = np.random.RandomState(0)
            dys = [_output_grad(grs, y) for y in fys]
            if output_grad is not None:
                dys = [output_grad(d) for d in dys]
            if diff and fys:
                gm.backward(fys, [mge.tensor(d) for d in dys])
    except Exception as e:  # noqa: BLE001
        if case.refuse and _is_ours(e):
            return "error"
        if terr is None:
            raise Mismatch(f"{desc}: megengine raised {type(e).__name__}: {e} but torch "
                           "computed it") from e
        if not _is_ours(e):
            raise Mismatch(f"{desc}: both refuse, but megengine's error is not its own "
                           f"({type(e).__name__}: {e})") from e
        return "error"
    for k, (y, tv, want) in enumerate(outputs(case, desc, ys, tout, terr)):
        yv = y.numpy()
        if tuple(y.shape) != tuple(tv.shape):
            raise Mismatch(f"{desc}: output {k} shape {tuple(y.shape)}, torch {tv.shape}")
        if np.dtype(y.dtype) != want:
            raise Mismatch(f"{desc}: output {k} dtype {np.dtype(y.dtype)}, expected {want}")
        _close(yv, tv, case.tol, f"{desc}: output {k}")
    if not diff or not fys:
        return "ok"
    tf = [ty for ty in flat(tout) if isinstance(ty, torch.Tensor)
          and (ty.dtype.is_floating_point or ty.dtype.is_complex)]
    tf_grad = [(ty, torch.tensor(d, dtype=ty.dtype)) for ty, d in zip(tf, dys)
               if ty.requires_grad]
    if tf_grad:
        torch.autograd.backward([a for a, _ in tf_grad], [b for _, b in tf_grad])
    for i in diff:
        g = xs[i].grad
        tg = ts[i].grad
        if tg is None:
            tg = torch.zeros_like(ts[i])
        if g is None:
            if tg.abs().max().item() if tg.numel() else 0:
                raise Mismatch(f"{desc}: no gradient reached input {i}")
            continue
        if tuple(g.shape) != tuple(tg.shape) or np.dtype(g.dtype) != case.inputs[i].dtype:
            raise Mismatch(f"{desc}: grad {i} shape/dtype {g.shape}/{g.dtype}, want "
                           f"{tuple(tg.shape)}/{case.inputs[i].dtype}")
        (grad_close or _close)(g.numpy(), tg.numpy(), case.tol, f"{desc}: grad of input {i}")
    return "ok"


_DIFF_DTYPES = (np.dtype(np.float32), np.dtype(np.complex64))


def outputs(case, desc, ys, tout, terr):
    """megengine computed ``ys`` (its outputs, flat): a Mismatch where it should have refused
    (upstream or torch does) or gives another number of outputs than torch's ``tout``; else
    (output, torch's value as an array, expected dtype) for each output."""
    if case.refuse:
        raise Mismatch(f"{desc}: megengine accepted what upstream refuses ({case.refuse})")
    if terr is not None:
        raise Mismatch(f"{desc}: megengine accepted what torch refuses "
                       f"({type(terr).__name__}: {str(terr)[:200]})")
    touts = flat(tout)
    if len(touts) != len(ys):
        raise Mismatch(f"{desc}: {len(ys)} outputs, torch gives {len(touts)}")
    tvs = [ty.detach().numpy() if isinstance(ty, torch.Tensor) else np.asarray(ty)
           for ty in touts]
    return [(y, tv, np.dtype(case.dtypes[k]) if case.dtypes else tv.dtype)
            for k, (y, tv) in enumerate(zip(ys, tvs))]


def _output_grad(rs, y):
    """A random gradient for the output ``y`` (complex for a complex output)."""
    g = rs.randn(*y.shape)
    if np.dtype(y.dtype).kind == "c":
        g = g + 1j * rs.randn(*y.shape)
    return np.asarray(g).astype(y.dtype)


def _close(a, b, tol, what):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype.kind == "c" or b.dtype.kind == "c":  # compared as (real, imaginary) pairs
        a, b = (np.stack([x.real, x.imag], -1) for x in (a, b))
    if a.dtype.kind in "f" or b.dtype.kind in "f":
        rtol, atol = tol or TOL.get(a.dtype, (1e-4, 1e-5))
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        same_nan = np.isnan(a64) == np.isnan(b64)
        if not same_nan.all():
            raise Mismatch(f"{what}: NaN where torch has none (or the reverse)\n ours={a}\n "
                           f"torch={b}")
        ok = np.isclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            i = np.argwhere(~ok)[0]
            raise Mismatch(f"{what}: values differ at {tuple(i)}: {a[tuple(i)]} vs torch "
                           f"{b[tuple(i)]} (max abs diff "
                           f"{np.nanmax(np.abs(a64 - b64)[~ok])})")
    elif not np.array_equal(a, b):
        raise Mismatch(f"{what}: values differ\n ours={a}\n torch={b}")
